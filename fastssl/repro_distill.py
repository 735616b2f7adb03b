"""``fastssl repro --method distill``: the follow-up's table (Asano & Saeed, ICLR 2023) in one
command: how much of a teacher's classifier a student learns from the patches of one image.

Rows, per seed, each scored as a classifier (top-1 %) on the held-out validation split (or
``--eval-data``):

- ``teacher``: ``supervised`` on the labelled train split, with the network of
  ``[supervised.settings] model`` (the preset's teacher, e.g. ``wrn-40-4``);
- ``student-mono``: ``distill`` on patches of ``image`` only (the follow-up's result);
- ``student-full``: ``distill`` on the labelled training images, labels unread (the upper
  bound: the teacher's own training distribution);
- ``student-noise``: ``distill`` on patches of an image of uniform random pixels (the control:
  colour and contrast everywhere, but no natural image's edges, textures or objects; a flat
  image would be a weaker control, its patches nearly constant).

Layout as ``repro``'s: ``OUT/data/``, ``OUT/seed-S/<row>/`` (checkpoints and metrics),
``OUT/seed-S/scores/<row>.json``; the summary ``OUT/scores.json``, ``OUT/scores.md`` and
``OUT/scores.png``, mean ± std over the seeds, with each student's share of its teacher.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from .atomic import run_folder
from .commands import classifier_top1
from .config import load
from .data.prepare import loader, mono_stream, prepare_labelled
from .distributed import resolve_device
from .errors import FastSSLError
from .pretrained import load_network
from .progress import log
from .report import SMOKE_LINE, bar_chart, mean_std, scores_per_seed, was_smoke, write_json, write_summary
from .rows import check_run, each_photo, smoke_recipe, train_row

NOISE_SIDE = 512  # the control image: NOISE_SIDE x NOISE_SIDE uniform random pixels (seed 0)
SOURCES = ("mono", "full", "noise")  # what each student learns from
ROWS = ("teacher", *(f"student-{s}" for s in SOURCES))


def noise_image(side: int = NOISE_SIDE) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)


def check_teacher(rc: dict) -> None:
    """The teacher is the recipe's supervised network: refuse the AlexNet trunk there."""
    if rc["supervised"]["settings"]["model"] == "alexnet":
        raise FastSSLError("the teacher is [supervised.settings] model: set a classifier, e.g. wrn-40-4")


def student_rows(image, each_image: bool) -> list[tuple[str, object]]:
    """(row, image) of each one-image student: ``student-mono``, or with ``each_image`` one
    ``student-mono@PHOTO`` per photo of ``image``."""
    if each_image:
        return [(f"student-mono@{name}", x) for name, x in each_photo(image)]
    return [("student-mono", image)]


def repro_distill(
    preset: str = "cpu-mini-distill",
    *,
    image=None,
    data=None,
    eval_data=None,
    out="runs/distill",
    overrides=None,
    seeds=None,
    each_image: bool = False,
    smoke: bool = False,
    progress: bool = True,
) -> dict:
    """The four rows for each of ``seeds``, then the summary of every finished row of ``out``;
    with ``each_image``, a one-image student per photo of ``image``, ``student-mono@PHOTO``."""

    if data is None:
        raise FastSSLError("`data` is required: a labelled train source (folder, .tar.gz, or cifar10)")
    rc = load(preset, overrides, methods=("distill", "supervised"))
    check_teacher(rc)
    if smoke:
        smoke_recipe(rc, "distill")
    seeds = check_run(rc, seeds, image)  # before anything is written
    monos = student_rows(image, each_image)
    with run_folder(out) as out:
        t0 = time.perf_counter()
        train_data, val_data, classes = prepare_labelled(rc, data, eval_data, out, progress)
        write_json(
            out / "config.json",
            {
                "preset": preset,
                "image": str(image),
                "each_image": each_image,
                "data": str(data),
                "seeds": seeds,
                "recipe": rc,
            },
        )
        for seed in seeds:
            rcs = copy.deepcopy(rc)
            rcs["seed"] = seed
            log(f"seed {seed}")
            _one_seed(rcs, monos, train_data, val_data, len(classes), out / f"seed-{seed}", progress)
        result = distill_report(out, seeds, preset=preset)
        log(f"repro: finished in {time.perf_counter() - t0:.0f} s")
        return result


def _one_seed(rc, monos, train_data, val_data, nc: int, out: Path, progress: bool) -> None:
    """The rows of one seed; ``monos``: (row, image) of each one-image student."""
    out.mkdir(exist_ok=True)
    seed, bs = int(rc["seed"]), int(rc["distill"]["batch_size"])
    ckpts = {"teacher": train_row("teacher", rc, "supervised", train_data, out, nc, progress)}
    rcd = copy.deepcopy(rc)
    rcd["distill"]["settings"]["teacher"] = str(ckpts["teacher"])
    # (row, source image; None: the labelled images), each stream built when its row is reached
    sources = list(monos)
    sources += [("student-full", None), ("student-noise", noise_image())]
    for row, x in sources:
        data = train_data if x is None else mono_stream(rcd, x, bs, seed)
        ckpts[row] = train_row(row, rcd, "distill", data, out, nc, progress)
    sdir = out / "scores"
    sdir.mkdir(exist_ok=True)
    device = resolve_device(rc["device"])
    va = None  # built once, for the first row still to score
    for row, ck in ckpts.items():
        sp = sdir / f"{row}.json"
        if sp.exists():
            log(f"score {row}: done already {json.loads(sp.read_text())['top1']}")
            continue
        if va is None:
            va = loader(val_data, rc, False, 256, device, seed, shard=False)
        top1, n = classifier_top1(load_network(ck), va, device)
        write_json(sp, {"top1": top1, "images": n})
        log(f"score {row}: top-1 {top1} on {n} held-out images")


def distill_report(out, seeds, **info) -> dict:
    """(Re)write ``OUT/scores.json``, ``scores.md`` and ``scores.png`` from the scores of
    ``seeds``: each row's mean and std, and each student's mean as a share of the teacher's."""

    out = Path(out)
    per_seed = scores_per_seed(out, seeds, "scores")
    if not per_seed:
        raise FastSSLError(f"no scores in {out} for seeds {seeds}")
    # each row, then its per-photo rows (ROW@PHOTO), then any other
    order = [r for base in ROWS for r in sorted(per_seed) if r == base or r.startswith(f"{base}@")]
    order += sorted(set(per_seed) - set(order))
    rows = {}
    for r in order:
        (mean,), (std,) = mean_std([[v] for v in per_seed[r].values()])
        rows[r] = {"mean": mean, "std": std, "n": len(per_seed[r])}
    teacher = rows.get("teacher", {}).get("mean")
    for r in rows:
        if teacher and r != "teacher":
            rows[r]["of_teacher"] = round(100.0 * rows[r]["mean"] / teacher, 1)
    smoke = was_smoke(out)
    result = {"rows": rows, "per_seed": per_seed, "seeds": list(seeds), **info, **({"smoke": True} if smoke else {})}
    lines = [SMOKE_LINE] if smoke else []
    lines += [
        f"| top-1 % on held-out images, {len(seeds)} seed{'s' if len(seeds) > 1 else ''} | top-1 | of the teacher |",
        "| --- | --- | --- |",
    ]
    for r, v in rows.items():
        cell = f"{v['mean']:.1f} ± {v['std']:.1f}" if v["n"] > 1 else f"{v['mean']:.1f}"
        share = f"{v['of_teacher']:.1f} %" if "of_teacher" in v else "-"
        lines.append(f"| {r} | {cell} | {share} |")
    table = "\n".join(lines) + "\n"
    title = ("SMOKE RUN (a few steps, not results): " if smoke else "") + "distillation from one image"
    means, stds = ({r: v[k] for r, v in rows.items()} for k in ("mean", "std"))
    draw = lambda tmp: bar_chart(means, stds, tmp, title)  # noqa: E731
    write_summary(out, ("scores.json", "scores.md", "scores.png"), result, table, draw)
    return result

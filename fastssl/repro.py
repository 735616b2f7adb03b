"""``fastssl repro``: the paper's table in miniature, in one command.

Rows, for ``--method M`` (rotnet, deepcluster or bigan): ``random`` (an untrained AlexNet;
when the recipe changes M's network in ``[M.model]``, also ``random-<change>``, an untrained
network of M's architecture, e.g. ``random-sobel``), ``mono-M`` (M on patches of one image;
several images: named by their count; with ``--each-image``, ``mono-M@PHOTO`` once per
photo), optionally the N-image rows (``deka-M``, ``kilo-M``,
``n<N>-M``) and the ablation rows (``mono-M-no-scale|no-rotation|no-colour``), ``full-M`` (M
on the labelled train split's images, labels unused: the paper's "millions of images" row at
this scale) and ``supervised`` (on the labelled train split). DeepCluster trains on fixed
datasets: the first ``[mono] epoch_length`` patches of the image(s), indexed and rendered when
needed, and the train split decoded once at ``res`` (centre crops) and held in memory; RotNet
and BiGAN stream.
Columns: linear-probe top-1 of conv1..conv5 on the held-out validation split (or
``--eval-data``, or the ``val/`` split of an ImageNet root). ``--method distill`` runs the
follow-up's rows instead (:mod:`fastssl.repro_distill`).

Layout: ``OUT/data/`` (the ``.beton`` files), ``OUT/seed-S/<row>/`` (each training run's
checkpoint and metrics), ``OUT/seed-S/probes/<row>.json``; the summary ``OUT/probes.json``,
``OUT/table.md`` and ``OUT/probes.png`` holds every finished row of the seeds asked, as mean
and std over them, so the methods run into one ``--out`` make one table (random and supervised
trained once per seed). Running the same command again skips what is complete and resumes what
was interrupted.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from .atomic import run_folder
from .config import load, method_model, model_changes, to_dataclass
from .data.prepare import loader, mono_stream, prepare_labelled, source_images, train_images
from .errors import FastSSLError
from .methods import METHODS, pretext_methods
from .models import AlexNet
from .mono import folder_images
from .pretrained import load_trunk
from .probe import ProbeConfig, train_probes
from .progress import log
from .report import report, write_json
from .repro_distill import repro_distill, student_rows
from .rows import check_run, each_photo, repeated, smoke_recipe, train_row


def random_rows(rc: dict, method: str) -> dict[str, dict]:
    """The untrained networks to compare with: ``random`` (the run's ``[model]``) and, when the
    method changes the network (``[<method>.model]``), ``random-<change>`` with its model, so
    that each trained row has a random row of its own architecture."""

    rows = {"random": dict(rc["model"])}
    changes = model_changes(rc, method)
    if changes:
        tag = "-".join(k if v is True else f"{k}{v}" for k, v in changes.items())
        rows[f"random-{tag}"] = dict(method_model(rc, method))
    return rows


def repro(
    preset: str = "cpu-mini",
    *,
    image=None,
    data=None,
    eval_data=None,
    out="runs/repro",
    method: str = "rotnet",
    overrides=None,
    seeds=None,
    n_images=None,
    n_images_from=None,
    ablation: bool = False,
    each_image: bool = False,
    smoke: bool = False,
    progress: bool = True,
) -> dict:
    """The rows of ``method`` for each of ``seeds`` (default: the recipe's seed), then the
    summary of every finished row of ``out``: each cell the mean over seeds, with its std.

    Rows: ``random``; ``mono-M`` on ``image`` (several images: named by their count);
    with ``ablation``, ``mono-M-no-scale`` / ``-no-rotation`` / ``-no-colour``; with
    ``each_image``, those rows once per photo of ``image``, ``mono-M@PHOTO``; for each N of
    ``n_images``, M on the first N training images of ``data``, or of the photos of
    ``n_images_from`` (``deka-M`` for 10, ``kilo-M`` for 1000, else ``n<N>-M``); ``full-M``;
    ``supervised``."""

    check_rows(method, n_images, ablation or n_images_from)
    if method == "distill":  # the follow-up's rows: teacher, students from one image, the data, noise
        kw = dict(image=image, data=data, eval_data=eval_data, out=out, overrides=overrides, seeds=seeds)
        return repro_distill(preset, **kw, each_image=each_image, smoke=smoke, progress=progress)
    if data is None:
        raise FastSSLError("`data` is required: a labelled train source (folder, .tar.gz, or cifar10)")
    if method not in pretext_methods():
        raise FastSSLError(f"`method` {method}: choose one of {', '.join(pretext_methods())} or distill")
    rc = load(preset, overrides, methods=(method, "supervised"))
    if smoke:
        smoke_recipe(rc, method)
    seeds = check_run(rc, seeds, image)
    each = each_photo(image) if each_image else None
    if n_images_from is not None and not n_images:
        raise FastSSLError("`n_images_from` names the photos of the N-image rows: give the counts with `n_images` too")
    with run_folder(out) as out:
        rows = (n_images or [], n_images_from, ablation, each)
        return _repro(rc, preset, method, image, data, eval_data, out, progress, seeds, rows)


def _repro(rc, preset, method, image, data, eval_data, out: Path, progress, seeds, rows) -> dict:
    n_images, photos, ablation, each = rows
    t_start = time.perf_counter()
    # everything that can refuse the run is checked before the first file is written
    sources = source_images(data, eval_data, rc, n_images, photos)
    twice = repeated(r[0] for r in _image_rows(method, image, sources, ablation, photos, each))
    if twice:  # e.g. ten --image photos and --n-images 10: both rows would be deka-M
        raise FastSSLError(f"two rows would be named {twice[0]}: drop one of --image and --n-images")
    train_data, val_data, classes = prepare_labelled(rc, data, eval_data, out, progress)
    write_json(
        out / "config.json",
        {
            "preset": preset,
            "image": str(image),
            "data": str(data),
            "eval_data": str(eval_data) if eval_data else None,
            "n_images_from": str(photos) if photos else None,
            "each_image": each is not None,
            "seeds": seeds,
            "recipe": rc,
        },
    )
    extra = (sources, ablation, Path(str(photos)).name if photos else None, each)
    for seed in seeds:
        rcs = copy.deepcopy(rc)
        rcs["seed"] = seed
        log(f"seed {seed}")
        _rows_of_one_seed(rcs, method, image, train_data, val_data, len(classes), out / f"seed-{seed}", progress, extra)
    result = report(out, seeds, preset=preset)  # no timings in it: the same run gives the same bytes
    log(f"repro: finished in {time.perf_counter() - t_start:.0f} s")
    return result


ABLATION = {  # the paper's augmentation ablation: each row drops one part of the chain
    "no-scale": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0]},  # no random-resized crop
    "no-rotation": {"rotation": 0.0, "shear": 0.0},
    "no-colour": {"jitter_p": 0.0},
}


def _image_rows(method: str, image, source_images: dict, ablation: bool, photos: str | None, each=None) -> list:
    """(row name, images, spec changes, sources) of every row trained on source images;
    ``sources`` names the photos of an N-image row drawn from ``photos`` (recorded in the
    row's recipe, so that a row of other sources is never reused for it). With ``each``
    ((name, photo) pairs), the one-image rows once per photo, ``mono-M@NAME``."""

    items = folder_images(image)  # a folder's photos are counted, as a list's
    n = len(items) if isinstance(items, (list, tuple)) else 1
    ones = [(row_prefix(n), "", image)] if each is None else [("mono", f"@{name}", x) for name, x in each]
    rows = []
    for prefix, tag, images in ones:
        rows.append((f"{prefix}-{method}{tag}", images, None, None))
        if ablation:
            rows += [(f"{prefix}-{method}-{name}{tag}", images, spec, None) for name, spec in ABLATION.items()]
    for k, images in source_images.items():
        rows.append((f"{row_prefix(k)}-{method}", images, None, photos and f"{photos}: {k} photos"))
    return rows


def check_rows(method: str, n_images, ablation) -> None:
    """Refuse N-image counts that are not distinct and >= 1, and rows distill does not have."""
    if method == "distill" and (n_images or ablation):
        raise FastSSLError("`n_images` and `ablation` are rows of the pretext methods, not of distill")
    if n_images and (any(n < 1 for n in n_images) or len(set(n_images)) != len(n_images)):
        raise FastSSLError(f"`n_images` must be distinct counts >= 1, got {n_images}")


def image_row_names(method: str, image=None, n_images=(), ablation: bool = False, each_image: bool = False) -> list:
    """The names of the rows that ``repro`` trains on source images for these options, in
    order (``fastssl plan`` costs each of them as one more one-image row)."""

    check_rows(method, n_images, ablation)
    if method == "distill":
        return [row for row, _ in student_rows(image, each_image)]
    each = each_photo(image) if each_image else None
    return [r[0] for r in _image_rows(method, image, dict.fromkeys(n_images or ()), ablation, None, each)]


def _rows_of_one_seed(rc, method, image, train_data, val_data, nc: int, out: Path, progress: bool, extra) -> None:
    source_images, ablation, photos, each = extra
    out.mkdir(exist_ok=True)
    device = rc["device"]
    bs, seed = int(rc[method]["batch_size"]), int(rc["seed"])
    ckpts = {}
    for row, images, spec, sources in _image_rows(method, image, source_images, ablation, photos, each):
        stream = mono_stream(rc, images, bs, seed, spec)
        ckpts[row] = train_row(row, rc, method, stream, out, nc, progress, image=images, spec=spec, sources=sources)
    rc_full = rc
    if rc.get("smoke") and "settings" in rc[method]:  # a smoke run's labelled set may be smaller than asked
        rc_full = copy.deepcopy(rc)
        rc_full[method]["settings"] = METHODS[method].settings_for_items(
            rc[method].get("settings"), train_images(train_data)
        )
    ckpts[f"full-{method}"] = train_row(f"full-{method}", rc_full, method, train_data, out, nc, progress)
    ckpts["supervised"] = train_row("supervised", rc, "supervised", train_data, out, nc, progress)
    pcfg = to_dataclass(ProbeConfig, dict(rc["probe"]), "probe.")
    pcfg.device, pcfg.progress = device, progress
    pdir = out / "probes"
    pdir.mkdir(exist_ok=True)
    randoms = random_rows(rc, method)
    for row in [*randoms, *ckpts]:
        rp = pdir / f"{row}.json"
        if rp.exists():
            log(f"probes {row}: done already {json.loads(rp.read_text())['top1']}")
            continue
        if row in randoms:
            torch.manual_seed(seed)
            trunk = AlexNet(4, **randoms[row])
        else:
            trunk = load_trunk(ckpts[row])
        log(f"probes {row}: training five linear probes for {pcfg.epochs} epochs")
        tr = loader(train_data, rc, True, pcfg.batch_size, device, seed)
        va = loader(val_data, rc, False, pcfg.batch_size, device, seed, ten_crop=pcfg.ten_crop)
        res = train_probes(trunk, tr, va, nc, pcfg, out_dir=pdir / row)
        write_json(rp, res)
        log(f"probes {row}: {res['top1']}")


def row_prefix(n: int) -> str:
    """How rows trained on ``n`` source images are named: mono (1), deka (10), kilo (1000), n<N>."""
    return {1: "mono", 10: "deka", 1000: "kilo"}.get(n, f"n{n}")

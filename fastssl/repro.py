"""``fastssl repro``: the paper's table in miniature, in one command.

Rows, for ``--method M`` (rotnet, deepcluster or bigan): ``random`` (an untrained AlexNet;
when the recipe changes M's network in ``[M.model]``, also ``random-<change>``, an untrained
network of M's architecture, e.g. ``random-sobel``), ``mono-M`` (M on patches of one image;
several images: named by their count), optionally the N-image rows (``deka-M``, ``kilo-M``,
``n<N>-M``) and the ablation rows (``mono-M-no-scale|no-rotation|no-colour``), ``full-M`` (M
on the labelled train split's images, labels unused: the paper's "millions of images" row at
this scale) and ``supervised`` (on the labelled train split). DeepCluster trains on fixed
datasets: the first ``[mono] epoch_length`` patches of the image(s), indexed and rendered when
needed, and the train split decoded once at ``res`` (centre crops) and held in memory; RotNet
and BiGAN stream.
Columns: linear-probe top-1 of conv1..conv5 on the held-out validation split (or
``--eval-data``, or the ``val/`` split of an ImageNet root).

Layout: ``OUT/data/`` (the ``.beton`` files), ``OUT/seed-S/<row>/`` (each training run's
checkpoint and metrics), ``OUT/seed-S/probes/<row>.json``; the summary ``OUT/probes.json``,
``OUT/table.md`` and ``OUT/probes.png`` holds every finished row of the seeds asked, as mean
and std over them, so the methods run into one ``--out`` make one table (random and supervised
trained once per seed). Running the same command again skips what is complete and resumes what
was interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path

import torch

from .atomic import atomic_output
from .config import load, loader_workers, method_model, to_dataclass
from .errors import FastSSLError
from .report import bar_figure, markdown_table, write_json


def _log(msg: str) -> None:
    print(f"[repro {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _prepare_data(rc: dict, data, eval_data, out: Path, progress: bool):
    """(train data, val data, classes): .beton files when FFCV is installed, else sources.
    ``data`` may be a .beton already (a repro folder's ``data/train.beton``); then
    ``eval_data`` must be one too: a .beton holds no held-out part to split off."""
    from .data.loaders import ffcv_available
    from .data.sources import split_indices, train_val_sources

    if str(data).endswith(".beton"):
        return _beton_pair(data, eval_data)
    src, vsrc = train_val_sources(data, eval_data)
    if vsrc is None:
        train_idx, val_idx = split_indices(src.labels, int(rc["val_per_class"]))
        vsrc = src
    else:
        if vsrc.classes != src.classes:
            raise FastSSLError(f"`eval_data` classes {vsrc.classes[:5]}... differ from `data`'s {src.classes[:5]}...")
        train_idx, val_idx = None, None
    if rc.get("loader", "auto") == "pytorch" or not ffcv_available():
        _log('using the PyTorch DataLoader (FFCV not installed, or loader = "pytorch" in the recipe)')
        return (src, train_idx), (vsrc, val_idx), src.classes
    from .data.beton import convert

    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for name, s, idx in (("train", src, train_idx), ("val", vsrc, val_idx)):
            p = d / f"{name}.beton"
            if not p.exists():
                _log(f"converting {name} split ({len(s) if idx is None else len(idx)} images) to {p}")
                convert(s, p, indices=idx, workers=max(1, loader_workers(rc)), progress=progress)
            paths.append(p)
    except BaseException:
        with contextlib.suppress(OSError):
            d.rmdir()  # only while empty
        raise
    return (str(paths[0]), None), (str(paths[1]), None), src.classes


def _beton_pair(data, eval_data):
    from .data.beton import read_info

    if eval_data is None or not str(eval_data).endswith(".beton"):
        raise FastSSLError(f"`data` {data} is a .beton: give the held-out split as `eval_data`, a .beton too")
    classes = list(read_info(data)["classes"])  # names, in label order
    if list(read_info(eval_data)["classes"]) != classes:
        raise FastSSLError(f"`eval_data` {eval_data} has other classes than `data` {data}")
    return (str(data), None), (str(eval_data), None), classes


TEN_CROP_RATIO = 224 / 256  # ten-crop evaluation: the crops of a 256 px resize (the probes' protocol)


def _loader(spec, rc, train: bool, batch_size: int, device, seed: int, shard: bool = True, ten_crop: bool = False):
    from .data.loaders import Loader
    from .train import resolve_device

    data, idx = spec
    dist = shard and torch.distributed.is_available() and torch.distributed.is_initialized()
    return Loader(
        data,
        batch_size=batch_size,
        train=train,
        res=int(rc["res"]),
        device=resolve_device(device),
        workers=loader_workers(rc),
        seed=seed,
        indices=idx,
        scale=tuple(rc["rrc_scale"]),
        drop_last=train,
        distributed=dist and torch.distributed.get_world_size() > 1,
        ten_crop=ten_crop and not train,
        crop_ratio=TEN_CROP_RATIO if ten_crop and not train else 1.0,
    )


def train_config(rc: dict, method_name: str, progress: bool, resume: bool):
    """The recipe's TrainConfig for a method (its section, ``settings`` left out) with the
    run-wide settings."""
    from .train import TrainConfig

    kw = {k: v for k, v in rc[method_name].items() if k not in ("settings", "model")}
    cfg = to_dataclass(TrainConfig, kw, f"{method_name}.")
    cfg.seed, cfg.device, cfg.progress, cfg.resume = int(rc["seed"]), rc["device"], progress, resume
    return cfg


def run_recipe(rc: dict, method_name: str, spec: dict | None = None, mono: bool = True) -> dict:
    """What a training run records of the recipe (compared on resume): the run-wide values,
    the method's section and, for a run on source images, the [mono] stream with ``spec``."""
    rec = {k: v for k, v in rc.items() if not isinstance(v, dict) and k != "smoke"}
    rec[method_name] = rc[method_name]
    if mono:
        rec["mono"] = {**rc["mono"], **(spec or {})}
    return copy.deepcopy(rec)


def build_for(rc: dict, method_name: str, num_classes=None):
    from .methods import build_method

    model = dict(method_model(rc, method_name))
    return build_method(method_name, model, num_classes, rc[method_name].get("settings"), seed=int(rc["seed"]))


def random_rows(rc: dict, method: str) -> dict[str, dict]:
    """The untrained networks to compare with: ``random`` (the run's ``[model]``) and, when the
    method changes the network (``[<method>.model]``), ``random-<change>`` with its model, so
    that each trained row has a random row of its own architecture."""
    from .config import model_changes

    rows = {"random": dict(rc["model"])}
    changes = model_changes(rc, method)
    if changes:
        tag = "-".join(k if v is True else f"{k}{v}" for k, v in changes.items())
        rows[f"random-{tag}"] = dict(method_model(rc, method))
    return rows


def _check_fits(n: int, per_item: int, what: str, kind: str) -> None:
    """Refuse a fixed dataset (``n`` items of ``per_item`` bytes) larger than half the memory
    available now."""
    import os

    need = n * per_item
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if need > avail // 2:
        raise FastSSLError(
            f"the fixed dataset ({n} {kind}) needs {need / 2**30:.1f} GiB in memory, "
            f"{avail / 2**30:.1f} GiB are available: lower {what}"
        )


def _fixed_dataset(rc: dict, cfg, *, image=None, data=None, spec=None, progress: bool = True):
    """A fixed dataset for methods that need one (DeepCluster): the first ``[mono]
    epoch_length`` patches of ``image`` (epoch 0) as :class:`~fastssl.data.adapters.IndexedPatches`
    (rendered by index when needed, never held: the paper's 1.28M patches fit), or ``data`` (a
    loader spec) decoded once at ``res`` with the evaluation transform, held in memory."""
    from .data.adapters import IndexedPatches, TensorData
    from .progress import bar as progress_bar
    from .train import resolve_device

    device = resolve_device(cfg.device)
    if data is None:  # every rank sees the whole set (rank 0's clustering labels it for all)
        n = int(rc["mono"]["epoch_length"])
        _check_fits(n, IndexedPatches.BYTES_PER_PATCH, "[mono] epoch_length", "patches' parameters")
        src = _mono_stream(rc, image, 1024, cfg.seed, spec, rank=0, world_size=1).src
        return IndexedPatches(src.renderer, src.epoch_length, cfg.batch_size, device, seed=cfg.seed)
    ld = _loader(data, rc, False, 512, "cpu", cfg.seed, shard=False)
    _check_fits(len(ld) * 512, 3 * int(rc["res"]) ** 2, "the train split (or res)", f"images of {rc['res']} px")
    batches = (x.cpu() for x, _ in ld)
    imgs = torch.cat(list(progress_bar(batches, total=len(ld), desc="fixed dataset", enabled=progress)))
    return TensorData(imgs.contiguous(), cfg.batch_size, device, seed=cfg.seed)


def _mono_stream(rc: dict, image, batch_size: int, seed: int, spec: dict | None = None, **kw):
    """The stream of patches of the recipe's [mono] section (``spec``: AugmentSpec fields
    changed on top, for the ablation rows) from one or several images, on the recipe's device
    (``kw``: MonoSource overrides)."""
    from .data.adapters import MonoData
    from .mono import MonoSource
    from .spec import AugmentSpec
    from .train import resolve_device

    mono_kw = {**rc["mono"], **(spec or {})}
    n = int(mono_kw.pop("epoch_length"))
    opts = dict(batch_size=batch_size, epoch_length=n, seed=seed, device=resolve_device(rc["device"]))
    return MonoData(MonoSource(image, AugmentSpec(**mono_kw), **{**opts, **kw}))


def _train(
    row: str,
    rc: dict,
    method_name: str,
    data,
    out: Path,
    num_classes,
    progress: bool,
    image=None,
    spec=None,
    allow_changes: bool = False,
):
    from .data.adapters import LoaderData, MonoData
    from .train import Trainer, load_checkpoint, recipe_changes

    cfg = train_config(rc, method_name, progress, resume=True)
    run = out / row
    ck = run / "ckpt.pt"
    recipe = run_recipe(rc, method_name, spec, mono=isinstance(data, MonoData))
    if ck.exists():  # a row of an earlier run: only reused (or resumed) with the same network
        state = load_checkpoint(ck)
        arch, epoch, was = state["arch"], state["epoch"], state.get("recipe")
        del state  # not held through training: a resumed run loads its weights itself
        diff = {k: (arch[k], v) for k, v in method_model(rc, method_name).items() if k in arch and arch[k] != v}
        if diff:
            said = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise FastSSLError(f"{run} was trained with another network ({said}): use another --out")
        changed = recipe_changes(was, recipe) if was is not None and not allow_changes else {}
        if changed:
            said = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in list(changed.items())[:4])
            raise FastSSLError(f"{run} was trained with another recipe ({said}): use another --out")
        if epoch >= cfg.epochs:
            _log(f"{row}: already trained ({ck})")
            return ck
    torch.manual_seed(cfg.seed)
    method = build_for(rc, method_name, num_classes)
    if method.fixed_dataset:
        mono = isinstance(data, MonoData)
        stream = _fixed_dataset(
            rc, cfg, image=image if mono else None, data=None if mono else data, spec=spec, progress=progress
        )
    elif isinstance(data, MonoData):
        stream = data
    else:
        stream = LoaderData(
            _loader(data, rc, True, cfg.batch_size, cfg.device, cfg.seed), use_labels=method.needs_labels
        )
    steps = min(len(stream), cfg.steps_per_epoch or len(stream))
    _log(f"{row}: training {method_name}, {cfg.epochs} epochs of {steps} steps of {cfg.batch_size}")
    t0 = time.perf_counter()
    status = Trainer(method, stream, cfg, run, recipe=recipe, allow_changes=allow_changes).fit()
    if status == "interrupted":
        raise KeyboardInterrupt
    _log(f"{row}: done in {time.perf_counter() - t0:.0f} s")
    return ck


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
    ablation: bool = False,
    smoke: bool = False,
    progress: bool = True,
) -> dict:
    """The rows of ``method`` for each of ``seeds`` (default: the recipe's seed), then the
    summary of every finished row of ``out``: each cell the mean over seeds, with its std.

    Rows: ``random``; ``mono-M`` on ``image`` (several images: named by their count);
    with ``ablation``, ``mono-M-no-scale`` / ``-no-rotation`` / ``-no-colour``; for each N of
    ``n_images``, M on the first N training images of ``data`` (``deka-M`` for 10, ``kilo-M``
    for 1000, else ``n<N>-M``); ``full-M``; ``supervised``."""
    from .methods import pretext_methods

    if data is None:
        raise FastSSLError("`data` is required: a labelled train source (folder, .tar.gz, or cifar10)")
    if method not in pretext_methods():
        raise FastSSLError(f"`method` {method}: choose one of {', '.join(pretext_methods())}")
    rc = load(preset, overrides, methods=(method, "supervised"))
    if smoke:
        smoke_recipe(rc, method)
    seeds = [int(rc["seed"])] if seeds is None else [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise FastSSLError(f"`seeds` must be distinct integers >= 0, got {seeds}")
    if n_images and (any(n < 1 for n in n_images) or len(set(n_images)) != len(n_images)):
        raise FastSSLError(f"`n_images` must be distinct counts >= 1, got {n_images}")
    with run_folder(out) as out:
        return _repro(rc, preset, method, image, data, eval_data, out, progress, seeds, n_images or [], ablation)


def _repro(rc, preset, method, image, data, eval_data, out: Path, progress, seeds, n_images, ablation) -> dict:
    from .mono import images_for
    from .spec import AugmentSpec

    t_start = time.perf_counter()
    # everything that can refuse the run is checked before the first file is written
    mono_kw = {k: v for k, v in rc["mono"].items() if k != "epoch_length"}
    images_for(image, AugmentSpec(**mono_kw))
    sources = source_images(data, eval_data, rc, n_images)
    train_data, val_data, classes = _prepare_data(rc, data, eval_data, out, progress)
    write_json(
        out / "config.json",
        {
            "preset": preset,
            "image": str(image),
            "data": str(data),
            "eval_data": str(eval_data) if eval_data else None,
            "seeds": seeds,
            "recipe": rc,
        },
    )
    extra = (sources, ablation)
    for seed in seeds:
        rcs = copy.deepcopy(rc)
        rcs["seed"] = seed
        _log(f"seed {seed}")
        _rows_of_one_seed(rcs, method, image, train_data, val_data, len(classes), out / f"seed-{seed}", progress, extra)
    return report(out, seeds, preset=preset, wall_s=round(time.perf_counter() - t_start, 1))


def report(out, seeds=None, **info) -> dict:
    """(Re)write ``OUT/probes.json``, ``table.md`` and ``probes.png`` from the probe results of
    ``seeds`` (default: every ``seed-*`` folder) in ``out``; returns the summary. The three
    files are replaced together or not at all. A smoke run's outputs say so."""
    from .atomic import JSON, PNG

    out = Path(out)
    if seeds is None:
        seeds = sorted(int(p.name[5:]) for p in out.glob("seed-*") if p.name[5:].isdigit())
    result = summary(out, seeds)
    if not result["rows"]:
        raise FastSSLError(f"no probe results in {out} for seeds {seeds}")
    smoke = bool(info.pop("smoke", False)) or _was_smoke(out)
    result.update(info)
    if smoke:
        result["smoke"] = True
    table = markdown_table(result["rows"], result["std"], n=len(seeds), counts=result["n"], smoke=smoke)
    title = ("SMOKE RUN (a few steps, not results): " if smoke else "") + "linear probes"
    title += f", preset {info['preset']}" if info.get("preset") else ""
    if len(seeds) > 1:
        title += f", mean +/- std over {len(seeds)} seeds"
    std = result["std"] if len(seeds) > 1 else None
    with (
        atomic_output(out / "probes.json", replace=JSON) as tj,
        atomic_output(out / "table.md") as tt,
        atomic_output(out / "probes.png", replace=PNG) as tp,
    ):
        tj.write_text(json.dumps(result, indent=1))
        tt.write_text(table)
        bar_figure(result["rows"], tp, title=title, std=std, atomic=False)
    print(table)
    return result


def _was_smoke(out: Path) -> bool:
    try:
        return bool(json.loads((out / "config.json").read_text())["recipe"].get("smoke"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


SMOKE_STEPS = 2


def smoke_recipe(rc: dict, method: str) -> None:
    """``rc`` cut to a few steps of every stage at unchanged shapes (in place)."""
    from .methods import METHODS

    for name in METHODS:
        rc[name].update(epochs=1, steps_per_epoch=SMOKE_STEPS, log_every=1)
    rc["probe"].update(epochs=1, steps_per_epoch=SMOKE_STEPS)
    need = int(rc[method]["batch_size"]) * SMOKE_STEPS
    if METHODS[method].fixed_dataset:  # k clusters need k patches
        need = max(need, int(rc[method]["settings"]["k"]))
    rc["mono"]["epoch_length"] = min(int(rc["mono"]["epoch_length"]), need)
    rc["smoke"] = True


ABLATION = {  # the paper's augmentation ablation: each row drops one part of the chain
    "no-scale": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0]},  # no random-resized crop
    "no-rotation": {"rotation": 0.0, "shear": 0.0},
    "no-colour": {"jitter_p": 0.0},
}


def _image_rows(method: str, image, source_images: dict, ablation: bool) -> list[tuple]:
    """(row name, images, spec changes) of every row trained on source images."""
    from .mono import row_prefix

    n = len(image) if isinstance(image, (list, tuple)) else 1
    rows = [(f"{row_prefix(n)}-{method}", image, None)]
    if ablation:
        rows += [(f"{row_prefix(n)}-{method}-{name}", image, spec) for name, spec in ABLATION.items()]
    for k, images in source_images.items():
        rows.append((f"{row_prefix(k)}-{method}", images, None))
    return rows


def _rows_of_one_seed(rc, method, image, train_data, val_data, nc: int, out: Path, progress: bool, extra) -> None:
    from .models import AlexNet
    from .probe import ProbeConfig, load_trunk, train_probes

    source_images, ablation = extra
    out.mkdir(exist_ok=True)
    device = rc["device"]
    bs, seed = int(rc[method]["batch_size"]), int(rc["seed"])
    ckpts = {}
    for row, images, spec in _image_rows(method, image, source_images, ablation):
        stream = _mono_stream(rc, images, bs, seed, spec)
        ckpts[row] = _train(row, rc, method, stream, out, nc, progress, image=images, spec=spec)
    rc_full = rc
    if rc.get("smoke") and "settings" in rc[method] and "k" in rc[method]["settings"]:
        rc_full = copy.deepcopy(rc)  # a smoke run's labelled set can hold fewer images than k
        rc_full[method]["settings"]["k"] = min(rc[method]["settings"]["k"], _train_images(train_data))
    ckpts[f"full-{method}"] = _train(f"full-{method}", rc_full, method, train_data, out, nc, progress)
    ckpts["supervised"] = _train("supervised", rc, "supervised", train_data, out, nc, progress)
    pcfg = to_dataclass(ProbeConfig, dict(rc["probe"]), "probe.")
    pcfg.device, pcfg.progress = device, progress
    pdir = out / "probes"
    pdir.mkdir(exist_ok=True)
    randoms = random_rows(rc, method)
    for row in [*randoms, *ckpts]:
        rp = pdir / f"{row}.json"
        if rp.exists():
            _log(f"probes {row}: done already {json.loads(rp.read_text())['top1']}")
            continue
        if row in randoms:
            torch.manual_seed(seed)
            trunk = AlexNet(4, **randoms[row])
        else:
            trunk = load_trunk(ckpts[row])
        _log(f"probes {row}: training five linear probes for {pcfg.epochs} epochs")
        tr = _loader(train_data, rc, True, pcfg.batch_size, device, seed)
        va = _loader(val_data, rc, False, pcfg.batch_size, device, seed, ten_crop=pcfg.ten_crop)
        res = train_probes(trunk, tr, va, nc, pcfg, out_dir=pdir / row)
        write_json(rp, res)
        _log(f"probes {row}: {res['top1']}")


def _train_images(train_data) -> int:
    data, idx = train_data
    if idx is not None:
        return len(idx)
    if isinstance(data, str) and data.endswith(".beton"):
        from .data.beton import read_info

        return int(read_info(data)["num_samples"])
    return len(data)


def source_images(data, eval_data, rc: dict, counts) -> dict[int, list]:
    """For each count N: the first N images, in a fixed pseudo-random order (seed 0, so spread
    over the classes), of the labelled training images (the held-out validation part excluded;
    they stay in every other row's data too)."""
    import numpy as np

    from .data.sources import split_indices, train_val_sources

    if not counts:
        return {}
    src, vsrc = train_val_sources(data, eval_data)
    idx = np.arange(len(src)) if vsrc is not None else split_indices(src.labels, int(rc["val_per_class"]))[0]
    if max(counts) > len(idx):
        raise FastSSLError(f"`n_images` {max(counts)} exceeds the {len(idx)} training images of {data}")
    order = idx[np.random.default_rng(0).permutation(len(idx))]
    out = {n: [src.image(int(i)) for i in order[:n]] for n in sorted(counts)}
    short = int(np.median([min(a.shape[:2]) for a in out[max(counts)]]))
    crop, size = float(rc["mono"].get("initial_crop") or 1.0), int(rc["mono"]["size"])
    if crop * short < size:
        _log(
            f"the N-image rows' sources are small (median short side {short} px): their initial crop "
            f"({crop:g} of it) is below the patch size {size}, so every patch is an enlargement; the "
            "paper draws them from full-size photos"
        )
    return out


def row_order(names) -> list[str]:
    """random first (then ``random-<change>``), supervised last; between them by method
    (registry order), then by images (one, ten, a thousand, N, the full split), then the
    ablation variant."""
    from .methods import pretext_methods

    rank = {m: i for i, m in enumerate(pretext_methods())}

    def key(name: str):
        if name == "random" or name.startswith("random-"):  # random, then random-<change>
            return (0, 0 if name == "random" else 1, name)
        if name == "supervised":
            return (2, 0, "")
        prefix, _, rest = name.partition("-")  # mono / deka / kilo / n<N> / full, then method[-variant]
        method, _, variant = rest.partition("-")
        images = int(prefix[1:]) if prefix[:1] == "n" and prefix[1:].isdigit() else 0
        return (
            1,
            rank.get(method, len(rank)),
            {"mono": 0, "deka": 1, "kilo": 2, "full": 9}.get(prefix, 5),
            images,
            variant,
        )

    return sorted(names, key=key)


def summary(out: Path, seeds: list[int]) -> dict:
    """Every finished probe row under ``out`` for ``seeds``: mean and std (over the seeds that
    have the row) of each cell, the per-seed values and the seed count per row."""
    import numpy as np

    from .models.alexnet import LAYERS

    per_seed: dict[str, dict] = {}
    for seed in seeds:
        for rp in sorted((out / f"seed-{seed}" / "probes").glob("*.json")):
            per_seed.setdefault(rp.stem, {})[str(seed)] = json.loads(rp.read_text())["top1"]
    rows, std, count = {}, {}, {}
    for name in row_order(per_seed):
        vals = per_seed[name]
        a = np.array([[v[k] for k in LAYERS] for v in vals.values()])
        rows[name] = {k: round(float(x), 2) for k, x in zip(LAYERS, a.mean(0), strict=True)}
        sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros(len(LAYERS))
        std[name] = {k: round(float(x), 2) for k, x in zip(LAYERS, sd, strict=True)}
        count[name] = len(a)
    return {"rows": rows, "std": std, "seeds": seeds, "n": count, "per_seed": {r: per_seed[r] for r in rows}}


@contextlib.contextmanager
def run_folder(out):
    """``out`` created if needed and held exclusively (a lock file with this process's PID)
    for the block; a folder this call created is removed again if the block fails before
    writing anything into it."""
    from .atomic import run_lock

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FastSSLError(f"`out` {out} is a file; give a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FastSSLError(f"cannot create `out` {out}: {e.strerror}") from None
    ok = False
    try:
        with run_lock(out):  # its lock file goes with the lock
            yield out
        ok = True
    finally:
        if created and not ok:
            with contextlib.suppress(OSError):  # only while empty: nothing the run wrote is removed
                out.rmdir()


@contextlib.contextmanager
def shutdown_distributed():
    """Under torchrun: after the block, every rank waits for the others, then the process group
    is destroyed (a rank leaving while another still talks to it can abort that one)."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    try:
        yield
    except BaseException:
        if dist:  # no barrier: the other ranks may never reach it
            torch.distributed.destroy_process_group()
        raise
    if dist:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def train_one(
    preset="cpu-mini",
    *,
    method="rotnet",
    image=None,
    data=None,
    out,
    overrides=None,
    resume=False,
    allow_changes=False,
    progress=True,
) -> str:
    """``fastssl train``: one method on the mono stream (``image``) or on ``data``."""
    from .methods import get_method
    from .train import Trainer, init_distributed, resolve_device

    cls = get_method(method)
    if data is not None and image is not None:
        raise FastSSLError("`image` and `data` exclude each other: train on patches of an image, or on a data source")
    if data is None and cls.needs_labels:
        raise FastSSLError(f"{method} training needs `data` (a labelled source)")
    rc = load(preset, overrides, methods=(method,))
    cfg = train_config(rc, method, progress, resume)
    rank, _ = init_distributed(resolve_device(cfg.device))  # under torchrun: before the data, so that it shards
    folder = run_folder(out) if rank == 0 else contextlib.nullcontext(Path(out))
    with folder as out, shutdown_distributed():
        torch.manual_seed(cfg.seed)
        if data is None:
            m = build_for(rc, method)
            if m.fixed_dataset:
                stream = _fixed_dataset(rc, cfg, image=image, progress=progress)
            else:
                stream = _mono_stream(rc, image, cfg.batch_size, cfg.seed)
            recipe = run_recipe(rc, method)
            return Trainer(m, stream, cfg, out, recipe=recipe, allow_changes=allow_changes).fit()
        if str(data).endswith(".beton"):
            from .data.beton import read_info

            src, nc = str(data), len(read_info(data)["classes"])
        else:
            from .data.sources import open_source

            src = open_source(data)
            nc = len(src.classes)
        m = build_for(rc, method, nc)
        if m.fixed_dataset:
            stream = _fixed_dataset(rc, cfg, data=(src, None), progress=progress)
        else:
            from .data.adapters import LoaderData

            stream = LoaderData(
                _loader((src, None), rc, True, cfg.batch_size, cfg.device, cfg.seed), use_labels=m.needs_labels
            )
        recipe = run_recipe(rc, method, mono=False)
        return Trainer(m, stream, cfg, out, recipe=recipe, allow_changes=allow_changes).fit()


def _check_probe_folder(out: Path, trunk) -> None:
    """A folder with probes of another checkpoint is never reused (nor its results replaced)."""
    from .probe import weights_digest
    from .train import load_checkpoint

    ck = out / "ckpt.pt"
    if not ck.is_file():
        return
    was = load_checkpoint(ck).get("arch", {}).get("trunk")
    if was != weights_digest(trunk):
        raise FastSSLError(
            f"{out} holds the probes of another checkpoint (trunk {was}); its results are kept: choose another --out"
        )


def probe_one(ckpt, *, preset="cpu-mini", data, eval_data=None, out, overrides=None, progress=True) -> dict:
    """``fastssl probe``: five linear probes of a checkpoint's trunk; writes OUT/probes.json."""
    from .probe import ProbeConfig, load_trunk, train_probes

    rc = load(preset, overrides)
    trunk = load_trunk(ckpt)
    _check_probe_folder(Path(out), trunk)
    with run_folder(out) as out:
        train_data, val_data, classes = _prepare_data(rc, data, eval_data, out, progress)
        pcfg = to_dataclass(ProbeConfig, dict(rc["probe"]), "probe.")
        pcfg.device, pcfg.progress = rc["device"], progress
        rc["res"] = trunk.config["input_res"]
        tr = _loader(train_data, rc, True, pcfg.batch_size, rc["device"], int(rc["seed"]))
        va = _loader(val_data, rc, False, pcfg.batch_size, rc["device"], int(rc["seed"]), ten_crop=pcfg.ten_crop)
        return train_probes(trunk, tr, va, len(classes), pcfg, out_dir=out)

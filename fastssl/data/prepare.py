"""Data for a run, prepared from what the user gave: labelled sources as .beton files (or
sources for the PyTorch loader), loaders with the recipe's settings, the one-image stream, the
fixed datasets of methods that need one, and the N-image rows' source photos."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from ..config import loader_workers
from ..distributed import resolve_device
from ..errors import FastSSLError
from ..image import IMAGE_EXTS, read_regular
from ..mono import MonoSource
from ..progress import bar as progress_bar
from ..progress import log
from ..spec import AugmentSpec
from .adapters import IndexedPatches, MonoData, TensorData
from .beton import convert, read_info
from .loaders import Loader, ffcv_available
from .sources import decode_rgb, open_source, split_indices, train_val_sources


def prepare_labelled(rc: dict, data, eval_data, out: Path, progress: bool):
    """(train data, val data, classes): .beton files when FFCV is installed, else sources.
    ``data`` may be a .beton already (a repro folder's ``data/train.beton``); then
    ``eval_data`` must be one too: a .beton holds no held-out part to split off."""

    if str(data).endswith(".beton"):
        return beton_pair(data, eval_data)
    src, vsrc = train_val_sources(data, eval_data)
    if vsrc is None:
        train_idx, val_idx = split_indices(src.labels, int(rc["val_per_class"]))
        vsrc = src
    else:
        if vsrc.classes != src.classes:
            raise FastSSLError(f"`eval_data` classes {vsrc.classes[:5]}... differ from `data`'s {src.classes[:5]}...")
        train_idx, val_idx = None, None
    if rc.get("loader", "auto") == "pytorch" or not ffcv_available():
        log('using the PyTorch DataLoader (FFCV not installed, or loader = "pytorch" in the recipe)')
        return (src, train_idx), (vsrc, val_idx), src.classes

    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for name, s, idx in (("train", src, train_idx), ("val", vsrc, val_idx)):
            p = d / f"{name}.beton"
            if not p.exists():
                log(f"converting {name} split ({len(s) if idx is None else len(idx)} images) to {p}")
                convert(s, p, indices=idx, workers=max(1, loader_workers(rc)), progress=progress)
            paths.append(p)
    except BaseException:
        with contextlib.suppress(OSError):
            d.rmdir()  # only while empty
        raise
    return (str(paths[0]), None), (str(paths[1]), None), src.classes


def beton_pair(data, eval_data):
    if eval_data is None or not str(eval_data).endswith(".beton"):
        raise FastSSLError(f"`data` {data} is a .beton: give the held-out split as `eval_data`, a .beton too")
    classes = list(read_info(data)["classes"])  # names, in label order
    if list(read_info(eval_data)["classes"]) != classes:
        raise FastSSLError(f"`eval_data` {eval_data} has other classes than `data` {data}")
    return (str(data), None), (str(eval_data), None), classes


TEN_CROP_RATIO = 224 / 256  # ten-crop evaluation: the crops of a 256 px resize (the probes' protocol)


def loader(spec, rc, train: bool, batch_size: int, device, seed: int, shard: bool = True, ten_crop: bool = False):
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


def check_fits(n: int, per_item: int, what: str, kind: str) -> None:
    """Refuse a fixed dataset (``n`` items of ``per_item`` bytes) larger than half the memory
    available now."""

    need = n * per_item
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if need > avail // 2:
        raise FastSSLError(
            f"the fixed dataset ({n} {kind}) needs {need / 2**30:.1f} GiB in memory, "
            f"{avail / 2**30:.1f} GiB are available: lower {what}"
        )


def fixed_dataset(rc: dict, cfg, *, image=None, data=None, spec=None, progress: bool = True, renderer=None):
    """A fixed dataset for methods that need one (DeepCluster): the first ``[mono]
    epoch_length`` patches of ``image`` (epoch 0) as :class:`~fastssl.data.adapters.IndexedPatches`
    (rendered by index when needed, never held: the paper's 1.28M patches fit), or ``data`` (a
    loader spec) decoded once at ``res`` with the evaluation transform, held in memory.
    ``renderer``: the image's renderer of this recipe and ``spec`` when one is built already
    (its pyramid is not built twice)."""

    device = resolve_device(cfg.device)
    if data is None:  # every rank sees the whole set (rank 0's clustering labels it for all)
        n = int(rc["mono"]["epoch_length"])
        check_fits(n, IndexedPatches.BYTES_PER_PATCH, "[mono] epoch_length", "patches' parameters")
        if renderer is None:
            renderer = mono_stream(rc, image, 1024, cfg.seed, spec, rank=0, world_size=1).src.renderer
        return IndexedPatches(renderer, n, cfg.batch_size, device, seed=cfg.seed)
    ld = loader(data, rc, False, 512, "cpu", cfg.seed, shard=False)
    check_fits(len(ld) * 512, 3 * int(rc["res"]) ** 2, "the train split (or res)", f"images of {rc['res']} px")
    batches = (x.cpu() for x, _ in ld)
    imgs = torch.cat(list(progress_bar(batches, total=len(ld), desc="fixed dataset", enabled=progress)))
    return TensorData(imgs.contiguous(), cfg.batch_size, device, seed=cfg.seed)


def mono_stream(rc: dict, image, batch_size: int, seed: int, spec: dict | None = None, **kw):
    """The stream of patches of the recipe's [mono] section (``spec``: AugmentSpec fields
    changed on top, for the ablation rows) from one or several images, on the recipe's device
    (``kw``: MonoSource overrides)."""

    mono_kw = {**rc["mono"], **(spec or {})}
    n = int(mono_kw.pop("epoch_length"))
    opts = dict(batch_size=batch_size, epoch_length=n, seed=seed, device=resolve_device(rc["device"]))
    return MonoData(MonoSource(image, AugmentSpec(**mono_kw), **{**opts, **kw}))


def train_images(train_data) -> int:
    data, idx = train_data
    if idx is not None:
        return len(idx)
    if isinstance(data, str) and data.endswith(".beton"):
        return int(read_info(data)["num_samples"])
    return len(data)


def source_images(data, eval_data, rc: dict, counts, photos=None) -> dict[int, list]:
    """For each count N: the first N images, in a fixed pseudo-random order (seed 0, so spread
    over the classes), of ``photos`` (a folder or archive of photos, class folders ignored: the
    paper draws its N images from full-size photos) or, without it, of the labelled training
    images (the held-out validation part excluded; they stay in every other row's data too)."""

    if not counts:
        return {}
    if photos is not None:
        n, image = photo_source(photos)
        idx, where = np.arange(n), f"the {n} photos of {photos}"
    else:
        src, vsrc = train_val_sources(data, eval_data)
        idx = np.arange(len(src)) if vsrc is not None else split_indices(src.labels, int(rc["val_per_class"]))[0]
        where, image = f"the {len(idx)} training images of {data}", src.image
    if max(counts) > len(idx):
        raise FastSSLError(f"`n_images` {max(counts)} exceeds {where}")
    order = idx[np.random.default_rng(0).permutation(len(idx))]
    out = {n: [image(int(i)) for i in order[:n]] for n in sorted(counts)}
    short = int(np.median([min(a.shape[:2]) for a in out[max(counts)]]))
    crop, size = float(rc["mono"].get("initial_crop") or 1.0), int(rc["mono"]["size"])
    if crop * short < size:
        log(
            f"the N-image rows' sources are small (median short side {short} px): their initial crop "
            f"({crop:g} of it) is below the patch size {size}, so every patch is an enlargement; the "
            "paper draws them from full-size photos (`n_images_from`)"
        )
    return out


def photo_source(photos):
    """(count, image(i)) of a collection of photos: a folder of image files (in name order), or
    any labelled source (class folders, an archive), its labels ignored."""

    p = Path(str(photos))
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS) if p.is_dir() else []
    if files:
        return len(files), lambda i: decode_rgb(read_regular(files[i]), files[i].name)
    src = open_source(p)
    return len(src), src.image

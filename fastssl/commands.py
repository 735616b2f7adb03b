"""``fastssl train``, ``probe`` and ``score``: one method on one stream, the probes of one
checkpoint, the top-1 of a classifier."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .atomic import run_folder
from .config import build_for, load, run_recipe, to_dataclass, train_config
from .data.adapters import LoaderData
from .data.beton import read_info
from .data.prepare import fixed_dataset, loader, mono_stream, prepare_labelled
from .data.sources import open_source, split_indices
from .distributed import init_distributed, resolve_device, shutdown_distributed
from .errors import FastSSLError
from .methods import get_method
from .pretrained import load_network, load_trunk
from .probe import ProbeConfig, train_probes, weights_digest
from .train import Trainer, load_checkpoint


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
                stream = fixed_dataset(rc, cfg, image=image, progress=progress)
            else:
                stream = mono_stream(rc, image, cfg.batch_size, cfg.seed)
            recipe = run_recipe(rc, method, source=stream.source_sha256)
            return Trainer(m, stream, cfg, out, recipe=recipe, allow_changes=allow_changes).fit()
        if str(data).endswith(".beton"):
            src, nc = str(data), len(read_info(data)["classes"])
        else:
            src = open_source(data)
            nc = len(src.classes)
        m = build_for(rc, method, nc)
        if m.fixed_dataset:
            stream = fixed_dataset(rc, cfg, data=(src, None), progress=progress)
        else:
            stream = LoaderData(
                loader((src, None), rc, True, cfg.batch_size, cfg.device, cfg.seed), use_labels=m.needs_labels
            )
        recipe = run_recipe(rc, method)
        return Trainer(m, stream, cfg, out, recipe=recipe, allow_changes=allow_changes).fit()


def _check_probe_folder(out: Path, trunk) -> None:
    """A folder with probes of another checkpoint is never reused (nor its results replaced)."""

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

    rc = load(preset, overrides)
    trunk = load_trunk(ckpt)
    _check_probe_folder(Path(out), trunk)
    with run_folder(out) as out:
        train_data, val_data, classes = prepare_labelled(rc, data, eval_data, out, progress)
        pcfg = to_dataclass(ProbeConfig, dict(rc["probe"]), "probe.")
        pcfg.device, pcfg.progress = rc["device"], progress
        rc["res"] = trunk.config["input_res"]
        tr = loader(train_data, rc, True, pcfg.batch_size, rc["device"], int(rc["seed"]))
        va = loader(val_data, rc, False, pcfg.batch_size, rc["device"], int(rc["seed"]), ten_crop=pcfg.ten_crop)
        return train_probes(trunk, tr, va, len(classes), pcfg, out_dir=out)


@torch.no_grad()
def classifier_top1(net, batches, device) -> tuple[float, int]:
    """(top-1 %, images) of ``net`` on ``batches`` of ``(images, labels)``, in eval mode."""
    net = net.to(device).to(memory_format=torch.channels_last).eval()
    correct = total = 0
    for x, y in batches:
        correct += int((net(x).argmax(1) == y).sum())
        total += int(y.shape[0])
    if total == 0:
        raise FastSSLError("no labelled images to score")
    return round(100.0 * correct / total, 2), total


def score_one(ckpt, *, preset="cpu-mini", data, held_out=False, overrides=None) -> dict:
    """``fastssl score``: top-1 of a checkpoint's classifier on every image of ``data`` (or on
    its held-out part: the last ``val_per_class`` images of each class, as repro holds out),
    centre crops at the recipe's ``res``."""

    rc = load(preset, overrides)
    net = load_network(ckpt)
    if str(data).endswith(".beton"):
        if held_out:
            raise FastSSLError("a .beton holds no held-out part: give its source, or score the whole .beton")
        spec, n_classes = (str(data), None), len(read_info(data)["classes"])
    else:
        src = open_source(data)
        idx = split_indices(src.labels, int(rc["val_per_class"]))[1] if held_out else None
        spec, n_classes = (src, idx), len(src.classes)
    if n_classes != net.config["num_classes"]:
        raise FastSSLError(f"{ckpt} classifies {net.config['num_classes']} classes, {data} has {n_classes}")
    device = resolve_device(rc["device"])
    top1, n = classifier_top1(net, loader(spec, rc, False, 256, device, int(rc["seed"]), shard=False), device)
    return {"top1": top1, "images": n, "model": net.config}

"""Rows of a repro run: one training run each, reused when complete, resumed when not, and
refused when its folder holds another network or recipe; and the smoke run's recipe."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch

from .config import build_for, method_model, run_recipe, train_config
from .data.adapters import LoaderData, MonoData
from .data.prepare import fixed_dataset, loader
from .errors import FastSSLError
from .image import paper_name
from .methods import METHODS
from .mono import folder_images, images_for
from .progress import log
from .spec import AugmentSpec
from .train import Trainer, load_checkpoint, recipe_changes


def check_run(rc: dict, seeds, image) -> list[int]:
    """The seeds of a run (default: the recipe's), refused unless distinct and >= 0, and the
    source image refused unless it fits the recipe's [mono] chain: before anything is written."""
    seeds = [int(rc["seed"])] if seeds is None else [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise FastSSLError(f"`seeds` must be distinct integers >= 0, got {seeds}")
    images_for(image, AugmentSpec(**{k: v for k, v in rc["mono"].items() if k != "epoch_length"}))
    return seeds


def each_photo(image) -> list[tuple[str, object]]:
    """(name, photo) for each photo of ``image`` (several, or a folder), for runs with one
    one-image row per photo, named ``ROW@NAME``: ``paper:NAME``'s NAME, a file's stem, or
    ``imageK`` for an array. Refused for fewer than two photos or two of one name."""
    items = folder_images(image)
    if not isinstance(items, (list, tuple)) or len(items) < 2:
        raise FastSSLError("one row per photo needs at least two photos: repeat --image, or give a folder")
    named = []
    for k, x in enumerate(items):
        raw = f"image{k}"
        if isinstance(x, (str, os.PathLike)):
            raw = paper_name(x) or Path(x).stem
        named.append((re.sub(r"[^A-Za-z0-9._-]", "_", raw) or f"image{k}", x))
    twice = repeated(n for n, _ in named)
    if twice:
        raise FastSSLError(f"two photos are named {twice[0]!r}: one row per photo needs distinct names")
    return named


def repeated(names) -> list[str]:
    """The names that occur more than once, sorted."""
    names = list(names)
    return sorted({n for n in names if names.count(n) > 1})


def train_row(
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
    sources: str | None = None,
):

    cfg = train_config(rc, method_name, progress, resume=True)
    run = out / row
    ck = run / "ckpt.pt"
    recipe = run_recipe(rc, method_name, spec, source=data.source_sha256 if isinstance(data, MonoData) else None)
    if sources:
        recipe["sources"] = sources
    if ck.exists():  # a row of an earlier run: only reused (or resumed) with the same network
        state = load_checkpoint(ck)
        arch, epoch, was = state["arch"], state["epoch"], state.get("recipe")
        del state  # not held through training: a resumed run loads its weights itself
        diff = {k: (arch[k], v) for k, v in method_model(rc, method_name).items() if k in arch and arch[k] != v}
        if diff:
            said = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise FastSSLError(f"{run} was trained with another network ({said}): use another --out")
        defaults = METHODS[method_name].recipe_defaults()
        changed = recipe_changes(was, recipe, defaults) if was is not None and not allow_changes else {}
        if changed:
            said = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in list(changed.items())[:4])
            raise FastSSLError(f"{run} was trained with another recipe ({said}): use another --out")
        if epoch >= cfg.epochs:
            log(f"{row}: already trained ({ck})")
            return ck
    torch.manual_seed(cfg.seed)
    method = build_for(rc, method_name, num_classes)
    if method.fixed_dataset:
        mono = isinstance(data, MonoData)
        kw = dict(image=image, renderer=data.src.renderer) if mono else dict(data=data)
        stream = fixed_dataset(rc, cfg, spec=spec, progress=progress, **kw)
    elif isinstance(data, MonoData):
        stream = data
    else:
        stream = LoaderData(
            loader(data, rc, True, cfg.batch_size, cfg.device, cfg.seed), use_labels=method.needs_labels
        )
    steps = min(len(stream), cfg.steps_per_epoch or len(stream))
    log(f"{row}: training {method_name}, {cfg.epochs} epochs of {steps} steps of {cfg.batch_size}")
    t0 = time.perf_counter()
    status = Trainer(method, stream, cfg, run, recipe=recipe, allow_changes=allow_changes).fit()
    if status == "interrupted":
        raise KeyboardInterrupt
    log(f"{row}: done in {time.perf_counter() - t0:.0f} s")
    return ck


SMOKE_STEPS = 2


def smoke_recipe(rc: dict, method: str) -> None:
    """``rc`` cut to a few steps of every stage at unchanged shapes (in place)."""

    for name in METHODS:
        rc[name].update(epochs=1, steps_per_epoch=SMOKE_STEPS, log_every=1)
    rc["probe"].update(epochs=1, steps_per_epoch=SMOKE_STEPS)
    need = max(int(rc[method]["batch_size"]) * SMOKE_STEPS, METHODS[method].min_items(rc[method].get("settings")))
    rc["mono"]["epoch_length"] = min(int(rc["mono"]["epoch_length"]), need)
    rc["smoke"] = True

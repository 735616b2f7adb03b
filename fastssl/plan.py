"""``fastssl plan``: what a ``repro`` run of a preset costs on this device, before running it.

For every stage of the run (the one-image row, the full-data row, supervised, then the five
probes of each row, and DeepCluster's clusterings), the number of steps and images from the
recipe, the seconds per step timed over a few real steps on the device (the recipe's network,
batch, AMP, channels-last and compile settings, through the trainer; the one-image rows render
their batches, the labelled rows time the step on resident batches), the peak memory and the
estimated wall time; then the total.
"""

from __future__ import annotations

import resource
import tempfile
import time

import torch

from .config import build_for, load, to_dataclass, train_config
from .distributed import resolve_device
from .errors import FastSSLError
from .methods import pretext_methods
from .models import AlexNet
from .mono import MonoSource
from .probe import ProbeConfig, probe_method, probe_train_config
from .repro import random_rows
from .repro_distill import SOURCES, check_teacher
from .spec import AugmentSpec
from .train import Trainer


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's peak so far


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(trainer, make_batch, steps: int) -> float:
    """Seconds per step: one warm-up step (compile, allocator), then ``steps`` timed."""
    dev = trainer.device
    for m in trainer.method.nets.values():
        m.train()
    batch = make_batch()
    trainer.method.train_step(batch, trainer.ctx)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.method.train_step(make_batch(), trainer.ctx)
    _sync(dev)
    trainer.check_finite()
    return (time.perf_counter() - t0) / steps


def _trainer(method, cfg, folder):
    class _NoData:  # the timing feeds batches itself
        def __len__(self):
            return 1

    return Trainer(method, _NoData(), cfg, folder)


def plan(
    preset: str,
    *,
    method: str = "rotnet",
    device: str | None = None,
    overrides=None,
    steps: int = 3,
    train_images: int | None = None,
    image_rows: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """The stages of ``fastssl repro --preset PRESET --method METHOD`` with their estimated cost.

    ``image_rows``: the names of the run's rows trained on source images (default: the one
    one-image row; ``repro.image_row_names`` gives them for --image / --each-image /
    --n-images / --ablation). The first is timed, the others cost as much a step."""

    if method not in (*pretext_methods(), "distill"):
        raise FastSSLError(f"`method` {method}: choose one of {', '.join(pretext_methods())} or distill")
    if steps < 1:
        raise FastSSLError(f"`steps` must be >= 1, got {steps}")
    rc = load(preset, overrides, methods=(method, "supervised"))
    if method == "distill":
        check_teacher(rc)
    if device is not None:
        rc["device"] = device
    dev = resolve_device(rc["device"])
    res = int(rc["res"])
    n_mono = int(rc["mono"]["epoch_length"])
    n_train = int(train_images or n_mono)
    mono_kw = {k: v for k, v in rc["mono"].items() if k != "epoch_length"}
    stages = []

    def add(name, n_steps, images, sps, extra=None):
        stages.append(
            {
                "name": name,
                "steps": int(n_steps),
                "images": int(images),
                "peak_memory_bytes": _peak_bytes(dev),
                "seconds_per_step": round(sps, 6),  # enough digits that steps x it gives the estimate
                "estimated_seconds": round(n_steps * sps, 1),
                **(extra or {}),
            }
        )
        if progress:
            print(f"  {name:28s} {n_steps:9d} steps x {sps:8.3f} s = {n_steps * sps / 60:9.1f} min", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if method == "distill":  # repro_distill's rows: the teacher, then three students
            rows = [("teacher", "supervised", False), *((f"student-{s}", "distill", s != "full") for s in SOURCES)]
            ones = image_rows or ["student-mono"]
        else:
            ones = image_rows or [f"mono-{method}"]
            rows = [
                (f"mono-{method}", method, True),
                (f"full-{method}", method, False),
                ("supervised", "supervised", False),
            ]
        for row, name, mono in rows:
            cfg = train_config(rc, name, False, False)
            cfg.device = str(dev)
            n_items = n_mono if mono else n_train
            per_epoch = n_items // cfg.batch_size
            if cfg.steps_per_epoch:
                per_epoch = min(per_epoch, cfg.steps_per_epoch)
            torch.manual_seed(0)
            m = build_for(rc, name, 10 if name == "supervised" else None)
            t = _trainer(m, cfg, f"{tmp}/{row}")
            bs = cfg.batch_size
            k = m.batch_labels()
            labels = None
            if k:

                def labels(k=k, bs=bs):
                    return torch.randint(0, k, (bs,), device=dev)

            if mono:
                src = MonoSource(None, AugmentSpec(**mono_kw), batch_size=bs, epoch_length=10**9, device=dev)
                it = iter(range(10**9))

                def make(src=src, it=it, labels=labels):
                    return src.batch(next(it)), labels() if labels else None

                data = "rendered one-image batches"
            else:
                x = torch.randint(0, 256, (bs, 3, res, res), dtype=torch.uint8, device=dev)
                x = x.contiguous(memory_format=torch.channels_last)

                def make(x=x, labels=labels):
                    return x, labels() if labels else None

                data = "resident batches (loading not timed)"
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            sps = _time_steps(t, make, steps)
            names = ones if row in (f"mono-{method}", "student-mono") else [row]
            sps_c = m.epoch_start_seconds(t.ctx, n_items, res)  # DeepCluster: features and k-means
            for j, name in enumerate(names):  # the other source-image rows: the same step, not timed again
                add(
                    name,
                    cfg.epochs * per_epoch,
                    cfg.epochs * per_epoch * bs,
                    sps,
                    {"data": f"as {names[0]}" if j else data},
                )
                if sps_c:
                    add(f"{name} {m.epoch_start_name}", cfg.epochs, cfg.epochs * n_items, sps_c, {"data": "estimated"})
            if row == "teacher":  # the students time their steps with this (untrained) teacher
                t.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                t.save()
                rc["distill"]["settings"]["teacher"] = str(t.ckpt_path)
        if method == "distill":  # students are scored, not probed
            return _result(preset, method, dev, steps, stages)
        # probes: one run per row (random, the method's two, supervised)
        pcfg = to_dataclass(ProbeConfig, dict(rc["probe"]), "probe.")
        pm = probe_method(AlexNet(10, **rc["model"]), 1000 if res >= 128 else 10, pcfg, dev)
        probes = pm.nets["probes"]
        per_epoch = n_train // pcfg.batch_size
        if pcfg.steps_per_epoch:
            per_epoch = min(per_epoch, pcfg.steps_per_epoch)
        tcfg = probe_train_config(pcfg, dev, per_epoch)
        t = _trainer(pm, tcfg, f"{tmp}/probe")
        bs = pcfg.batch_size
        x = torch.randint(0, 256, (bs, 3, res, res), dtype=torch.uint8, device=dev).contiguous(
            memory_format=torch.channels_last
        )
        y = torch.randint(0, probes.fcs[0].out_features, (bs,), device=dev)
        sps = _time_steps(t, lambda: (x, y), steps)
        rows = len(random_rows(rc, method)) + len(ones) + 2  # random, source-image rows, full, supervised
        add(
            f"probes ({rows} rows)",
            rows * pcfg.epochs * per_epoch,
            rows * pcfg.epochs * per_epoch * bs,
            sps,
            {"data": "resident batches (loading not timed)", "rows": rows},
        )
    return _result(preset, method, dev, steps, stages)


def _result(preset, method, dev, steps, stages) -> dict:
    total = round(sum(s["estimated_seconds"] for s in stages), 1)
    return {
        "preset": preset,
        "method": method,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "timed_steps": steps,
        "stages": stages,
        "total_estimated_seconds": total,
    }

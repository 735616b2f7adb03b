"""``fastssl bench augment``: patches/s of the full paper chain, fastssl beside its peers.

Every side does the whole chain (initial crop, random-resized crop, rotation + shear, centre
crop, colour jitter p=0.5) on the same source image and gets the same cores:

- fastssl-numba: one process, ``T`` Numba threads (sampling included; the setup names Numba's
  threading layer: TBB where libtbb is installed, else OpenMP or Numba's own work queue);
- fastssl-torch: one process, ``T`` torch intra-op threads (sampling included);
- fastssl-dali: one process, DALI's CPU operators with ``T`` threads (sampling included);
- kornia: one process, ``T`` torch threads, batched;
- pil-chain (the paper's per-image generator), albumentations, torchvision-v2: single-threaded
  per image, so they run in ``T`` worker processes at once and their rates are added.

Peers that are not installed are listed as skipped, with the reason. Each side first makes one
warm-up batch (JIT, caches, allocator), then runs for ``seconds`` of wall time.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time

import numpy as np

from .kernels import BACKENDS, backend_class, unavailable
from .mono import MonoSource, Renderer
from .reference import pil_patch
from .spec import BLOCK, AugmentSpec, sample_params

BATCH = 256


# --------------------------------------------------------------------------- peers
def _albumentations_chain(spec, h, w):
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    cv2.setNumThreads(1)
    c = int(min(h, w) * spec.initial_crop) if spec.initial_crop else min(h, w)
    ops = [A.RandomCrop(c, c, p=1.0)] if spec.initial_crop else []
    ops += [
        # INTER_AREA when shrinking (antialiased, as the paper's PIL resize), bilinear when enlarging
        A.RandomResizedCrop(
            (spec.resized, spec.resized),
            scale=spec.scale,
            ratio=spec.ratio,
            interpolation=cv2.INTER_LINEAR,
            area_for_downscale="image",
            p=1.0,
        ),
        A.Affine(
            rotate=(-spec.rotation, spec.rotation),
            shear={"x": (-spec.shear, spec.shear), "y": (0, 0)},
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=1.0,
        ),
        A.CenterCrop(spec.size, spec.size, p=1.0),
        A.ColorJitter(
            brightness=spec.brightness,
            contrast=spec.contrast,
            saturation=spec.saturation,
            hue=spec.hue,
            p=spec.jitter_p,
        ),
    ]
    pipe = A.Compose(ops)
    return lambda img: pipe(image=img)["image"]


def _torchvision_chain(spec, h, w):
    import torch
    from torchvision.transforms import v2

    torch.set_num_threads(1)
    c = int(min(h, w) * spec.initial_crop) if spec.initial_crop else min(h, w)
    pipe = v2.Compose(
        [
            v2.RandomCrop(c),
            v2.RandomResizedCrop(spec.resized, scale=spec.scale, ratio=spec.ratio, antialias=True),
            v2.RandomAffine(degrees=spec.rotation, shear=(-spec.shear, spec.shear)),
            v2.CenterCrop(spec.size),
            v2.RandomApply(
                [v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)], p=spec.jitter_p
            ),
        ]
    )
    return lambda t: pipe(t)


def _pil_chain(spec, h, w):
    state = {"i": 0, "p": None}

    def one(pim):
        i = state["i"] % BLOCK
        if i == 0:  # parameters drawn a block at a time, as the fastssl sides draw a batch
            state["p"] = sample_params(spec, h, w, state["i"], state["i"] + BLOCK, seed=os.getpid())
        state["i"] += 1
        return pil_patch(pim, spec, state["p"], i)

    return one


PROCESS_PEERS = {
    "pil-chain": ("PIL", _pil_chain),
    "albumentations": ("albumentations", _albumentations_chain),
    "torchvision-v2": ("torchvision", _torchvision_chain),
}


def _peer_missing(module: str) -> str | None:
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        found = False
    return None if found else f"{module} is not installed"


def _process_worker(name, image, spec, seconds, barrier, queue):
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        h, w = image.shape[:2]
        fn = PROCESS_PEERS[name][1](spec, h, w)
        if name == "pil-chain":
            from PIL import Image

            src = Image.fromarray(image)
        elif name == "torchvision-v2":
            import torch

            src = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        else:
            src = image
        for _ in range(3):
            fn(src)  # warm-up
        barrier.wait()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(src)
            n += 1
        queue.put((n, time.perf_counter() - t0, None))
    except Exception as e:  # reported, not raised: one broken peer must not end the run
        with contextlib.suppress(Exception):
            barrier.abort()
        queue.put((0, 0.0, f"{type(e).__name__}: {e}"))


def _run_processes(name, image, spec, threads, seconds):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(threads)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(name, image, spec, seconds, barrier, queue)) for _ in range(threads)
    ]
    for p in procs:
        p.start()
    res = [queue.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    errs = [e for _, _, e in res if e]
    if errs:
        raise RuntimeError(errs[0])
    return sum(n / t for n, t, _ in res)


def kornia_runner(image, spec, threads, device="cpu", batch_size=BATCH):
    import kornia.augmentation as K
    import torch

    if threads:
        torch.set_num_threads(threads)
    h, w = image.shape[:2]
    c = int(min(h, w) * spec.initial_crop) if spec.initial_crop else min(h, w)
    # kornia crops per sample by warping a batch of full images; expanding the photo to a batch of
    # full-size copies is not practical, so the initial crop is folded into the RRC's area range
    # (same box-size distribution) and the RRC runs on one shared image; kornia's RRC does not
    # low-pass filter, so this peer does less work than the chain (no antialiasing).
    frac = (c * c) / (h * w)
    src = torch.from_numpy(image).to(device).permute(2, 0, 1).float().div(255).unsqueeze(0)
    pipe = torch.nn.Sequential(
        K.RandomResizedCrop(
            (spec.resized, spec.resized), scale=(spec.scale[0] * frac, spec.scale[1] * frac), ratio=spec.ratio
        ),
        K.RandomAffine(degrees=spec.rotation, shear=(-spec.shear, spec.shear, 0.0, 0.0), p=1.0),
        K.CenterCrop(spec.size),
        K.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue, p=spec.jitter_p),
    ).to(device)

    def batch():
        with torch.no_grad():
            return pipe(src.expand(batch_size, -1, -1, -1)).mul(255).round().to(torch.uint8)

    return batch, batch_size


def _fastssl_runner(image, spec, threads, backend):
    src = MonoSource(image, spec, backend=backend, batch_size=BATCH, threads=threads, epoch_length=10**9)
    state = {"step": 0}

    def batch():
        state["step"] += 1
        return src.batch(state["step"])

    return batch, BATCH


def _run_in_process(make, seconds):
    fn, per = make()
    fn()  # warm-up: JIT / caches
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += per
    return n / (time.perf_counter() - t0)


def bench_augment(image: np.ndarray, size: int, threads: int, seconds: float = 3.0, only=None, log=print) -> dict:
    """One size, every side; returns the JSON-ready dict."""

    spec = AugmentSpec(size=size)
    sides = [  # every registered backend, then the peers
        *((f"fastssl-{b}", b, "backend", lambda b=b: _fastssl_runner(image, spec, threads, b)) for b in BACKENDS),
        ("pil-chain", "PIL", "process", None),
        ("albumentations", "albumentations", "process", None),
        ("torchvision-v2", "torchvision", "process", None),
        ("kornia", "kornia", "thread", lambda: kornia_runner(image, spec, threads)),
    ]
    results, skipped = [], []
    for name, module, how, make in sides:
        if only and name not in only:
            continue
        why = unavailable(module, "cpu") if how == "backend" else _peer_missing(module)
        if why:
            skipped.append({"name": name, "reason": why})
            log(f"  {name:16s} skipped: {why}")
            continue
        try:
            if how == "process":
                rate = _run_processes(name, image, spec, threads, seconds)
                setup = f"{threads} processes x 1 thread"
            else:
                rate = _run_in_process(make, seconds)
                setup = f"1 process x {threads} threads"
                if how == "backend" and (how_run := backend_class(module).describe()):  # e.g. Numba's threading layer
                    setup += f", {how_run}"
        except Exception as e:  # a peer that breaks is reported, not fatal
            skipped.append({"name": name, "reason": f"failed: {e}"})
            log(f"  {name:16s} failed: {e}")
            continue
        results.append({"name": name, "patches_per_s": round(rate, 1), "setup": setup})
        log(f"  {name:16s} {rate:12.1f} patches/s  ({setup})")
    return {"size": size, "threads": threads, "seconds": seconds, "results": results, "skipped": skipped}


def format_table(run: dict) -> str:
    ref = next((r["patches_per_s"] for r in run["results"] if r["name"] == "fastssl-numba"), None)
    lines = [f"S={run['size']}  threads={run['threads']}", f"  {'name':16s} {'patches/s':>12s} {'vs numba':>9s}  setup"]
    for r in sorted(run["results"], key=lambda r: -r["patches_per_s"]):
        ratio = f"{r['patches_per_s'] / ref:8.3f}x" if ref else "       -"
        lines.append(f"  {r['name']:16s} {r['patches_per_s']:12.1f} {ratio}  {r['setup']}")
    for s in run["skipped"]:
        lines.append(f"  {s['name']:16s} {'-':>12s} {'-':>9s}  skipped: {s['reason']}")
    peers = [r["patches_per_s"] for r in run["results"] if not r["name"].startswith("fastssl")]
    if ref and peers:
        lines.append(f"  fastssl-numba / fastest peer = {ref / max(peers):.2f}x")
    if ref:
        mpix = ref * run["size"] ** 2 / run["threads"] / 1e6
        lines.append(f"  fastssl-numba = {mpix:.0f} Mpix/s per core (output pixels, sampling included)")
    return "\n".join(lines)


def profile_numba(image: np.ndarray, size: int, threads: int, batches: int = 20) -> dict:
    """Per-stage wall time of the CPU path: sampling, warp only, warp + colour jitter."""
    import dataclasses

    spec = AugmentSpec(size=size)
    rend = Renderer(image, spec, "numba", "cpu", threads)
    out = np.empty((BATCH, size, size, 3), np.uint8)
    rend.render_numpy(rend.params(0, BATCH), out)  # JIT
    t = {"sample": 0.0, "warp": 0.0, "warp+colour": 0.0}
    for b in range(batches):
        t0 = time.perf_counter()
        p = rend.params(b * BATCH, (b + 1) * BATCH)
        t1 = time.perf_counter()
        rend.render_numpy(dataclasses.replace(p, jitter=np.zeros_like(p.jitter)), out)
        t2 = time.perf_counter()
        rend.render_numpy(p, out)
        t3 = time.perf_counter()
        t["sample"] += t1 - t0
        t["warp"] += t2 - t1
        t["warp+colour"] += t3 - t2
    n = batches * BATCH
    us = {k: v / n * 1e6 for k, v in t.items()}
    return {
        "size": size,
        "threads": rend.threads,
        "us_per_patch": {k: round(v, 2) for k, v in us.items()},
        "colour_share": round(1 - us["warp"] / us["warp+colour"], 3),
        "mpix_per_s_per_thread_warp": round(size * size / us["warp"] / rend.threads, 1),
    }


def profile_torch(
    image: np.ndarray,
    size: int,
    threads: int,
    backend: str = "torch",
    device="cpu",
    batches: int = 5,
    top: int = 12,
    batch: int = BATCH,
) -> dict:
    """torch.profiler over a few batches of a torch-side backend: the ops where the time goes
    (on a GPU by device time: the kernels)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .bench_train import top_ops

    src = MonoSource(
        image,
        AugmentSpec(size=size),
        backend=backend,
        batch_size=batch,
        device=device,
        threads=threads,
        epoch_length=10**9,
    )
    src.batch(0)  # warm-up
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=acts) as prof:
        for b in range(1, batches + 1):
            src.batch(b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    return {
        "size": size,
        "backend": backend,
        "device": str(device),
        "batch": batch,
        "top_ops": top_ops(prof, ProfilerActivity.CUDA in acts, top, batches),
    }

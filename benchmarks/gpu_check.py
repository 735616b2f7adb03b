"""The GPU check: one command, a JSON report and a table (issue 5).

    python benchmarks/gpu_check.py --json gpu_check.json              # on a CUDA machine (< 4 min on an H100)
    python benchmarks/gpu_check.py --device cpu --json dry.json       # the same logic on the CPU, tiny sizes

Measures, on one device:
1. augmentation: patches/s of the full paper chain for each backend present (dali, torch; kornia
   when installed) at S = 64 and 224, batch 256, the pyramid resident on the device;
2. training: AlexNet RotNet steps/s at 224 px (batch 128 -> 512 rotated images), eager fp32
   (NCHW) vs channels-last + bf16 autocast + torch.compile;
3. data wait: the share of a compiled bf16 RotNet step spent producing its batch, per backend
   (the source runs in the training loop, no prefetch thread).

It needs only torch and this repository (plus DALI / kornia when present): on the device
machine run it from the repository root without installing fastssl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _plain_checkout_imports() -> None:
    """Make ``import fastssl`` work from a checkout that was never pip-installed (the device
    machine): the repository root on sys.path, and ``kernels/`` registered as
    ``fastssl.kernels`` (pyproject's package-dir does that mapping for an installed copy)."""
    import importlib.util

    sys.path.insert(0, str(ROOT))
    if importlib.util.find_spec("fastssl.kernels") is None:
        spec = importlib.util.spec_from_file_location(
            "fastssl.kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["fastssl.kernels"] = mod
        spec.loader.exec_module(mod)


_plain_checkout_imports()


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev, seconds, warmup=2):
    for _ in range(warmup):
        fn()
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync(dev)
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def augment(dev, sizes, batch, seconds, image, backends):
    from fastssl import AugmentSpec, MonoSource

    rows = []
    for S in sizes:
        for be in backends:
            if be == "kornia":
                rows.append(_kornia(dev, S, batch, seconds, image))
                continue
            try:
                src = MonoSource(
                    image, AugmentSpec(size=S), backend=be, batch_size=batch, device=dev, epoch_length=10**9
                )
            except Exception as e:  # reported, not fatal
                rows.append({"backend": be, "size": S, "error": str(e).splitlines()[0]})
                continue
            state = {"i": 0}

            def one(src=src, state=state):
                state["i"] += 1
                return src.batch(state["i"])

            rate = _timed(one, dev, seconds) * batch
            rows.append({"backend": be, "size": S, "patches_per_s": round(rate, 1)})
            print(f"  augment {be:7s} S={S:4d}: {rate:12.0f} patches/s", flush=True)
    return rows


def _kornia(dev, S, batch, seconds, image):
    try:
        import kornia  # noqa: F401
    except ImportError:
        return {"backend": "kornia", "size": S, "error": "kornia is not installed"}
    from fastssl.bench import _kornia_runner
    from fastssl.image import load_image
    from fastssl.spec import AugmentSpec

    one, _ = _kornia_runner(load_image(image), AugmentSpec(size=S), None, dev, batch)
    rate = _timed(one, dev, seconds) * batch
    print(f"  augment kornia  S={S:4d}: {rate:12.0f} patches/s", flush=True)
    return {"backend": "kornia", "size": S, "patches_per_s": round(rate, 1), "note": "no antialiasing"}


def _rotnet(dev, res, small, compiled, bf16, channels_last):
    from fastssl.methods.rotnet import four_rotations
    from fastssl.models import AlexNet

    torch.manual_seed(0)
    model = AlexNet(4, small=small, input_res=res, width=1.0 if not small else 0.25).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    fwd = torch.compile(model) if compiled else model
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def step(x):
        xr, y = four_rotations(x)
        xr = xr.contiguous(memory_format=fmt)
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else torch.autocast(dev.type, enabled=False)
        with ctx:
            loss = torch.nn.functional.cross_entropy(fwd(xr), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def training(dev, res, small, batch, seconds):
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=dev)
    rows = []
    for name, kw in (
        ("eager-fp32", dict(compiled=False, bf16=False, channels_last=False)),
        ("compiled-bf16-channels-last", dict(compiled=True, bf16=dev.type == "cuda", channels_last=True)),
    ):
        step = _rotnet(dev, res, small, **kw)
        t0 = time.perf_counter()
        step(x.contiguous(memory_format=torch.channels_last))  # compile / warm-up
        _sync(dev)
        warm = time.perf_counter() - t0
        rate = _timed(lambda step=step: step(x.contiguous(memory_format=torch.channels_last)), dev, seconds)
        rows.append(
            {
                "config": name,
                "res": res,
                "batch": batch,
                "images_per_step": 4 * batch,
                "steps_per_s": round(rate, 2),
                "images_per_s": round(rate * 4 * batch, 1),
                "first_step_s": round(warm, 1),
            }
        )
        print(
            f"  train {name:28s}: {rate:8.2f} steps/s ({rate * 4 * batch:10.0f} img/s), first step {warm:.1f} s",
            flush=True,
        )
    rows.append({"speedup": round(rows[1]["steps_per_s"] / rows[0]["steps_per_s"], 2)})
    return rows


def data_wait(dev, res, small, batch, steps, image, backends):
    from fastssl import AugmentSpec, MonoSource

    step = _rotnet(dev, res, small, compiled=True, bf16=dev.type == "cuda", channels_last=True)
    rows = []
    for be in backends:
        try:
            src = MonoSource(image, AugmentSpec(size=res), backend=be, batch_size=batch, device=dev, epoch_length=10**9)
        except Exception as e:
            rows.append({"backend": be, "error": str(e).splitlines()[0]})
            continue
        step(src.batch(0))  # warm-up, compile
        _sync(dev)
        t_data = t_all = 0.0
        for i in range(1, steps + 1):
            t0 = time.perf_counter()
            x = src.batch(i)
            _sync(dev)
            t1 = time.perf_counter()
            step(x)
            _sync(dev)
            t_data += t1 - t0
            t_all += time.perf_counter() - t0
        share = t_data / t_all
        rows.append({"backend": be, "res": res, "steps": steps, "data_wait_share": round(share, 4)})
        print(f"  data wait {be:7s}: {100 * share:6.2f}% of a compiled step", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the same logic)")
    ap.add_argument("--json", default="gpu_check.json")
    ap.add_argument("--image", default=None, help="source image (default: the built-in photo)")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement (default 4 on GPU, 0.5 on CPU)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available; use --device cpu for a dry run", file=sys.stderr)
        return 2
    gpu = dev.type == "cuda"
    seconds = args.seconds or (4.0 if gpu else 0.5)
    from fastssl.mono import backend_available

    backends = [
        b for b in (["dali", "torch"] if gpu else ["numba", "torch", "dali"]) if backend_available(b, dev) is None
    ] + ["kornia"]
    name = torch.cuda.get_device_name(dev) if gpu else "cpu"
    print(f"gpu_check on {name}; backends {backends}", flush=True)
    t0 = time.perf_counter()
    report = {"device": name, "torch": torch.__version__, "backends": backends}
    try:
        import nvidia.dali

        report["dali"] = nvidia.dali.__version__
    except ImportError:
        report["dali"] = None
    sizes = [64, 224] if gpu else [16, 32]
    report["augment"] = augment(dev, sizes, 256 if gpu else 32, seconds, args.image, backends)
    res, small, batch = (224, False, 128) if gpu else (32, True, 8)
    report["train"] = training(dev, res, small, batch, seconds)
    report["data_wait"] = data_wait(
        dev, res, small, batch, 20 if gpu else 3, args.image, [b for b in backends if b != "kornia"]
    )
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(f"wrote {args.json} in {report['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

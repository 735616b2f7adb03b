"""The GPU check: one command, a JSON report and a table.

    python benchmarks/gpu_check.py --json gpu_check.json              # on a CUDA machine (< 4 min on an H100)
    python benchmarks/gpu_check.py --device cpu --json dry.json       # the same logic on the CPU, tiny sizes

Measures, on one device (each section's figures are written to the JSON as soon as it ends, so
a timeout or a failing section leaves the others' figures):
0. sampler: patches/s of the host-side parameter sampler alone, the cap every backend shares;
1. augment: patches/s of the full paper chain for each backend present (dali at batches 256
   and 2048; torch compiled and eager at 2048, since every new shape costs the compiled form a
   compile; kornia at 256 when installed) at S = 64 and 224, the pyramid resident on the device;
   synchronised every 8 batches, so host and device work overlap as in a training loop;
2. train: AlexNet RotNet steps/s at 224 px (batch 128 -> 512 rotated images), eager fp32
   (NCHW) vs channels-last + bf16 autocast + torch.compile;
3. data wait: the share of a compiled bf16 RotNet step spent producing its batch, per backend
   (the source runs in the training loop, no prefetch thread);
then the engine's GPU targets, met or not, and a Markdown table.

It needs torch and an installed fastssl (``pip install --no-deps --no-build-isolation -e .``
installs it without a package index), plus DALI / kornia when present.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import torch

TARGETS = {"patches_per_s": {64: 1_000_000, 224: 100_000}, "data_wait_share": 0.05, "speedup": 2.0}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev, seconds, warmup=2):
    """Calls per second of ``fn``, synchronised once per second of work, not after every call,
    so a source whose host work overlaps the device's (as in a training loop) is timed as such."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n % 8 == 0 or dev.type != "cuda":
            _sync(dev)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return n / dt


def sampler(sizes, batch, seconds, h, w):
    """Host-side cap: patches/s of the parameter sampler alone (every backend pays it)."""
    from fastssl import AugmentSpec
    from fastssl.spec import sample_params

    rows = []
    for S in sizes:
        spec, state = AugmentSpec(size=S), {"i": 0}

        def one(spec=spec, state=state):
            state["i"] += 1
            a = state["i"] * batch
            return sample_params(spec, h, w, a, a + batch).level_matrix()

        rate = _timed(one, torch.device("cpu"), seconds) * batch
        rows.append({"size": S, "batch": batch, "patches_per_s": round(rate, 1)})
        print(f"  sampler          S={S:4d} batch={batch:5d}: {rate:12.0f} patches/s (host)", flush=True)
    return rows


def augment(dev, sizes, batches, seconds, image, backends):
    from fastssl import AugmentSpec, MonoSource

    rows = []
    for S in sizes:
        for be in backends:
            for batch in batches:
                if be == "kornia":
                    if batch == batches[0]:  # kornia warps the whole photo per sample: memory-bound
                        rows.append(_kornia(dev, S, batch, seconds, image))
                    continue
                if be in ("torch", "torch-eager") and batch != batches[-1]:
                    continue  # torch at the largest batch only: each new shape costs a compile
                row = {"backend": be, "size": S, "batch": batch}
                kw = {"backend": "torch", "compile": False} if be == "torch-eager" else {"backend": be}
                try:
                    src = MonoSource(
                        image, AugmentSpec(size=S), batch_size=batch, device=dev, epoch_length=10**12, **kw
                    )
                    state = {"i": 0}

                    def one(src=src, state=state):
                        state["i"] += 1
                        return src.batch(state["i"])

                    rate = _timed(one, dev, seconds) * batch
                except Exception as e:  # reported, not fatal: the other rows still run
                    row["error"] = _error(e)
                    print(f"  augment {be:8s} S={S:4d} batch={batch:5d}: {row['error']}", flush=True)
                    rows.append(row)
                    continue
                row["patches_per_s"] = round(rate, 1)
                rows.append(row)
                print(f"  augment {be:8s} S={S:4d} batch={batch:5d}: {rate:12.0f} patches/s", flush=True)
    return rows


def _kornia(dev, S, batch, seconds, image):
    row = {"backend": "kornia", "size": S, "batch": batch, "note": "no antialiasing"}
    try:
        import kornia  # noqa: F401
    except ImportError:
        return {**row, "error": "kornia is not installed"}
    from fastssl.bench import kornia_runner
    from fastssl.spec import AugmentSpec

    try:
        one, _ = kornia_runner(image, AugmentSpec(size=S), None, dev, batch)
        rate = _timed(one, dev, seconds) * batch
    except Exception as e:  # e.g. out of memory: kornia expands the photo to the batch
        return {**row, "error": _error(e)}
    print(f"  augment kornia   S={S:4d} batch={batch:5d}: {rate:12.0f} patches/s", flush=True)
    return {**row, "patches_per_s": round(rate, 1)}


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


def training(dev, res, small, batch, seconds, steps):
    """Eager fp32 NCHW vs compiled bf16 channels-last; ``steps`` gets the compiled step."""
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=dev)
    x = x.contiguous(memory_format=torch.channels_last)  # the batch contract
    rows = []
    for name, kw in (
        ("eager-fp32", dict(compiled=False, bf16=False, channels_last=False)),
        ("compiled-bf16-channels-last", dict(compiled=True, bf16=dev.type == "cuda", channels_last=True)),
    ):
        step = _rotnet(dev, res, small, **kw)
        t0 = time.perf_counter()
        step(x)  # compile / warm-up
        _sync(dev)
        warm = time.perf_counter() - t0
        rate = _timed(lambda step=step: step(x), dev, seconds)
        steps[name] = step
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


def data_wait(dev, res, batch, steps, image, backends, step):
    """Share of a training step spent producing its batch (the source runs in the loop)."""
    from fastssl import AugmentSpec, MonoSource

    rows = []
    for be in backends:
        try:
            src = MonoSource(
                image, AugmentSpec(size=res), backend=be, batch_size=batch, device=dev, epoch_length=10**12
            )
            step(src.batch(0))  # warm-up
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
        except Exception as e:
            rows.append({"backend": be, "error": _error(e)})
            continue
        share = t_data / t_all
        rows.append({"backend": be, "res": res, "steps": steps, "data_wait_share": round(share, 4)})
        print(f"  data wait {be:7s}: {100 * share:6.2f}% of a compiled step", flush=True)
    return rows


def verdicts(report) -> list[dict]:
    """Each GPU target against the best measured figure."""
    out = []
    aug = [r for r in report.get("augment", []) if isinstance(r, dict) and "patches_per_s" in r]
    for be in ("dali", "torch"):
        for S, target in TARGETS["patches_per_s"].items():
            got = max((r["patches_per_s"] for r in aug if r["backend"] == be and r["size"] == S), default=None)
            out.append(
                {
                    "what": f"{be} patches/s at S={S}",
                    "target": f">= {target:,}",
                    "got": got,
                    "met": got is not None and got >= target,
                }
            )
    for r in report.get("data_wait", []):
        if isinstance(r, dict) and "data_wait_share" in r:
            got = r["data_wait_share"]
            out.append(
                {
                    "what": f"data wait, {r['backend']}",
                    "target": f"< {TARGETS['data_wait_share']:.0%}",
                    "got": got,
                    "met": got < TARGETS["data_wait_share"],
                }
            )
    sp = [r["speedup"] for r in report.get("train", []) if isinstance(r, dict) and "speedup" in r]
    if sp:
        out.append(
            {
                "what": "compiled bf16 channels-last / eager fp32",
                "target": f">= {TARGETS['speedup']}x",
                "got": sp[0],
                "met": sp[0] >= TARGETS["speedup"],
            }
        )
    return out


def table(report) -> str:
    lines = [f"gpu_check on {report['device']} (torch {report['torch']}, DALI {report['dali']})", ""]
    lines += ["| backend | S | batch | patches/s |", "| --- | --- | --- | --- |"]
    for r in report.get("sampler", []):
        if "patches_per_s" in r:
            lines.append(f"| sampler (host) | {r['size']} | {r['batch']} | {r['patches_per_s']:,.0f} |")
    for r in report.get("augment", []):
        if isinstance(r, dict) and "backend" in r:
            val = f"{r['patches_per_s']:,.0f}" if "patches_per_s" in r else r.get("error", "")
            lines.append(f"| {r['backend']} | {r['size']} | {r.get('batch', '')} | {val} |")
    lines += ["", "| target | wanted | measured | met |", "| --- | --- | --- | --- |"]
    for v in report.get("verdict", []):
        lines.append(f"| {v['what']} | {v['target']} | {v['got']} | {'yes' if v['met'] else 'no'} |")
    errors = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    if errors:
        lines += ["", "sections that failed: " + ", ".join(f"{k} ({report[k]['error']})" for k in errors)]
    return "\n".join(lines)


def _error(e: Exception) -> str:
    """An exception as one line for the report."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the same logic)")
    ap.add_argument("--json", default="gpu_check.json")
    ap.add_argument("--image", default=None, help="source image (default: the built-in photo)")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement (default 2 on GPU, 0.5 on CPU)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available; use --device cpu for a dry run", file=sys.stderr)
        return 2
    from fastssl.image import load_image
    from fastssl.mono import backend_available
    from fastssl.report import write_json

    gpu = dev.type == "cuda"
    seconds = args.seconds or (2.0 if gpu else 0.5)
    image = load_image(args.image)
    candidates = ["dali", "torch"] if gpu else ["numba", "torch", "dali"]
    backends = [b for b in candidates if backend_available(b, dev) is None]
    name = torch.cuda.get_device_name(dev) if gpu else "cpu"
    print(f"gpu_check on {name}; backends {backends} (+ kornia if installed)", flush=True)
    t0 = time.perf_counter()
    report = {"device": name, "torch": torch.__version__, "backends": backends}
    report["missing"] = {b: backend_available(b, dev) for b in candidates if b not in backends}
    try:
        import nvidia.dali

        report["dali"] = nvidia.dali.__version__
    except ImportError:
        report["dali"] = None
    sizes = [64, 224] if gpu else [16, 32]
    res, small, batch = (224, False, 128) if gpu else (32, True, 8)
    steps = {}
    sections = [
        ("sampler", lambda: sampler(sizes, 2048 if gpu else 256, seconds, *image.shape[:2])),
        (
            "augment",
            lambda: augment(
                dev, sizes, [256, 2048] if gpu else [32], seconds, image, backends + ["torch-eager", "kornia"]
            ),
        ),
        ("train", lambda: training(dev, res, small, batch, seconds, steps)),
        (
            "data_wait",
            lambda: data_wait(dev, res, batch, 20 if gpu else 3, image, backends, steps["compiled-bf16-channels-last"]),
        ),
    ]
    for key, run in sections:
        try:
            report[key] = run()
        except Exception as e:  # one failed section must not cost the others' figures
            traceback.print_exc()
            report[key] = {"error": _error(e)}
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        write_json(args.json, report)  # after every section: a timeout still leaves the figures so far
    report["verdict"] = verdicts(report)
    write_json(args.json, report)
    print(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {args.json} in {report['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

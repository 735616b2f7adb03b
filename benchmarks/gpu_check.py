"""The GPU check: one command, a JSON report and a table.

    python benchmarks/gpu_check.py --json gpu_check.json              # on a CUDA machine (< 8 min)
    python benchmarks/gpu_check.py --device cpu --json dry.json       # the same logic on the CPU, tiny sizes

Measures, on one device, cheapest sections first (each section's figures are written to the JSON
as soon as it ends, so a timeout or a failing section leaves the others' figures; a section
whose estimate no longer fits in ``--budget`` is skipped, not started):
0. environment: device, driver, CUDA, and the ceilings measured here: the bf16 matrix-product
   rate (8192^3, random data; the peak MFU is taken against) and the device-to-device copy rate;
1. sampler: patches/s of the host-side parameter sampler alone, the cap every backend shares;
2. augment: patches/s of the full paper chain for each backend present (dali at batches 256
   and 2048; torch compiled and eager at 2048, since every new shape costs the compiled form a
   compile; kornia at 256 when installed) at S = 64 and 224, the pyramid resident on the device;
   synchronised every 8 batches, so host and device work overlap as in a training loop;
   then where the torch backend's time goes at each size (torch.profiler, batch 2048: its top
   kernels by device time, section ``profile``);
3. train: ``fastssl bench train`` rows of RotNet at the paper's shapes (224 px, batch 192 x 4
   rotations) on the one-image stream, through the trainer: eager fp32 NCHW, eager bf16
   channels-last, compiled bf16 channels-last; images/s, the step's split, data-wait share, MFU;
4. methods: the same rows for DeepCluster, BiGAN (64 px), supervised and the probes (batches
   held on the device: FFCV is a CPU-host loader) and distill (paper-distill), eager bf16;
5. plan: ``fastssl plan --preset paper`` for RotNet, DeepCluster and BiGAN with step times
   measured here: the hours of one paper row and of the whole table;
6. clustering: one DeepCluster clustering of 1,281,167 one-image patches at 224 px (features,
   PCA to 256, k-means with k = 10,000), timed;
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
from dataclasses import asdict

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
                if be in ("torch", "torch-eager"):
                    # the device's own rate: four batches sampled beforehand, rendered in turn (the
                    # gap to the row's rate is the host's sampling, where it does not overlap)
                    held = [src.params(k) for k in range(1, 5)]
                    turn = {"i": 0}

                    def render(src=src, held=held, turn=turn):
                        turn["i"] += 1
                        return src.renderer.render(held[turn["i"] % 4])

                    row["render_only_patches_per_s"] = round(_timed(render, dev, seconds / 2) * batch, 1)
                rows.append(row)
                alone = row.get("render_only_patches_per_s")
                only = f" (rendering alone {alone:.0f})" if alone else ""
                print(f"  augment {be:8s} S={S:4d} batch={batch:5d}: {rate:12.0f} patches/s{only}", flush=True)
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


def profile(dev, sizes, image, batch):
    """The torch backend's top ops by device time (CPU time on the CPU), per size: which
    kernel holds the chain below its target."""
    from fastssl.bench import profile_torch

    rows = []
    for S in sizes:
        try:
            r = profile_torch(image, S, torch.get_num_threads(), "torch", str(dev), batches=3, top=10, batch=batch)
        except Exception as e:  # reported, not fatal
            r = {"size": S, "error": _error(e)}
            print(f"  profile torch S={S:4d}: {r['error']}", flush=True)
        else:
            head = ", ".join(f"{o['op'][:40]} {100 * o['share']:.0f}%" for o in r["top_ops"][:3])
            print(f"  profile torch S={S:4d} batch={batch}: {head}", flush=True)
        rows.append(r)
    return rows


# --------------------------------------------------------------------------- environment
def environment(dev, seconds):
    """The device and the ceilings MFU and bandwidth are taken against, measured here."""
    from fastssl.bench_train import matmul_peak
    from fastssl.machine import describe

    out = {"machine": describe(dev), "matmul_peak": matmul_peak(dev, seconds=seconds)}
    if dev.type == "cuda":  # device-to-device copy: bytes read + written per second
        a = torch.empty(2**30, dtype=torch.uint8, device=dev).random_()
        b = torch.empty_like(a)
        b.copy_(a)
        _sync(dev)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 2:
            for _ in range(8):
                b.copy_(a)
            n += 8
            _sync(dev)
        out["copy_tb_per_s"] = round(2 * a.numel() * n / (time.perf_counter() - t0) / 1e12, 2)
        del a, b
    m = out["machine"]
    where = f"{m.get('gpu', m['cpu'])}" + (f", driver {m['gpu_driver']}, CUDA {m['cuda']}" if "gpu" in m else "")
    print(f"  {where}: {out['matmul_peak']['tflops']} TFLOP/s bf16 matmul peak", flush=True)
    return out


# --------------------------------------------------------------------------- training steps
def bench_rows(rows, setups, peak):
    """``fastssl bench train`` rows, in this process (the compile is warm for later sections)."""
    from fastssl.bench_train import format_row, run_row

    out = []
    for row, setup in rows:
        try:
            r = run_row(row, {**setups[setup], "peak_tflops": peak})
        except Exception as e:  # one broken row must not cost the others
            r = {**asdict(row), "error": _error(e)}
        r["recipe"] = setup
        out.append(r)
        print(format_row(r), flush=True)
    return out


def training(setups, peak):
    """RotNet at the paper's shapes (224 px, batch 192 x 4 rotations) on the one-image stream,
    through the trainer: eager fp32 NCHW, eager bf16 channels-last, compiled bf16 channels-last."""
    from fastssl.bench_train import Row

    rows = [
        (Row("rotnet", "off", "off", "contiguous"), "paper"),
        (Row("rotnet", "off", "bf16", "channels_last"), "paper"),
        (Row("rotnet", "on", "bf16", "channels_last"), "paper"),
    ]
    out = bench_rows(rows, setups, peak)
    ok = [r for r in out if "error" not in r]
    if len(ok) == 3:
        out.append(
            {
                "speedup": round(ok[0]["ms_per_step"] / ok[2]["ms_per_step"], 2),  # per step, data wait included
                "speedup_compute": round(_compute_ms(ok[0]) / _compute_ms(ok[2]), 2),
                "compile_gain_bf16": round(ok[1]["ms_per_step"] / ok[2]["ms_per_step"], 2),
            }
        )
    return out


def _compute_ms(r):
    return r["ms"]["forward"] + r["ms"]["backward"] + r["ms"]["optimiser"]


def methods(setups, peak):
    """Every other method at its paper shapes, eager bf16 channels-last (a compile each would
    cost this check minutes): images/s, step split and MFU. Supervised training and the probes
    run on batches held on the device (FFCV reads the .beton on a CPU host: not timed here)."""
    from fastssl.bench_train import Row

    rows = [
        (Row("deepcluster", "off", "bf16", "channels_last"), "paper-dc"),
        (Row("bigan", "off", "bf16", "channels_last"), "paper-bigan"),
        (Row("supervised", "off", "bf16", "channels_last", "resident"), "paper"),
        (Row("probe", "off", "bf16", "channels_last", "resident"), "paper"),
        (Row("distill", "off", "bf16", "channels_last"), "paper-distill"),
    ]
    return bench_rows(rows, setups, peak)


# --------------------------------------------------------------------------- plan
def plans(dev, recipes, compile_gain):
    """``fastssl plan`` of each paper row with step times measured here (eager bf16: no compile
    in this check), and the whole table: every method's two rows, supervised once, the probes of
    every distinct row. ``compile_gain``: RotNet's measured compiled / eager bf16 step ratio,
    which gives the compiled estimate beside the measured one."""
    from fastssl.plan import plan

    out = {"methods": {}}
    table = {"pretraining_s": 0.0, "probe_rows": 0}
    for m in ("rotnet", "deepcluster", "bigan"):
        preset, ov = recipes[m]
        res = plan(preset, method=m, device=str(dev), overrides=[*ov, "train.compile=off"], steps=3, progress=False)
        st = res["stages"]
        probes = st[-1]
        rows = probes["rows"]
        per_probe = probes["estimated_seconds"] / rows
        own = sum(s["estimated_seconds"] for s in st if s["name"].startswith(("mono-", "full-")))
        sup = next(s for s in st if s["name"] == "supervised")["estimated_seconds"]
        mono = sum(s["estimated_seconds"] for s in st if s["name"].startswith("mono-"))
        out["methods"][m] = {
            "plan": res,
            "row_hours": round((mono + per_probe) / 3600, 2),  # pretraining + its probes (conv1-conv5 at once)
            "total_hours": round(res["total_estimated_seconds"] / 3600, 2),
            "total_s": res["total_estimated_seconds"],
        }
        table["pretraining_s"] += own + per_probe * (rows - 1)  # its rows' training and probes
        table["supervised_s"] = sup + per_probe
        print(
            f"  plan {m:11s}: one-image row {out['methods'][m]['row_hours']:8.2f} h, "
            f"its repro {out['methods'][m]['total_hours']:8.2f} h",
            flush=True,
        )
    whole = table["pretraining_s"] + table.get("supervised_s", 0.0)
    out["table_s"], out["table_hours"] = round(whole, 1), round(whole / 3600, 2)
    if compile_gain:
        out["compile_gain_bf16"] = compile_gain
        out["table_hours_compiled_estimate"] = round(whole / compile_gain / 3600, 2)
    print(f"  plan whole table: {out['table_hours']:.2f} h eager bf16", flush=True)
    return out


# --------------------------------------------------------------------------- clustering
def clustering(dev, n, k, preset, overrides):
    """One DeepCluster clustering of the paper's fixed dataset: ``n`` one-image patches rendered
    by index, AlexNet features, PCA to 256, whitening, L2, then k-means with k clusters, as
    DeepCluster's epoch start runs it on the device."""
    from fastssl.config import build_for, load, train_config
    from fastssl.data.prepare import fixed_dataset
    from fastssl.train import Trainer

    rc = load(preset, [*overrides, f"mono.epoch_length={n}", f"deepcluster.settings.k={k}"], methods=("deepcluster",))
    rc["device"] = str(dev)
    cfg = train_config(rc, "deepcluster", False, False)
    cfg.compile, cfg.progress = "off", False
    t0 = time.perf_counter()
    data = fixed_dataset(rc, cfg, progress=False)
    t_params = time.perf_counter() - t0
    torch.manual_seed(0)
    method = build_for(rc, "deepcluster")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(method, data, cfg, tmp)
        _sync(dev)
        t0 = time.perf_counter()
        method.on_epoch_start(0, tr.ctx)
        _sync(dev)
        total = time.perf_counter() - t0
        rec = json.loads((tr.out / "metrics.jsonl").read_text().splitlines()[-1])
    out = {
        "n": n,
        "k": k,
        "res": int(rc["res"]),
        "pca_dim": method.pca_dim,
        "iters": method.iters,
        "seconds_params": round(t_params, 2),
        "seconds_features": rec["seconds_features"],
        "seconds_kmeans": rec["seconds_kmeans"],
        "seconds_total": round(total, 2),
        "clusters_used": rec["clusters_used"],
        "largest_cluster": rec["largest_cluster"],
    }
    print(
        f"  clustering {n} x {out['res']} px, k={k}: features+PCA {out['seconds_features']:.1f} s, "
        f"k-means ({out['iters']} iters) {out['seconds_kmeans']:.1f} s, total {total:.1f} s",
        flush=True,
    )
    return out


def verdicts(report) -> list[dict]:
    """Each GPU target against the best measured figure."""
    out = []

    def add(what, target, got, met):
        out.append({"what": what, "target": target, "got": got, "met": got is not None and met})

    aug = [r for r in report.get("augment", []) if isinstance(r, dict) and "patches_per_s" in r]
    for be in ("dali", "torch"):
        for S, want in TARGETS["patches_per_s"].items():
            got = max((r["patches_per_s"] for r in aug if r["backend"] == be and r["size"] == S), default=None)
            add(f"{be} patches/s at S={S}", f">= {want:,}", got, got is not None and got >= want)
    train = [r for r in report.get("train", []) if isinstance(r, dict)]
    comp = [r for r in train if r.get("compile") == "on" and "data_share" in r]
    if comp:
        got = comp[0]["data_share"]
        want = TARGETS["data_wait_share"]
        add("data wait of a compiled bf16 channels-last RotNet step", f"< {want:.0%}", got, got < want)
    sp = [r for r in train if "speedup" in r]
    if sp:
        got = sp[0]["speedup"]
        want = TARGETS["speedup"]
        add("compiled bf16 channels-last / eager fp32, per step", f">= {want}x", got, got >= want)
    return out


def table(report) -> str:
    m = report.get("environment", {}).get("machine", {})
    where = report["device"] + (f", driver {m['gpu_driver']}, CUDA {m['cuda']}" if "gpu_driver" in m else "")
    lines = [f"gpu_check on {where} (torch {report['torch']}, DALI {report['dali']})", ""]
    env = report.get("environment", {})
    if "matmul_peak" in env:
        pk = env["matmul_peak"]
        lines.append(f"measured peak: {pk['tflops']} TFLOP/s {pk['dtype']} matmul ({pk['n']}^3)")
        if "copy_tb_per_s" in env:
            lines[-1] += f", copy {env['copy_tb_per_s']} TB/s (read + write)"
        lines.append("")
    lines += ["| backend | S | batch | patches/s |", "| --- | --- | --- | --- |"]
    for r in report.get("sampler", []):
        if "patches_per_s" in r:
            lines.append(f"| sampler (host) | {r['size']} | {r['batch']} | {r['patches_per_s']:,.0f} |")
    for r in report.get("augment", []):
        if isinstance(r, dict) and "backend" in r:
            val = f"{r['patches_per_s']:,.0f}" if "patches_per_s" in r else r.get("error", "")
            if "render_only_patches_per_s" in r:
                val += f" (rendering alone {r['render_only_patches_per_s']:,.0f})"
            lines.append(f"| {r['backend']} | {r['size']} | {r.get('batch', '')} | {val} |")
    for r in report.get("profile", []) if isinstance(report.get("profile"), list) else []:
        if "top_ops" in r:
            ops = ", ".join(f"{o['op'][:48]} {100 * o['share']:.0f}%" for o in r["top_ops"][:4])
            lines.append(f"\ntorch backend at S={r['size']}, batch {r['batch']}, where the time goes: {ops}")
    steps = [r for k in ("train", "methods") for r in report.get(k, []) if isinstance(r, dict) and "method" in r]
    if steps:
        lines += [
            "",
            "| method | recipe | data | compile | amp | layout | batch | img/s | ms/step | data wait | TFLOP/s | MFU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in steps:
            data = r["data"] + (f" ({r['augment_backend']})" if r.get("augment_backend") else "")
            head = f"| {r['method']} | {r['recipe']} | {data} | {r['compile']} | {r['amp']} | {r['layout']} |"
            if "error" in r:
                lines.append(f"{head} failed: {r['error']} | | | | | |")
                continue
            lines.append(
                f"{head} {r['batch']} | {r['images_per_s']:,.0f} | {r['ms_per_step']} | {100 * r['data_share']:.1f}% "
                f"| {r['tflops']:.3g} | {100 * r.get('mfu', 0):.1f}% |"
            )
    pl = report.get("plan")
    if isinstance(pl, dict) and "methods" in pl:
        lines += ["", "| paper row (plan, eager bf16 steps) | one-image row + probes, h | its repro, h |"]
        lines.append("| --- | --- | --- |")
        for m, v in pl["methods"].items():
            lines.append(f"| {m} | {v['row_hours']} | {v['total_hours']} |")
        lines.append(f"| whole table | | {pl['table_hours']} |")
        if "table_hours_compiled_estimate" in pl:
            lines.append(
                f"| whole table, compiled (x{pl['compile_gain_bf16']} RotNet's gain) | | "
                f"{pl['table_hours_compiled_estimate']} |"
            )
    cl = report.get("clustering")
    if isinstance(cl, dict) and "seconds_total" in cl:
        lines += [
            "",
            f"DeepCluster clustering, {cl['n']:,} patches at {cl['res']} px, k = {cl['k']:,}: features + PCA "
            f"{cl['seconds_features']} s, k-means ({cl['iters']} iterations) {cl['seconds_kmeans']} s, "
            f"{cl['seconds_total']} s in all ({cl['clusters_used']:,} clusters used)",
        ]
    lines += ["", "| target | wanted | measured | met |", "| --- | --- | --- | --- |"]
    for v in report.get("verdict", []):
        lines.append(f"| {v['what']} | {v['target']} | {v['got']} | {'yes' if v['met'] else 'no'} |")
    errors = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    skipped = [k for k, v in report.items() if isinstance(v, dict) and "skipped" in v]
    if errors:
        lines += ["", "sections that failed: " + ", ".join(f"{k} ({report[k]['error']})" for k in errors)]
    if skipped:
        lines += ["", "sections skipped: " + ", ".join(f"{k} ({report[k]['skipped']})" for k in skipped)]
    return "\n".join(lines)


def _error(e: Exception) -> str:
    """An exception as one line for the report."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# per section: seconds it is expected to take on an H100/H200 (a section is skipped, not
# started, when the time left is below its estimate, so the check ends within --budget)
ESTIMATE_S = {
    "environment": 15,
    "sampler": 10,
    "augment": 120,
    "profile": 40,
    "train": 90,
    "methods": 60,
    "plan": 60,
    "clustering": 90,
}


def recipes(gpu: bool) -> tuple[dict, dict]:
    """(bench setups, plan recipes): the paper's shapes on a GPU, tiny ones in the dry run."""
    if gpu:
        paper, over = "paper", []
        distill, dover = "paper-distill", []
        # BiGAN at the resolution the reference trains it (the paper recipe's comment)
        bigan = ["res=64", "model.input_res=64", "mono.size=64"]
        dc = ["mono.epoch_length=16384"]  # the bench row's clustering: its step is what is timed
    else:
        tiny = ["train.batch_size=8", "mono.epoch_length=64", "probe.batch_size=16"]
        paper, over = "cpu-mini", tiny
        distill = "cpu-mini-distill"
        dover = ["mono.epoch_length=64", "distill.batch_size=8", "supervised.settings.model=resnet-small"]
        dover += ["distill.settings.model=resnet-small"]
        bigan, dc = [], ["deepcluster.settings.k=4"]
    setups = {
        "paper": (paper, over),
        "paper-dc": (paper, over + dc),
        "paper-bigan": (paper, over + bigan),
        "paper-distill": (distill, dover),
    }
    plan_recipes = {"rotnet": (paper, over), "deepcluster": (paper, over), "bigan": (paper, over + bigan)}
    return setups, plan_recipes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the same logic)")
    ap.add_argument("--json", default="gpu_check.json")
    ap.add_argument("--image", default=None, help="source image (default: the built-in photo)")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement (default 2 on GPU, 0.5 on CPU)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds the whole check may take (default 450)")
    ap.add_argument("--only", action="append", choices=list(ESTIMATE_S), help="run only these sections")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available; use --device cpu for a dry run", file=sys.stderr)
        return 2
    import tempfile
    from pathlib import Path

    from fastssl.bench_train import synthetic_labelled
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
    setups_, plan_recipes = recipes(gpu)
    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-")
    labelled = {}

    def setups():
        """Bench setups, with their labelled data made on first use."""
        out = {}
        for key, (preset, ov) in setups_.items():
            from fastssl.config import load

            res = int(load(preset, ov)["res"])
            if res not in labelled:
                labelled[res] = str(synthetic_labelled(Path(tmp.name) / str(res), args.image, res, per_class=64))
            out[key] = {
                "preset": preset,
                "overrides": ov,
                "image": args.image,
                "device": str(dev),
                "threads": torch.get_num_threads(),
                "warmup": 3,
                "steps": 10 if gpu else 2,
                "data": labelled[res],
            }
        return out

    def peak():
        return report.get("environment", {}).get("matmul_peak", {}).get("tflops")

    def gain():
        return next((r["compile_gain_bf16"] for r in report.get("train", []) if "compile_gain_bf16" in r), None)

    sections = [
        ("environment", lambda: environment(dev, seconds)),
        ("sampler", lambda: sampler(sizes, 2048 if gpu else 256, seconds, *image.shape[:2])),
        (
            "augment",
            lambda: augment(
                dev, sizes, [256, 2048] if gpu else [32], seconds, image, backends + ["torch-eager", "kornia"]
            ),
        ),
        ("profile", lambda: profile(dev, sizes, image, 2048 if gpu else 32)),
        ("train", lambda: training(setups(), peak())),
        ("methods", lambda: methods(setups(), peak())),
        ("plan", lambda: plans(dev, plan_recipes, gain())),
        (
            "clustering",
            lambda: clustering(dev, 1_281_167 if gpu else 2048, 10_000 if gpu else 64, *setups_["paper"]),
        ),
    ]
    for key, run in sections:
        if args.only and key not in args.only:
            continue
        left = args.budget - (time.perf_counter() - t0)
        if gpu and left < ESTIMATE_S[key]:
            report[key] = {"skipped": f"{left:.0f} s left of --budget, the section takes ~{ESTIMATE_S[key]} s"}
            print(f"{key}: skipped, {report[key]['skipped']}", flush=True)
            continue
        print(f"[{time.perf_counter() - t0:6.1f} s] {key}", flush=True)
        s0 = time.perf_counter()
        try:
            report[key] = run()
        except Exception as e:  # one failed section must not cost the others' figures
            traceback.print_exc()
            report[key] = {"error": _error(e)}
        report.setdefault("section_s", {})[key] = round(time.perf_counter() - s0, 1)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        report["verdict"] = verdicts(report)
        write_json(args.json, report)  # after every section: a timeout still leaves the figures so far
    tmp.cleanup()
    report["verdict"] = verdicts(report)
    write_json(args.json, report)
    print(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {args.json} in {report['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

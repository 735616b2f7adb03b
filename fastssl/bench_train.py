"""``fastssl bench train``: where a training step's time goes, method by method.

For every method (rotnet, deepcluster, bigan, supervised, distill) and the linear probe, and for each
variant of eager / compiled x fp32 / bf16 (fp16 too on CUDA) x channels-last / contiguous, one
row: steady-state images/s after warm-up, a step split into data wait, forward, backward and
optimiser, the data-wait share, peak memory, compiled the cold compile seconds, and the step's
FLOP rate with its MFU against the device's matrix-product peak measured in the same run.

Each row runs in a fresh process (a cold compile is cold: its own empty inductor cache; peak
memory is the row's own) with the same threads, through the trainer itself (its AMP,
layout, compile and DDP wrapping), on the method's real source: the one-image stream for
RotNet and BiGAN, the one-image fixed dataset for DeepCluster (its clustering is timed once,
as ``epoch start``), the FFCV ``.beton`` for supervised training and the probes (an image folder
through the PyTorch loader where FFCV is not installed); distill's student on the
one-image stream, labelled by an untrained teacher of the recipe's network (its step costs what
a trained one's does). With the trainer's own choice (``auto``), the pretext methods and distill
have one more row on the ``.beton`` (the full-data rows of ``repro``) and every method one on a
few batches held in memory: the compute-only ceiling. On CUDA the compute phases are timed with
CUDA events, the data wait on the host.

Images/s count what the trainer counts: source images (RotNet's network sees four rotations
of each).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue as queue_module
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import FastSSLError

METHODS = ("rotnet", "deepcluster", "bigan", "supervised", "distill", "probe")
FROM_SOURCE = ("rotnet", "deepcluster", "bigan", "distill")  # a one-image row and a labelled-data row
DEFAULT = ("rotnet", "deepcluster", "bigan", "supervised", "probe")  # distill on asking: its preset is its own
PHASES = ("data", "forward", "backward", "optimiser")
AMPS_CPU, AMPS_CUDA = ("off", "bf16"), ("off", "bf16", "fp16")
LAYOUT_NAMES = {"channels_last": "cl", "contiguous": "contig"}


@dataclass(frozen=True)
class Row:
    method: str
    compile: str  # on | off | auto
    amp: str  # off | bf16 | fp16 | auto
    layout: str  # channels_last | contiguous
    data: str = "source"  # source | labelled (a pretext method on the .beton: a full-data row) | resident
    base: bool = False  # the trainer as it was: eager fp32, conv1 as a plain strided conv


def variants(device: str, compiles=("off", "on"), amps=None, layouts=("channels_last", "contiguous")):
    """Every (compile, amp, layout) the device supports, among those asked for."""
    import torch

    cuda = torch.device(device).type == "cuda"
    ok = AMPS_CUDA if cuda else AMPS_CPU
    amps = [a for a in (amps or ok) if a in ok]
    return list(itertools.product(compiles, amps, layouts))


# --------------------------------------------------------------------------- one row
class _Clock:
    """Marks in a step: host time on the CPU; CUDA events for the compute phases on a GPU."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.marks: list = []

    def _now(self):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self):
        self.marks = [("start", self._now())]
        self.host0 = time.perf_counter()

    def data_ready(self):
        self.data_s = time.perf_counter() - self.host0  # the wait is on the host
        self.marks.append(("data", self._now()))

    def __call__(self, name: str):
        self.marks.append((name, self._now()))

    def end(self, count: bool) -> float:
        """Close the step; its phases are added to the totals when ``count``. Returns its time."""
        self.marks.append(("end", self._now()))
        if self.cuda:
            self.marks[-1][1].synchronize()
            dt = [a[1].elapsed_time(b[1]) / 1e3 for a, b in itertools.pairwise(self.marks)]
            dt[0] = self.data_s
        else:
            dt = [b[1] - a[1] for a, b in itertools.pairwise(self.marks)]
        if count:
            for (name, _), d in zip(self.marks[1:], dt, strict=True):
                # what follows the last optimiser step (metrics) counts as forward
                self.totals[name if name in self.totals else "forward"] += d
        return sum(dt)


def _build(row: Row, setup: dict, tmp: Path):
    """(method, data, TrainConfig) for a row, as ``fastssl train`` / ``probe`` builds them
    (``tmp``: a folder for distill's teacher)."""
    import torch

    from .config import build_for, load, train_config
    from .data.adapters import LoaderData
    from .data.prepare import fixed_dataset, loader, mono_stream

    methods = {"probe": (), "distill": ("distill", "supervised")}.get(row.method, (row.method,))
    rc = load(setup["preset"], setup["overrides"], methods=methods)
    rc["device"], rc["workers"] = setup["device"], setup.get("workers", rc.get("workers"))
    if row.method == "distill":
        _untrained_teacher(rc, num_classes(setup["data"]), tmp / "teacher")
    if row.method == "probe":
        from .checks import method_model, to_dataclass
        from .distributed import resolve_device
        from .models import AlexNet
        from .probe import ProbeConfig, probe_method, probe_train_config

        pcfg = to_dataclass(ProbeConfig, dict(rc["probe"]), "probe.")
        dev = resolve_device(rc["device"])
        nc = num_classes(setup["data"])
        torch.manual_seed(int(rc["seed"]))
        trunk = AlexNet(10, **method_model(rc, "rotnet"))
        method = probe_method(trunk, nc, pcfg, dev)
        data = LoaderData(loader((setup["data"], None), rc, True, pcfg.batch_size, dev, int(rc["seed"])))
        cfg = probe_train_config(pcfg, dev, len(data))
    else:
        cfg = train_config(rc, row.method, False, False)
        if row.method == "supervised":
            nc = num_classes(setup["data"])
            method = build_for(rc, row.method, nc)
            data = LoaderData(loader((setup["data"], None), rc, True, cfg.batch_size, cfg.device, cfg.seed))
        else:
            method = build_for(rc, row.method)
            labelled = (setup["data"], None) if row.data == "labelled" else None
            if method.fixed_dataset:
                kw = {"data": labelled} if labelled else {"image": setup["image"]}
                data = fixed_dataset(rc, cfg, progress=False, **kw)
            elif labelled:
                data = LoaderData(loader(labelled, rc, True, cfg.batch_size, cfg.device, cfg.seed), use_labels=False)
            else:
                data = mono_stream(rc, setup["image"], cfg.batch_size, cfg.seed)
    cfg.compile, cfg.amp, cfg.layout, cfg.progress = row.compile, row.amp, row.layout, False
    return method, data, cfg


def num_classes(data) -> int:
    """Classes of the labelled data: a .beton's index, or an image folder's / archive's."""
    if str(data).endswith(".beton"):
        from .data.beton import read_info

        return len(read_info(data)["classes"])
    from .data.sources import open_source

    return len(open_source(data).classes)


def _untrained_teacher(rc: dict, num_classes: int, folder: Path) -> None:
    """Save the recipe's teacher network at its initialisation as the students' teacher."""
    import torch

    from .config import build_for, train_config
    from .repro_distill import check_teacher
    from .train import Trainer

    check_teacher(rc)

    class _NoData:  # the teacher is only saved
        def __len__(self):
            return 1

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    cfg = train_config(rc, "supervised", False, False)
    t = Trainer(build_for(rc, "supervised", num_classes), _NoData(), cfg, folder)
    t.save()
    rc["distill"]["settings"]["teacher"] = str(t.ckpt_path)


def _endless(data):
    for epoch in itertools.count():
        data.set_epoch(epoch)
        yield from data.iter_from(0)


def run_row(row: Row, setup: dict) -> dict:
    """Measure one row in this process: ``setup`` holds preset, overrides, image, data,
    device, threads, warmup and steps."""
    import torch

    from .models.alexnet import StridedConv
    from .train import Trainer

    torch.set_num_threads(int(setup["threads"]))
    StridedConv.space_to_depth = not row.base
    with tempfile.TemporaryDirectory(prefix="fastssl-bench-") as tmp:
        method, data, cfg = _build(row, setup, Path(tmp))
        tr = Trainer(method, data, cfg, Path(tmp) / "run")
        dev = tr.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        clock = _Clock(dev)
        tr.ctx.clock = clock
        for net in method.nets.values():
            net.train()
        t0 = time.perf_counter()
        method.on_epoch_start(0, tr.ctx)
        epoch_start = time.perf_counter() - t0
        batches = _endless(data)
        if row.data == "resident":
            held = [next(batches) for _ in range(4)]
            batches = itertools.cycle(held)
        warm, steps, n_img = int(setup["warmup"]), int(setup["steps"]), 0
        t0 = time.perf_counter()
        step_s = []
        for i in range(warm + steps):
            clock.start()
            batch = tr.prepare(next(batches))
            clock.data_ready()
            method.train_step(batch, tr.ctx)
            s = clock.end(count=i >= warm)
            if i == warm - 1:
                warm_s = time.perf_counter() - t0
            if i >= warm:
                step_s.append(s)
                n_img += batch[0].shape[0]
        top = _profile(method, tr, batches, int(setup.get("profile", 0))) if setup.get("profile") else None
        flops = step_flops(method, tr, tr.prepare(next(batches)))
        tr.check_finite()
        total = sum(step_s)
        mean = total / steps
        out = {
            **asdict(row),
            "setup": tr.describe_setup(),
            "amp": tr.setup["amp"],
            "compile": "on" if tr.setup["compile"] else "off",
            "batch": int(batch[0].shape[0]),
            "images_per_s": round(n_img / total, 1),
            "ms_per_step": round(1e3 * mean, 1),
            "ms": {k: round(1e3 * v / steps, 1) for k, v in clock.totals.items()},
            "data_share": round(clock.totals["data"] / total, 3),
            "epoch_start_s": round(epoch_start, 2) if epoch_start > 0.05 else None,
            "warmup_s": round(warm_s, 2),
            "compile_s": round(max(warm_s - warm * mean, 0.0), 1) if tr.setup["compile"] else None,
            "augment_backend": _augment_backend(data),
            "flops_per_step": flops,
            "tflops": round(flops / mean / 1e12, 4),
        }
        if setup.get("peak_tflops"):  # model FLOPs utilisation against the measured matmul peak
            out["mfu"] = round(out["tflops"] / setup["peak_tflops"], 4)
        if top is not None:
            out["top_ops"] = top
        if dev.type == "cuda":
            out["peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
            out["peak_of"] = "CUDA memory allocated"
        else:
            out["peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            out["peak_of"] = "process RSS"
        return out


def _augment_backend(data) -> str | None:
    """The augmentation backend that renders a one-image source (None for labelled data)."""
    renderer = getattr(data, "renderer", None) or getattr(getattr(data, "src", None), "renderer", None)
    return getattr(renderer, "backend", None)


def step_flops(method, tr, batch) -> int:
    """Floating-point operations of one training step's convolutions and matrix products,
    forward and backward (element-wise work and the optimiser are not counted), by torch's FLOP
    counter on one more step run eagerly (a compiled step runs its eager form here), with conv1
    as the plain strided convolution: the model's FLOPs, whichever form the CPU runs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models.alexnet import StridedConv

    clock, tr.ctx.clock = tr.ctx.clock, None
    s2d, StridedConv.space_to_depth = StridedConv.space_to_depth, False
    try:
        with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as fc:
            method.train_step(batch, tr.ctx)
    finally:
        tr.ctx.clock = clock
        StridedConv.space_to_depth = s2d
    return int(fc.get_total_flops())


def matmul_peak(device, dtype=None, seconds: float = 1.0) -> dict:
    """The device's measured matrix-product rate: TFLOP/s of a large square product on random
    data (bf16 by default; n = 8192 on CUDA, 2048 on the CPU), the ceiling MFU is taken against."""
    import torch

    dev = torch.device(device)
    dtype = dtype or torch.bfloat16
    n = 8192 if dev.type == "cuda" else 2048
    g = torch.Generator(device=dev).manual_seed(0)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype, generator=g) for _ in range(2))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    a @ b  # warm-up: library load, kernel choice
    sync()
    reps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(4):
            a @ b
        reps += 4
        sync()
        dt = time.perf_counter() - t0
        if dt >= seconds:
            break
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "tflops": round(2 * n**3 * reps / dt / 1e12, 2)}


def _profile(method, tr, batches, top: int, steps: int = 3) -> list[dict]:
    """torch.profiler over a few more steps: the ``top`` ops by their own time, each with its
    share of all ops' time (CPU time; CUDA time on a GPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = tr.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tr.ctx.clock = None
    with profile(activities=acts) as prof:
        for _ in range(steps):
            method.train_step(tr.prepare(next(batches)), tr.ctx)
        if cuda:
            torch.cuda.synchronize(tr.device)
    return top_ops(prof, cuda, top, steps)


def top_ops(prof, cuda: bool, top: int, steps: int = 1) -> list[dict]:
    """The ``top`` ops of a finished ``torch.profiler`` run by their own time (on a GPU the
    device's: the kernels), each with its share of all ops' time and its ms per step."""
    events = prof.key_averages()
    key = "self_cpu_time_total"
    if cuda:  # the device time's name has changed across torch releases
        key = next((k for k in ("self_device_time_total", "self_cuda_time_total") if hasattr(events[0], k)), key)
    total = sum(getattr(e, key) for e in events) or 1
    best = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [
        {
            "op": e.key,
            "share": round(getattr(e, key) / total, 3),
            "ms_per_step": round(getattr(e, key) / 1e3 / steps, 2),
            "calls": e.count,
        }
        for e in best
    ]


def _child(row, setup, queue):
    try:
        queue.put(run_row(row, setup))
    except BaseException as e:  # reported in the table, not raised: one broken row must not end the run
        msg = str(e).splitlines()[0] if str(e) else ""
        queue.put({**asdict(row), "error": f"{type(e).__name__}: {msg}"[:300]})


def _result(queue, proc, timeout: float):
    """The row's result from ``queue``; the process's exit code if it ended without one (killed,
    a crash in native code); None after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return queue.get(timeout=min(1.0, max(end - time.monotonic(), 0.01)))
        except queue_module.Empty:
            if not proc.is_alive():
                try:  # a result put just before it ended may still be in the pipe
                    return queue.get(timeout=1.0)
                except queue_module.Empty:
                    return proc.exitcode
    return None


def _in_process(row: Row, setup: dict, timeout: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="fastssl-inductor-") as cache:
        old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile, not one served from disk
        try:
            p = ctx.Process(target=_child, args=(row, setup, queue))
            p.start()
        finally:
            if old is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
        try:
            res = _result(queue, p, timeout)
            if res is None:
                res = {**asdict(row), "error": f"no result within {timeout:.0f} s"}
            elif isinstance(res, int):  # the process ended without a result: a crash, not a hang
                res = {**asdict(row), "error": f"the row's process died (exit code {res})"}
        finally:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    return res


# --------------------------------------------------------------------------- the run
def synthetic_labelled(folder: Path, image, res: int, per_class: int = 256, classes: int = 10) -> Path:
    """Labelled data of ``classes`` x ``per_class`` JPEG crops of ``image`` when no ``--data`` is
    given (what the labelled rows read matters, not what it shows): a .beton where FFCV is
    installed, else the image folder, read by the PyTorch loader."""
    from .data.loaders import ffcv_available

    if ffcv_available():
        return synthetic_beton(folder, image, res, per_class, classes)
    return _synthetic_folder(folder, image, res, per_class, classes)


def _synthetic_folder(folder: Path, image, res: int, per_class: int, classes: int) -> Path:
    import numpy as np
    from PIL import Image

    from .image import load_image

    img = load_image(image)
    rng = np.random.default_rng(0)
    h, w = img.shape[:2]
    side = min(h, w, 4 * res)
    for c in range(classes):
        d = folder / "images" / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(img[y : y + side, x : x + side]).resize((res, res), Image.BILINEAR)
            crop.save(d / f"{i:04d}.jpg", quality=90)
    return folder / "images"


def synthetic_beton(folder: Path, image, res: int, per_class: int = 256, classes: int = 10) -> Path:
    """A labelled .beton of ``classes`` x ``per_class`` JPEG crops of ``image``."""
    from .data.beton import convert
    from .data.sources import open_source

    images = _synthetic_folder(folder, image, res, per_class, classes)
    out = folder / "data.beton"
    convert(open_source(images), out, workers=1, progress=False)
    return out


def bench_train(
    methods=DEFAULT,
    *,
    preset: str = "cpu-mini",
    overrides=None,
    image=None,
    data=None,
    device: str = "cpu",
    threads: int | None = None,
    compiles=("off", "on"),
    amps=None,
    layouts=("channels_last", "contiguous"),
    resident: bool = True,
    warmup: int = 3,
    steps: int = 10,
    rounds: int = 1,
    profile: int = 0,
    timeout: float = 1200.0,
    log=print,
) -> dict:
    """Every row (see the module's text); returns the JSON-ready dict."""
    from .config import load
    from .distributed import resolve_device
    from .machine import describe

    for m in methods:
        if m not in METHODS:
            raise FastSSLError(f"unknown method {m!r} for bench train; choose from {', '.join(METHODS)}")
    if warmup < 1 or steps < 1 or rounds < 1:
        raise FastSSLError(f"--warmup, --steps and --rounds must be >= 1, got {warmup}, {steps} and {rounds}")
    load(preset, overrides)  # a bad recipe is one line before any process starts
    dev = str(resolve_device(device))
    threads = threads or len(os.sched_getaffinity(0))
    setup = {
        "preset": preset,
        "overrides": list(overrides or []),
        "image": image,
        "device": dev,
        "threads": threads,
        "warmup": warmup,
        "steps": steps,
        "rounds": rounds,
        "profile": profile,
    }
    rows = [Row(m, "off", "off", "channels_last", base=True) for m in methods]
    rows += [Row(m, c, a, lay) for m in methods for c, a, lay in variants(dev, compiles, amps, layouts)]
    rows += [Row(m, "auto", "auto", "channels_last", "labelled") for m in methods if m in FROM_SOURCE]
    if resident:
        rows += [Row(m, "auto", "auto", "channels_last", "resident") for m in methods]
    rows.sort(key=lambda r: METHODS.index(r.method))
    import torch

    torch.set_num_threads(threads)
    out = {"machine": describe(dev), "preset": preset, "overrides": setup["overrides"], "setup": setup, "rows": []}
    if data is not None and not str(data).endswith(".beton") and not Path(data).exists():
        raise FastSSLError(f"--data must be a .beton (fastssl data convert makes one) or an image folder, got {data}")
    with tempfile.TemporaryDirectory(prefix="fastssl-bench-data-") as tmp:
        if data is None:  # every method has a row on labelled data
            res = int(load(preset, overrides)["res"])
            setup["data"] = str(synthetic_labelled(Path(tmp), image, res))
            kind = "a .beton" if setup["data"].endswith(".beton") else "an image folder (PyTorch loader: no FFCV)"
            out["data"] = f"synthetic: 2,560 JPEG crops of the source image at {res} px, 10 classes, {kind}"
        else:
            setup["data"] = str(data)
            out["data"] = str(data)
        out["matmul_peak"] = setup["matmul_peak"] = matmul_peak(dev)
        setup["peak_tflops"] = out["matmul_peak"]["tflops"]
        runs: dict[Row, list] = {row: [] for row in rows}
        for k in range(rounds):  # round-robin: a slow minute of a shared machine hits every row alike
            if rounds > 1:
                log(f"round {k + 1} of {rounds}")
            for row in rows:
                runs[row].append(_in_process(row, setup, timeout))
                log(format_row(runs[row][-1]))
        out["rows"] = [_median(rs) for rs in runs.values()]
    return out


def _median(results: list[dict]) -> dict:
    """The run with the median images/s of a row's rounds, with every round's figure."""
    ok = sorted((r for r in results if "error" not in r), key=lambda r: r["images_per_s"])
    if not ok:
        return results[0]
    mid = dict(ok[(len(ok) - 1) // 2])
    if len(results) > 1:
        mid["rounds"] = [r["images_per_s"] for r in ok]
    return mid


# --------------------------------------------------------------------------- output
HEADER = (
    f"  {'method':11s} {'data':8s} {'compile':7s} {'amp':4s} {'layout':6s} {'img/s':>8s} {'vs base':>7s} "
    f"{'ms/step':>8s} {'data':>6s} {'fwd':>6s} {'bwd':>6s} {'optim':>6s} {'wait%':>5s} {'peak MiB':>8s} "
    f"{'compile s':>9s} {'TFLOP/s':>8s} {'MFU':>6s}"
)


def format_row(r: dict, base: float | None = None) -> str:
    lay = LAYOUT_NAMES.get(r["layout"], r["layout"])
    amp = {"off": "fp32"}.get(r["amp"], r["amp"])
    data = "base" if r.get("base") else r["data"]
    head = f"  {r['method']:11s} {data:8s} {r['compile']:7s} {amp:4s} {lay:6s}"
    if "error" in r:
        return f"{head} failed: {r['error']}"
    ms = r["ms"]
    ratio = f"{r['images_per_s'] / base:6.2f}x" if base else "      -"
    comp = f"{r['compile_s']:9.1f}" if r.get("compile_s") is not None else f"{'-':>9s}"
    tfl = f"{r['tflops']:8.3f}" if r.get("tflops") is not None else f"{'-':>8s}"
    mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") is not None else f"{'-':>6s}"
    line = (
        f"{head} {r['images_per_s']:8.1f} {ratio} {r['ms_per_step']:8.1f} {ms['data']:6.1f} {ms['forward']:6.1f} "
        f"{ms['backward']:6.1f} {ms['optimiser']:6.1f} {100 * r['data_share']:5.1f} {r['peak_mib']:8.0f} {comp} "
        f"{tfl} {mfu}"
    )
    if r.get("epoch_start_s"):
        line += f"  (epoch start {r['epoch_start_s']:.1f} s)"
    return line


def _base(rows: list[dict], method: str) -> float | None:
    """The base row of a method (eager fp32, plain conv1, on the source)."""
    for r in rows:
        if r["method"] == method and r.get("base") and "error" not in r:
            return r["images_per_s"]
    return None


def format_train_table(run: dict) -> str:
    m = run["machine"]
    where = f"{m['cpu']} ({', '.join(m['cpu_flags']) or 'no listed flags'}), {run['setup']['threads']} threads"
    if "gpu" in m:
        where = f"{m['gpu']} (CUDA {m['cuda']}, driver {m['gpu_driver']}); host {where}"
    lines = [
        f"preset {run['preset']}{' ' + ' '.join(run['overrides']) if run['overrides'] else ''}, torch {m['torch']}",
        f"machine: {where}",
        f"steps: {run['setup']['warmup']} warm-up + {run['setup']['steps']} timed per row"
        + (f", median of {run['setup']['rounds']} rounds" if run["setup"].get("rounds", 1) > 1 else "")
        + "; times in ms per step",
    ]
    if run.get("data"):
        lines.append(f"labelled data: {run['data']}")
    lines.append(HEADER)
    for r in run["rows"]:
        lines.append(format_row(r, _base(run["rows"], r["method"])))
        for op in r.get("top_ops", []):
            lines.append(f"      {op['share']:6.1%}  {op['ms_per_step']:8.2f} ms  {op['op']}")
    peaks = {r.get("peak_of") for r in run["rows"] if r.get("peak_of")}
    lines.append(
        "  base: the trainer before its CPU tuning (eager fp32, conv1 a plain strided conv), on the source; "
        f"peak: {', '.join(sorted(peaks)) or '-'}"
    )
    mp_ = run.get("matmul_peak")
    if mp_:
        lines.append(
            "  TFLOP/s: the step's convolutions and matrix products (torch's FLOP counter) per second; MFU: "
            f"against the measured {mp_['dtype']} matrix-product peak, {mp_['tflops']} TFLOP/s ({mp_['n']}^3)"
        )
    return "\n".join(lines)

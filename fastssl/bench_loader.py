"""``fastssl bench loader``: passes over a labelled source, FFCV beside a PIL DataLoader.

Both sides produce the same batches (random-resized crop + horizontal flip to ``res``, uint8
channels-last, labels) with the same number of worker processes/threads. The source is first
converted to a temporary ``.beton`` per FFCV write mode (conversion time and size reported).
Rates are given twice: over the whole pass, and without the first batch (where FFCV compiles
its pipeline with Numba, 5-15 s on a cold start).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .data.beton import convert, require_ffcv
from .data.loaders import Loader
from .data.sources import open_source


def _passes(loader, epochs: int = 1) -> dict:
    t0 = time.perf_counter()
    n = first = 0
    t_first = None
    for e in range(epochs):
        loader.set_epoch(e)
        for x, _ in loader:
            if t_first is None:
                t_first = time.perf_counter()
                first = x.shape[0]
            n += x.shape[0]
    t1 = time.perf_counter()
    steady = (n - first) / (t1 - t_first) if t1 > t_first and n > first else float("nan")
    return {
        "images": n,
        "seconds": round(t1 - t0, 2),
        "first_batch_s": round(t_first - t0, 2),
        "images_per_s": round(steady, 1),
        "images_per_s_with_warmup": round(n / (t1 - t0), 1),
    }


def bench_loader(
    data,
    threads: int,
    res: int = 32,
    batch_size: int = 256,
    write_modes=("jpg", "smart"),
    split=None,
    epochs: int = 1,
    log=print,
) -> dict:
    require_ffcv()
    src = open_source(data, split=split)
    out = {
        "data": str(data),
        "epochs": epochs,
        "threads": threads,
        "res": res,
        "batch_size": batch_size,
        "num_images": len(src),
        "source_bytes": src.stored_bytes(),
        "conversion": [],
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="fastssl-bench-") as tmp:
        betons = []
        for mode in write_modes:
            path = Path(tmp) / f"data-{mode}.beton"
            s = convert(src, path, write_mode=mode, workers=threads, progress=False)
            conv = {"write_mode": mode, "seconds": s["seconds_total"], "bytes": s["bytes"]}
            out["conversion"].append(conv)
            log(f"  convert ({mode}): {conv['seconds']:.1f} s, {conv['bytes'] / 2**20:.1f} MiB")
            betons.append((mode, path))
        for mode, path in betons:
            r = _passes(Loader(str(path), batch_size=batch_size, train=True, res=res, workers=threads), epochs)
            r.update(name=f"ffcv-{mode}", setup=f"FFCV, {threads} threads")
            out["results"].append(r)
            log(f"  ffcv-{mode:10s} {r['images_per_s']:10.1f} img/s (first batch {r['first_batch_s']} s)")
        r = _passes(Loader(src, batch_size=batch_size, train=True, res=res, workers=threads, backend="pytorch"), epochs)
        r.update(name="dataloader-pil", setup=f"torch DataLoader + PIL, {threads} worker processes")
        out["results"].append(r)
        log(f"  dataloader-pil  {r['images_per_s']:10.1f} img/s")
    return out


def format_loader_table(run: dict) -> str:
    base = next(r["images_per_s"] for r in run["results"] if r["name"] == "dataloader-pil")
    lines = [
        f"{run['epochs']} pass(es) over {run['num_images']} images from {run['data']}, res {run['res']}, "
        f"batch {run['batch_size']}, "
        f"{run['threads']} workers per side",
        f"  {'name':16s} {'img/s':>10s} {'vs DataLoader':>13s} {'img/s incl. 1st batch':>22s}  setup",
    ]
    for r in run["results"]:
        lines.append(
            f"  {r['name']:16s} {r['images_per_s']:10.1f} {r['images_per_s'] / base:12.2f}x "
            f"{r['images_per_s_with_warmup']:22.1f}  {r['setup']}"
        )
    if run["source_bytes"]:
        lines.append(f"  source images: {run['source_bytes'] / 2**20:.1f} MiB of encoded files")
    for c in run["conversion"]:
        lines.append(f"  .beton ({c['write_mode']}): {c['bytes'] / 2**20:.1f} MiB, converted in {c['seconds']:.1f} s")
    return "\n".join(lines)

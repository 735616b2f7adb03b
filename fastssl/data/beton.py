"""Write a labelled source to an FFCV ``.beton`` and read back what it holds.

``convert()`` decodes every image once (skipping unreadable ones with a count, or failing
with ``strict=True``), writes ``image`` (RGBImageField) and ``label`` (IntField) through FFCV's
DatasetWriter under a temporary name, and renames it only when complete. Beside it goes
``NAME.classes.json``: the class names, per-class counts and the sample count, so results can
be read with class names and a mismatched index is detected.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from ..errors import FastSSLError
from ..report import write_json
from .sources import LabelledSource

SCHEMA = {"image": "RGBImageField", "label": "IntField"}
WRITE_MODES = ("smart", "jpg", "raw")
SMART_THRESHOLD = 32 * 1024  # smart mode: raw below 32 KiB of pixels (CIFAR), JPEG above (ImageNet)


def import_ffcv() -> bool:
    """Import FFCV without its side effect on threads: importing ``ffcv.pipeline.compiler`` sets
    torch's and Numba's thread counts to 1 for the whole process (FFCV 1.0.2), which silently
    made every later training step single-threaded. The counts are restored."""
    import numba
    import torch

    n_torch, n_numba = torch.get_num_threads(), numba.get_num_threads()
    try:
        import ffcv  # noqa: F401
        import ffcv.pipeline.compiler  # noqa: F401
    except ImportError:
        return False
    finally:
        torch.set_num_threads(n_torch)
        numba.set_num_threads(n_numba)
    return True


def require_ffcv():
    if not import_ffcv():
        raise FastSSLError(
            "FFCV is not installed: apt-get install -y pkg-config libopencv-dev libturbojpeg0-dev, "
            "then pip install 'fastssl[ffcv]'"
        ) from None


def index_path(beton: str | os.PathLike) -> Path:
    p = Path(beton)
    return p.with_name(p.name[: -len(".beton")] + ".classes.json" if p.name.endswith(".beton") else p.name + ".json")


class _Images:
    """The indexable dataset FFCV's writer reads: (RGB uint8 array, label)."""

    def __init__(self, src: LabelledSource):
        self.src = src

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        return self.src.image(int(i)), int(self.src.labels[i])


_SCAN_SRC: LabelledSource | None = None


def _scan_one(i):
    try:
        img = _SCAN_SRC.image(i)
        if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
            return i, f"bad shape {img.shape}"
        return i, None
    except FastSSLError as e:
        return i, str(e)


def scan(src: LabelledSource, workers: int, strict: bool, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Decode every image once; return the readable indices and the problems found."""
    from tqdm import tqdm

    global _SCAN_SRC
    _SCAN_SRC = src
    bad: list[str] = []
    ok = np.ones(len(src), dtype=bool)
    try:
        ctx = mp.get_context("fork")
        with ctx.Pool(workers) as pool, tqdm(total=len(src), unit="img", desc="check", disable=not progress) as bar:
            for i, err in pool.imap_unordered(_scan_one, range(len(src)), chunksize=256):
                bar.update(1)
                if err:
                    if strict:
                        pool.terminate()
                        raise FastSSLError(f"{err} (--strict: stopping; without it, bad images are skipped)")
                    ok[i] = False
                    bad.append(err)
    finally:
        _SCAN_SRC = None
    return np.flatnonzero(ok), bad


def convert(
    src: LabelledSource,
    dst: str | os.PathLike,
    *,
    indices=None,
    max_res: int | None = None,
    jpeg_quality: int = 90,
    write_mode: str = "smart",
    strict: bool = False,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write ``src`` (or ``indices`` of it) to ``dst``; return a summary dict."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    dst = Path(dst)
    if not dst.name.endswith(".beton"):
        raise FastSSLError(f"output must end in .beton, got {dst}")
    if not dst.parent.exists():
        raise FastSSLError(f"output folder does not exist: {dst.parent}")
    if dst.exists() and not overwrite:
        raise FastSSLError(f"output exists: {dst} (remove it or pass --overwrite)")
    if write_mode not in WRITE_MODES:
        raise FastSSLError(f"--write-mode must be one of {', '.join(WRITE_MODES)}, got {write_mode!r}")
    if not 1 <= jpeg_quality <= 100:
        raise FastSSLError(f"--jpeg-quality must be in 1..100, got {jpeg_quality}")
    if max_res is not None and max_res < 8:
        raise FastSSLError(f"--max-res must be >= 8 pixels, got {max_res}")
    workers = workers or len(os.sched_getaffinity(0))
    idx = np.arange(len(src)) if indices is None else np.asarray(indices, dtype=np.int64)
    t0 = time.perf_counter()
    sub = _Subset(src, idx)
    good, bad = scan(sub, workers, strict, progress)
    if len(good) == 0:
        raise FastSSLError(f"no readable images in {src.name} ({len(bad)} unreadable)")
    t_scan = time.perf_counter() - t0
    fields = {
        "image": RGBImageField(
            write_mode=write_mode,
            max_resolution=max_res,
            jpeg_quality=jpeg_quality,
            smart_threshold=SMART_THRESHOLD if write_mode == "smart" else None,
        ),
        "label": IntField(),
    }
    index = {
        "classes": src.classes,
        "counts": src.counts(idx[good]),
        "num_samples": int(len(good)),
        "source": src.name,
        "skipped": len(bad),
        "write_mode": write_mode,
        "max_res": max_res,
        "jpeg_quality": jpeg_quality,
    }
    # the .beton is renamed into place first, its index right after (read_info needs both)
    with atomic_output(dst) as tmp:
        DatasetWriter(str(tmp), fields, num_workers=workers).from_indexed_dataset(_Images(sub), indices=list(good))
    write_json(index_path(dst), index)
    return {
        "output": str(dst),
        "num_samples": int(len(good)),
        "skipped": len(bad),
        "skipped_examples": bad[:5],
        "classes": len(src.classes),
        "seconds_check": round(t_scan, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "bytes": dst.stat().st_size,
    }


class _Subset(LabelledSource):
    """A view of ``indices`` of another source (same classes)."""

    def __init__(self, src: LabelledSource, indices: np.ndarray):
        self.src = src
        self.idx = np.asarray(indices, dtype=np.int64)
        super().__init__(src.name, src.classes, [src.keys[i] for i in self.idx], src.labels[self.idx])

    def image(self, i: int) -> np.ndarray:
        return self.src.image(int(self.idx[i]))


def read_info(beton: str | os.PathLike) -> dict:
    """``{"num_samples": N, "classes": {name: count}}`` read back from the file itself, checked
    against its class index."""
    require_ffcv()
    from ffcv.reader import Reader

    p = Path(beton)
    if not p.is_file():
        raise FastSSLError(f".beton not found: {p}")
    size = p.stat().st_size
    try:
        r = Reader(str(p))
    except Exception as e:  # FFCV raises assorted errors on foreign or cut files
        raise FastSSLError(f"{p} is not a readable FFCV .beton (truncated or another format): {e}") from None
    if len(r.metadata) != r.num_samples or int(r.header["alloc_table_ptr"]) > size:
        raise FastSSLError(f"{p} is truncated: its header promises {r.num_samples} samples; convert it again")
    ends = r.alloc_table["ptr"] + r.alloc_table["size"]
    if len(ends) and int(ends.max()) > size:
        raise FastSSLError(f"{p} is truncated: sample data runs past the end of the file; convert it again")
    kinds = {name: type(h).__name__ for name, h in r.handlers.items()}
    if kinds != SCHEMA:
        raise FastSSLError(f"{p} has another schema {kinds}; fastssl expects {SCHEMA}")
    labels = np.asarray(r.metadata[f"f{r.field_names.index('label')}"]).astype(np.int64)
    ipath = index_path(p)
    if not ipath.is_file():
        raise FastSSLError(f"class index {ipath} is missing; convert the data again to write it")
    try:
        index = json.loads(ipath.read_text())
        classes = list(index["classes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FastSSLError(f"class index {ipath} is unreadable: {e}") from None
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise FastSSLError(f"class index {ipath} does not match {p}: label {labels.max()} but {len(classes)} classes")
    counts = np.bincount(labels, minlength=len(classes))
    by_name = {c: int(counts[k]) for k, c in enumerate(classes)}
    if index.get("counts") != by_name or index.get("num_samples") != int(r.num_samples):
        raise FastSSLError(f"class index {ipath} does not match {p} (counts differ); convert the data again")
    return {"num_samples": int(r.num_samples), "classes": by_name}

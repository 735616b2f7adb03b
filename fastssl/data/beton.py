"""Write a labelled source to an FFCV ``.beton`` and read back what it holds.

``convert()`` decodes every image once (skipping unreadable ones with a count, or failing
with ``strict=True``), writes ``image`` (RGBImageField) and ``label`` (IntField) through FFCV's
DatasetWriter under a temporary name, and renames it only when complete. Beside it goes
``NAME.classes.json``: the class names, per-class counts and the sample count, so results can
be read with class names and a mismatched index is detected.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from pathlib import Path

import numpy as np

from ..atomic import JSON, atomic_output, check_destination, has_magic, os_error
from ..errors import FastSSLError
from ..report import write_json
from .sources import LabelledSource

SCHEMA = {"image": "RGBImageField", "label": "IntField"}
WRITE_MODES = ("smart", "jpg", "raw")
ALLOC_ENTRY = 24  # bytes of one allocation-table entry (sample id, pointer, size: three uint64)
SMART_THRESHOLD = 32 * 1024  # smart mode: raw below 32 KiB of pixels (CIFAR), JPEG above (ImageNet)


FFCV_INSTALL = "apt-get install -y pkg-config libopencv-dev libturbojpeg0-dev, then pip install 'fastssl[ffcv]'"


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
        raise FastSSLError(f"FFCV is not installed: {FFCV_INSTALL}") from None


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
    from ..progress import bar as progress_bar

    global _SCAN_SRC
    _SCAN_SRC = src
    bad: list[str] = []
    ok = np.ones(len(src), dtype=bool)
    try:
        ctx = mp.get_context("fork")
        with ctx.Pool(workers) as pool, progress_bar(total=len(src), unit="img", desc="check", enabled=progress) as bar:
            for i, err in pool.imap_unordered(_scan_one, range(len(src)), chunksize=256):
                bar.update(1)
                if err:
                    if strict:
                        pool.terminate()
                        raise FastSSLError(f"{err} (`strict`: stopping; without it, bad images are skipped)")
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
    check_destination(dst, overwrite=overwrite, replace=is_beton)
    check_destination(index_path(dst), overwrite=True, replace=JSON, what="class index")
    if write_mode not in WRITE_MODES:
        raise FastSSLError(f"`write_mode` must be one of {', '.join(WRITE_MODES)}, got {write_mode!r}")
    if not 1 <= jpeg_quality <= 100:
        raise FastSSLError(f"`jpeg_quality` must be in 1..100, got {jpeg_quality}")
    if max_res is not None and max_res < 8:
        raise FastSSLError(f"`max_res` must be >= 8 pixels, got {max_res}")
    # None: every core; conversion runs in worker processes, at least one
    workers = max(1, len(os.sched_getaffinity(0)) if workers is None else int(workers))
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
    with atomic_output(dst, replace=is_beton, what="output") as tmp:
        _write(DatasetWriter(str(tmp), fields, num_workers=workers), _Images(sub), list(good), dst, progress)
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


is_beton = has_magic(b"\x02\x00")  # an FFCV header (format version 2) is what convert replaces


class _WorkerFailed(Exception):
    pass


_FAILURES = None  # a queue the writer's workers report errors to (inherited through fork)


def _guarded_worker(*args):
    """FFCV's indexed-dataset writer worker; an error goes to the parent as (errno, text)
    instead of a traceback and a worker the parent waits for forever."""
    from ffcv.writer import worker_job_indexed_dataset

    try:
        worker_job_indexed_dataset(*args)
    except BaseException as e:
        if _FAILURES is None:
            raise
        _FAILURES.put((getattr(e, "errno", None), f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None


def _write(writer, dataset, indices: list, dst: Path, progress: bool) -> None:
    """``writer.from_indexed_dataset`` with failures that reach the caller.

    FFCV's parent process waits until its workers have written every sample; a worker that
    fails (a full disk, an unreadable sample) leaves it waiting forever. Here each worker
    reports its error on a queue, a watcher thread also notices a worker killed by a signal,
    and either interrupts the waiting main thread (SIGUSR1): the workers are stopped and one
    line is raised. Without a main thread to interrupt, FFCV's own call is used.
    """
    import ffcv.writer

    from ..progress import bar as progress_bar

    # FFCV's own bar follows the caller's choice, for this call only
    ffcv_bar = ffcv.writer.tqdm
    ffcv.writer.tqdm = functools.partial(progress_bar, enabled=progress, desc="write", unit="img")
    try:
        _write_guarded(writer, dataset, indices, dst)
    finally:
        ffcv.writer.tqdm = ffcv_bar


def _write_guarded(writer, dataset, indices: list, dst: Path) -> None:
    global _FAILURES
    if threading.current_thread() is not threading.main_thread() or not hasattr(writer, "_write_common"):
        writer.from_indexed_dataset(dataset, indices=indices)
        return
    before = set(mp.active_children())
    _FAILURES = failures = mp.get_context("fork").Queue()
    failed: list = []
    done = threading.Event()
    main = threading.main_thread().ident

    def watch():
        workers: set = set()
        while not done.is_set():
            try:
                failed.append(failures.get(timeout=0.2))
            except queue.Empty:
                try:
                    workers.update(set(mp.active_children()) - before)
                except RuntimeError:  # the main thread was starting a worker: look again
                    continue
                dead = [p.exitcode for p in workers if p.exitcode not in (None, 0)]
                if not dead:
                    continue
                failed.append((None, f"a conversion worker died (exit code {dead[0]})"))
            signal.pthread_kill(main, signal.SIGUSR1)
            return

    def interrupted(signum, frame):
        if not done.is_set():
            raise _WorkerFailed

    old = signal.signal(signal.SIGUSR1, interrupted)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        chunks = [list(enumerate(indices))[a : a + 100] for a in range(0, len(indices), 100)]
        writer._write_common(len(indices), chunks, _guarded_worker, (dataset,))
    except _WorkerFailed:
        for p in set(mp.active_children()) - before:
            p.terminate()
            p.join()
        shm = getattr(writer, "metadata_sm", None)
        if shm is not None:
            with contextlib.suppress(OSError):
                shm.close()
                shm.unlink()
        code, text = failed[0] if failed else (None, "a conversion worker failed")
        if code is not None:
            raise os_error(dst, OSError(code, os.strerror(code))) from None
        raise FastSSLError(f"could not write {dst}: {text}") from None
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, old)
        _FAILURES = None


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
    table_at = int(r.header["alloc_table_ptr"])
    if len(r.metadata) != r.num_samples or table_at > size or (size - table_at) % ALLOC_ENTRY:
        raise FastSSLError(f"{p} is truncated: its header promises {r.num_samples} samples; convert it again")
    # the allocation table is the file's tail: every sample's image must have its entry, and
    # every entry's pages must lie inside the data region (before the table)
    kinds = {name: type(h).__name__ for name, h in r.handlers.items()}
    if kinds != SCHEMA:
        raise FastSSLError(f"{p} has another schema {kinds}; fastssl expects {SCHEMA}")
    table = r.alloc_table  # in this schema every sample has its image's allocation
    ends = table["ptr"] + table["size"]
    missing = r.num_samples - len(np.unique(table["sample_id"]))
    if missing > 0 or (len(ends) and int(ends.max()) > table_at):
        raise FastSSLError(f"{p} is truncated or damaged: sample data is missing; convert it again")
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

"""Write a labelled source to an FFCV ``.beton`` and read back what it holds.

``convert()`` decodes every image once (skipping unreadable ones with a count, or failing
with ``strict=True``), writes ``image`` (RGBImageField) and ``label`` (IntField) through FFCV's
DatasetWriter under a temporary name, and renames it only when complete. Beside it goes
``NAME.classes.json``: the class names, per-class counts and the sample count, so results can
be read with class names and a mismatched index is detected.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import warnings
import zlib
from pathlib import Path

import numba
import numpy as np
import torch

from ..atomic import atomic_output, check_destination, claim, has_magic, os_error
from ..errors import FastSSLError
from ..progress import bar as progress_bar
from ..report import write_json
from ..signals import check_stop
from .sources import LabelledSource

SCHEMA = {"image": "RGBImageField", "label": "IntField"}
WRITE_MODES = ("smart", "jpg", "raw")
ALLOC_ENTRY = 24  # bytes of one allocation-table entry (sample id, pointer, size: three uint64)
SMART_THRESHOLD = 32 * 1024  # smart mode: raw below 32 KiB of pixels (CIFAR), JPEG above (ImageNet)


FFCV_INSTALL = "apt-get install -y pkg-config libopencv-dev libturbojpeg0-dev, then pip install 'fastssl[ffcv]'"


@contextlib.contextmanager
def keep_threads():
    """torch's and Numba's thread counts put back, after the block, to what they were before it:
    FFCV 1.0.2 sets both for the whole process on import (to 1), and in its loader's constructor
    and every ``iter()`` (to the loader's worker count), which silently made every later
    training step run on that many threads."""

    n_torch, n_numba = torch.get_num_threads(), numba.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n_torch)
        numba.set_num_threads(n_numba)


def import_ffcv() -> bool:
    """Import FFCV without its side effect on threads (:func:`keep_threads`)."""

    with keep_threads():
        try:
            import ffcv  # noqa: F401
            import ffcv.pipeline.compiler  # noqa: F401
        except ImportError:
            return False
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


def _scan_worker(src: LabelledSource, k: int, n: int, conn) -> None:
    """Worker ``k`` of ``n``: decode images k, k + n, ... and send (index, problem or None)
    in batches on its own pipe (nothing shared with the other workers: killing one never
    leaves a lock held that another waits on)."""
    worker_init()
    out = []
    for i in range(k, len(src), n):
        try:
            img = src.image(i)
            err = None if img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 1 else f"bad shape {img.shape}"
        except FastSSLError as e:
            err = str(e)
        out.append((i, err))
        if len(out) == 64:
            conn.send(out)
            out = []
    conn.send(out)
    conn.send(None)  # done
    conn.close()


def scan(src: LabelledSource, workers: int, strict: bool, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Decode every image once, in ``workers`` processes; return the readable indices and the
    problems found. On any error or stop every worker is killed before this returns."""
    from multiprocessing.connection import wait

    ctx = mp.get_context("fork")
    bad: list[str] = []
    ok = np.ones(len(src), dtype=bool)
    procs, conns = [], []
    try:
        for k in range(max(1, min(workers, len(src)))):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_scan_worker, args=(src, k, workers, w), daemon=True)
            p.start()
            w.close()
            procs.append(p)
            conns.append(r)
        live = list(conns)
        with progress_bar(total=len(src), unit="img", desc="check", enabled=progress) as bar:
            while live:
                for c in wait(live):
                    try:
                        batch = c.recv()
                    except EOFError:  # a worker died without its end mark
                        raise FastSSLError("an image check worker died; run again with --workers 1") from None
                    if batch is None:
                        live.remove(c)
                        continue
                    bar.update(len(batch))
                    for i, err in batch:
                        if err:
                            if strict:
                                raise FastSSLError(f"{err} (`strict`: stopping; without it, bad images are skipped)")
                            ok[i] = False
                            bad.append(err)
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.exitcode is None:
                with contextlib.suppress(OSError, ValueError):
                    p.kill()
                p.join()
        for c in conns:
            c.close()
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

    dst = Path(dst)
    if not dst.name.endswith(".beton"):
        raise FastSSLError(f"output must end in .beton, got {dst}")
    if write_mode not in WRITE_MODES:
        raise FastSSLError(f"`write_mode` must be one of {', '.join(WRITE_MODES)}, got {write_mode!r}")
    if not 1 <= jpeg_quality <= 100:
        raise FastSSLError(f"`jpeg_quality` must be in 1..100, got {jpeg_quality}")
    if max_res is not None and max_res < 8:
        raise FastSSLError(f"`max_res` must be >= 8 pixels, got {max_res}")
    if workers is not None and int(workers) < 1:
        raise FastSSLError(f"`workers` must be >= 1, got {workers}")
    check_destination(dst, overwrite=overwrite, replace=is_beton)
    check_destination(index_path(dst), overwrite=overwrite, replace=is_class_index, what="class index")
    with claim(dst, index_path(dst)):  # for the life of the command: a second writer is refused
        check_destination(dst, overwrite=overwrite, replace=is_beton)
        check_destination(index_path(dst), overwrite=overwrite, replace=is_class_index, what="class index")
        return _convert(src, dst, indices, max_res, jpeg_quality, write_mode, strict, workers, progress)


def _convert(src, dst: Path, indices, max_res, jpeg_quality, write_mode, strict, workers, progress) -> dict:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    # None: every core; conversion runs in worker processes, at least one
    workers = max(1, len(os.sched_getaffinity(0)) if workers is None else int(workers))
    idx = np.arange(len(src)) if indices is None else np.asarray(indices, dtype=np.int64)
    t0 = time.perf_counter()
    sub = _Subset(src, idx)
    good, bad = scan(sub, workers, strict, progress)
    check_stop()
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
    # both files are complete before either takes its name: the index is written inside the
    # .beton's block, renamed first; the .beton right after (read_info needs both)
    with atomic_output(dst, replace=is_beton, what="output") as tmp:
        _write(DatasetWriter(str(tmp), fields, num_workers=workers), _Images(sub), list(good), dst, progress)
        check_stop()
        index["max_side"] = _max_side(tmp)
        index["checksum"] = block_checksums(tmp)
        check_stop()
        write_json(index_path(dst), index, replace=is_class_index, what="class index")
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


CHECK_BLOCK = 1 << 20  # bytes a checksum covers


def block_checksums(path: Path) -> dict:
    """CRC-32 of every 1 MiB block of ``path`` (the whole file: header, metadata, image data,
    allocation table), as one hex string of 8 digits a block."""

    sums = []
    with open(path, "rb") as f:
        while block := f.read(CHECK_BLOCK):
            sums.append(f"{zlib.crc32(block):08x}")
    return {"algorithm": "crc32", "block": CHECK_BLOCK, "size": path.stat().st_size, "blocks": "".join(sums)}


def _max_side(path: Path) -> int:
    from ffcv.reader import Reader

    meta = Reader(str(path)).metadata["f0"]
    return int(max(meta["width"].max(), meta["height"].max())) if len(meta) else 0


def is_class_index(p: Path) -> bool:
    """A ``NAME.classes.json`` written by ``data convert`` (what convert may replace)."""
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(d, dict) and {"classes", "counts", "num_samples"} <= d.keys()


is_beton = has_magic(b"\x02\x00")  # an FFCV header (format version 2) is what convert replaces


class _WorkerFailed(Exception):
    pass


_FAILURES = None  # a queue the writer's workers report errors to (inherited through fork)


def worker_init() -> None:
    """In a worker process: signals are the parent's to handle (Ctrl-C reaches the whole
    process group; the parent stops the workers), and the worker dies with its parent, however
    the parent ends (Linux ``PR_SET_PDEATHSIG``)."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _no_join_queue(*args, **kw):
    """FFCV's queues, without the exit-time join of their feeder thread: when the workers are
    stopped early, items left in a full pipe would make the parent wait forever at exit."""
    q = mp.get_context().Queue(*args, **kw)
    q.cancel_join_thread()
    return q


def _guarded_worker(*args):
    """FFCV's indexed-dataset writer worker; an error goes to the parent as (errno, text)
    instead of a traceback and a worker the parent waits for forever."""
    from ffcv.writer import worker_job_indexed_dataset

    worker_init()
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

    # FFCV's own bar follows the caller's choice, for this call only
    ffcv_bar, ffcv_queue = ffcv.writer.tqdm, ffcv.writer.Queue
    ffcv.writer.tqdm = functools.partial(progress_bar, enabled=progress, desc="write", unit="img")
    ffcv.writer.Queue = _no_join_queue
    try:
        _write_guarded(writer, dataset, indices, dst)
    finally:
        ffcv.writer.tqdm, ffcv.writer.Queue = ffcv_bar, ffcv_queue


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
    except BaseException as e:  # a worker failed, Ctrl-C, SIGTERM: stop every worker, free the memory
        done.set()
        _stop_workers(set(mp.active_children()) - before, writer)
        if not isinstance(e, _WorkerFailed):
            raise
        code, text = failed[0] if failed else (None, "a conversion worker failed")
        if code is not None:
            raise os_error(dst, OSError(code, os.strerror(code))) from None
        raise FastSSLError(f"could not write {dst}: {text}") from None
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, old)
        _FAILURES = None


def _stop_workers(procs, writer) -> None:
    for p in procs:
        with contextlib.suppress(OSError, ValueError):
            p.kill()  # their output is a temporary file that goes too
    for p in procs:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            p.join(5)
    shm = getattr(writer, "metadata_sm", None)
    if shm is not None and not isinstance(shm, int):
        with contextlib.suppress(OSError):
            shm.close()
            shm.unlink()


class _Subset(LabelledSource):
    """A view of ``indices`` of another source (same classes)."""

    def __init__(self, src: LabelledSource, indices: np.ndarray):
        self.src = src
        self.idx = np.asarray(indices, dtype=np.int64)
        super().__init__(src.name, src.classes, [src.keys[i] for i in self.idx], src.labels[self.idx])

    def image(self, i: int) -> np.ndarray:
        return self.src.image(int(self.idx[i]))


MAX_SIDE = 1 << 14  # no image side above this in a .beton fastssl reads (16384 px)
VERIFY_FULL = 2 << 30  # loaders check every block of files up to this size, the rest's structure


def read_info(beton: str | os.PathLike, verify: str = "structure") -> dict:
    """``{"num_samples": N, "classes": {name: count}}`` read back from the file itself, checked
    against its class index: the allocation table whole, every sample's metadata record inside
    the file and the image bounds, every label a class. ``verify``: ``"structure"`` (those
    checks and the checksums of the header, metadata and table blocks), ``"full"`` (every
    block's checksum: any changed byte is found), ``"auto"`` (full up to 2 GiB)."""
    require_ffcv()
    p = Path(beton)
    if not p.is_file():
        raise FastSSLError(f".beton not found: {p}")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's overflow warnings on a damaged header
        return _read_info(p, verify)


def _read_info(p: Path, verify: str) -> dict:
    from ffcv.reader import Reader

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
    ipath = index_path(p)
    if not ipath.is_file():
        raise FastSSLError(f"class index {ipath} is missing; convert the data again to write it")
    try:
        index = json.loads(ipath.read_text())
        classes = list(index["classes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FastSSLError(f"class index {ipath} is unreadable: {e}") from None
    _check_records(p, r, table, index)
    labels = np.asarray(r.metadata[f"f{r.field_names.index('label')}"]).astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise FastSSLError(f"class index {ipath} does not match {p}: label {labels.max()} but {len(classes)} classes")
    counts = np.bincount(labels, minlength=len(classes))
    by_name = {c: int(counts[k]) for k, c in enumerate(classes)}
    if index.get("counts") != by_name or index.get("num_samples") != int(r.num_samples):
        raise FastSSLError(f"class index {ipath} does not match {p} (counts differ); convert the data again")
    data_at = int(table["ptr"].min()) if len(table) else table_at
    verify_blocks(p, index.get("checksum"), verify, data_at, table_at)
    return {"num_samples": int(r.num_samples), "classes": by_name}


def _check_records(p: Path, r, table, index: dict) -> None:
    """Every image record: a known mode, sides in 1..the largest the conversion wrote, its data
    pointer the start of its sample's own allocation, raw pixels exactly filling it."""
    meta = r.metadata[f"f{r.field_names.index('image')}"]
    n = len(meta)
    if not n:
        return
    order = np.argsort(table["sample_id"], kind="stable")
    sid, ptr, nbytes = table["sample_id"][order], table["ptr"][order], table["size"][order]
    if len(sid) != n or (sid != np.arange(n)).any():
        raise FastSSLError(f"{p} is damaged: its allocation table does not list each sample once; convert it again")
    bound = int(index.get("max_side") or MAX_SIDE)
    w, h = meta["width"].astype(np.int64), meta["height"].astype(np.int64)
    problems = [
        (meta["mode"] > 1, "an unknown image mode"),
        ((w < 1) | (h < 1) | (w > bound) | (h > bound), f"image sides outside 1..{bound}"),
        (meta["data_ptr"] != ptr, "a data pointer outside its sample's data"),
        ((meta["mode"] == 1) & (w * h * 3 != nbytes.astype(np.int64)), "raw pixels that do not fill their data"),
    ]
    for bad_rows, what in problems:
        if bad_rows.any():
            i = int(np.flatnonzero(bad_rows)[0])
            raise FastSSLError(
                f"{p} is damaged: sample {i} has {what} ({int(bad_rows.sum())} samples); convert it again"
            )


_VERIFIED: set = set()  # (path, inode, size, mtime) fully verified in this process


def verify_blocks(p: Path, checksum: dict | None, verify: str, data_at: int, table_at: int) -> None:
    """Compare ``p``'s blocks with the checksums ``data convert`` recorded: every block
    (``full``), or those of the header, metadata and allocation table (``structure``)."""

    if verify not in ("structure", "full", "auto"):
        raise ValueError(verify)
    st = p.stat()
    if not checksum:
        if verify == "full":
            raise FastSSLError(f"{p} has no checksums (an older conversion): convert it again to verify it")
        return
    block, sums = int(checksum["block"]), checksum["blocks"]
    if int(checksum["size"]) != st.st_size or len(sums) != 8 * -(-st.st_size // block):
        raise FastSSLError(f"{p} is damaged: its size differs from what `data convert` wrote; convert it again")
    full = verify == "full" or (verify == "auto" and st.st_size <= VERIFY_FULL)
    key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if full and key in _VERIFIED:
        return
    n = len(sums) // 8
    if full:
        which = range(n)
    else:  # header + field descriptors + metadata, and the allocation table
        which = sorted({*range(0, -(-data_at // block)), *range(table_at // block, n)} & set(range(n)))
    with open(p, "rb") as f:
        for k in which:
            f.seek(k * block)
            if f"{zlib.crc32(f.read(block)):08x}" != sums[8 * k : 8 * k + 8]:
                raise FastSSLError(
                    f"{p} is damaged: bytes {k * block}..{min((k + 1) * block, st.st_size) - 1} differ from "
                    "what `data convert` wrote (checksum); convert it again"
                )
    if full:
        _VERIFIED.add(key)

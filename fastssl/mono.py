"""The single-image ("mono") source: one photo, a pyramid built once, batches from a backend.

``MonoSource`` yields the project's batch contract: ``uint8`` tensors of shape (B, 3, S, S) in
channels-last memory (so NHWC bytes) on the target device. Patch ``i`` of epoch ``e`` depends
only on ``(seed, e, i)`` (see :mod:`fastssl.spec`), so every backend, batch size, worker count
and number of DDP ranks sees the same patches.

Sharding: the epoch is cut into global batches of ``batch_size`` patches; rank ``r`` of ``W``
takes global batches ``r, r + W, r + 2W, ...``, so ranks see disjoint streams. Every rank runs
the same number of steps (DDP needs that); where the global batch count does not divide by
``W``, the last step of some ranks wraps around to the first batches, as torch's
DistributedSampler pads.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_output
from .errors import FastSSLError
from .image import load_image
from .spec import PAPER_EPOCH, AugmentSpec, PatchParams, check_image_fits, num_levels, sample_params

BACKENDS = ("auto", "numba", "torch", "dali")


def backend_available(name: str, device: torch.device) -> str | None:
    """None when ``name`` can run on ``device``, else the reason it cannot."""
    if name == "numba":  # runs on the CPU; on another device its batches are copied there
        try:
            import numba  # noqa: F401
        except ImportError:
            return "numba is not installed (pip install numba)"
        return None
    if name == "torch":
        return None
    if name == "dali":  # GPU operators on a CUDA device, DALI's CPU operators on the CPU
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            return "NVIDIA DALI is not installed (pip install 'fastssl[dali]')"
        return None
    return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto``: DALI on a CUDA device when installed, else torch there; numba on the CPU
    (torch when numba is missing)."""
    if name == "auto":
        if device.type == "cuda":
            return "dali" if backend_available("dali", device) is None else "torch"
        return "numba" if backend_available("numba", device) is None else "torch"
    why = backend_available(name, device)
    if why:
        raise FastSSLError(f"backend {name!r} is unavailable: {why}")
    return name


def resolve_device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FastSSLError(f"device {device!r} asked for, but CUDA is not available; use --device cpu")
    return dev


class Renderer:
    """Applies sampled parameters with one backend; holds the pyramid resident on its device.

    ``compile`` (torch backend): run the fixed-shape, synchronisation-free form of the chain
    under ``torch.compile`` (default: on CUDA, where the eager form's many small kernels and
    host syncs dominate; a compiler failure falls back to eager with a warning).
    """

    def __init__(
        self, image: np.ndarray, spec: AugmentSpec, backend: str = "auto", device="cpu", threads=None, compile=None
    ):
        from .kernels.pyramid import build_pyramid

        self.spec = spec
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.height, self.width = image.shape[:2]
        self._pool: list[np.ndarray] = []
        self.pyramid = build_pyramid(image, num_levels(self.height, self.width))
        if self.backend == "numba":
            import numba

            if threads:
                numba.set_num_threads(int(threads))
            self.threads = numba.get_num_threads()
        elif self.backend == "dali":
            self.threads = int(threads or len(os.sched_getaffinity(0)))
            self._dali = None  # built on first use, for the largest batch seen
            from .kernels.pyramid import build_atlas

            self._atlas = build_atlas(self.pyramid.levels)
            if self.device.type == "cuda":  # the pyramid stays resident on the GPU
                self._atlas.image = torch.from_numpy(self._atlas.image).to(self.device)
        else:
            from .kernels.torch_warp import TorchPyramid

            if threads and self.device.type == "cpu":
                torch.set_num_threads(int(threads))
            self.threads = torch.get_num_threads() if self.device.type == "cpu" else 0
            self.tpyr = TorchPyramid(self.pyramid.levels, self.device)
            self._compiled = None
            if compile if compile is not None else self.device.type == "cuda":
                from .kernels.torch_warp import run_fixed

                self._compiled = torch.compile(run_fixed)

    def params(self, start: int, stop: int, seed: int = 0, epoch: int = 0) -> PatchParams:
        return sample_params(self.spec, self.height, self.width, start, stop, seed=seed, epoch=epoch)

    def _buffer(self, n: int) -> np.ndarray:
        """An output batch, recycled once nothing else refers to it.

        A fresh 50 MB batch costs page faults on every first touch (measured: about a quarter
        of the kernel's time at S=256), so up to 3 buffers are kept and one is reused when its
        only references are this pool and the call (``sys.getrefcount`` == 3 below); a batch
        still held by the caller, or by a tensor made from it, is never overwritten.
        """
        S = self.spec.size
        for buf in self._pool:
            if buf.shape[0] == n and sys.getrefcount(buf) == 3:
                return buf
        buf = np.empty((n, S, S, 3), dtype=np.uint8)
        if len(self._pool) >= 3:
            self._pool.pop(0)
        self._pool.append(buf)
        return buf

    def render_numpy(self, p: PatchParams, out: np.ndarray | None = None) -> np.ndarray:
        """(n, S, S, 3) uint8 numpy (CPU) from the numba backend."""
        from .kernels import numba_warp

        if out is None:
            out = self._buffer(len(p))
        arrays = numba_warp.prepare(p.level_matrix(), p.box, p.level, p.jitter, p.factors, p.order)
        return numba_warp.run(self.pyramid, arrays, out)

    def _render_dali(self, p: PatchParams):
        from .kernels.dali_warp import DaliWarp

        if self._dali is None or self._dali.max_batch < len(p):
            gpu = self.device.type == "cuda"
            self._dali = DaliWarp(
                self.spec.size,
                self.spec.resized,
                max(len(p), 1),
                "gpu" if gpu else "cpu",
                (self.device.index or 0) if gpu else 0,
                self.threads,
            )
        return self._dali.run(self._atlas, p.level_matrix(), p.box, p.level, p.jitter, p.factors, p.order)

    def render(self, p: PatchParams) -> torch.Tensor:
        """(n, 3, S, S) uint8 channels-last tensor on the device."""
        if self.backend == "dali":
            out = self._render_dali(p)
            nhwc = out if isinstance(out, torch.Tensor) else torch.from_numpy(out)
            return nhwc.permute(0, 3, 1, 2)
        if self.backend == "numba":
            nhwc = torch.from_numpy(self.render_numpy(p))
            if self.device.type != "cpu":
                nhwc = nhwc.pin_memory().to(self.device, non_blocking=True)
            return nhwc.permute(0, 3, 1, 2)
        from .kernels import torch_warp

        dev = self.device
        t = lambda a, dt: torch.as_tensor(a, dtype=dt).to(dev, non_blocking=True)  # noqa: E731
        args = (
            self.tpyr,
            t(p.level_matrix(), torch.float64),
            t(p.box, torch.float64),
            t(p.level, torch.int64),
            t(p.jitter, torch.bool),
            t(p.factors, torch.float32),
            t(p.order, torch.int64),
            self.spec.size,
        )
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as e:  # a compiler failure must not stop a run: eager from here on
                import warnings

                warnings.warn(
                    f"torch.compile of the torch backend failed, running eager: {type(e).__name__}: {e}", stacklevel=2
                )
                self._compiled = None
        return torch_warp.run(*args)

    def render_nhwc(self, p: PatchParams) -> np.ndarray:
        """(n, S, S, 3) uint8 numpy from whichever backend (for export and comparison)."""
        if self.backend == "numba":
            return self.render_numpy(p)
        if self.backend == "dali" and self.device.type == "cpu":
            return self._render_dali(p)
        return self.render(p).permute(0, 2, 3, 1).cpu().numpy()


def image_for(image, spec: AugmentSpec) -> np.ndarray:
    """A path (None: the built-in photo) or an array, checked to fit ``spec``."""
    arr = image if isinstance(image, np.ndarray) else load_image(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise FastSSLError(f"image array must be (h, w, 3) uint8, got {arr.shape} {arr.dtype}")
    check_image_fits(spec, arr.shape[0], arr.shape[1])
    return arr


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class MonoSource:
    """Batches of augmented patches of one image.

    >>> src = MonoSource(None, AugmentSpec(size=64), batch_size=128, epoch_length=1024)
    >>> for batch in src: ...   # (128, 3, 64, 64) uint8, channels-last
    """

    def __init__(
        self,
        image: str | os.PathLike | np.ndarray | None = None,
        spec: AugmentSpec | None = None,
        *,
        backend: str = "auto",
        batch_size: int = 256,
        device="cpu",
        epoch_length: int = PAPER_EPOCH,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        threads: int | None = None,
        compile: bool | None = None,
    ):
        if batch_size < 1:
            raise FastSSLError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_length < 1:
            raise FastSSLError(f"epoch_length must be >= 1, got {epoch_length}")
        self.spec = spec or AugmentSpec()
        arr = image_for(image, self.spec)
        self.renderer = Renderer(arr, self.spec, backend, device, threads, compile)
        r, w = _dist_rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise FastSSLError(f"rank {self.rank} out of range for world size {self.world_size}")
        self.batch_size = batch_size
        self.epoch_length = epoch_length
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    @property
    def backend(self) -> str:
        return self.renderer.backend

    @property
    def device(self) -> torch.device:
        return self.renderer.device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def global_batches(self) -> int:
        f = math.floor if self.drop_last else math.ceil
        return max(int(f(self.epoch_length / self.batch_size)), 0)

    def __len__(self) -> int:
        return math.ceil(self.global_batches / self.world_size)

    def batch_range(self, step: int) -> tuple[int, int]:
        """Patch index range of this rank's ``step``-th batch."""
        g = step * self.world_size + self.rank
        if g >= self.global_batches:  # pad by wrapping, so every rank runs len(self) steps
            g %= self.global_batches
        start = g * self.batch_size
        return start, min(start + self.batch_size, self.epoch_length)

    def params(self, step: int) -> PatchParams:
        a, b = self.batch_range(step)
        return self.renderer.params(a, b, self.seed, self.epoch)

    def batch(self, step: int) -> torch.Tensor:
        return self.renderer.render(self.params(step))

    def __iter__(self):
        for step in range(len(self)):
            yield self.batch(step)


def export(
    image,
    n: int,
    out: str | os.PathLike,
    spec: AugmentSpec | None = None,
    *,
    seed: int = 0,
    backend: str = "auto",
    batch_size: int = 256,
    jpeg_quality: int = 95,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write patches 0..n-1 of epoch 0: a ``.npy`` (uint8, n x S x S x 3) or a JPEG folder.

    A folder is laid out as ``OUT/mono/0000000.jpg ...`` (one pseudo-class, so ImageFolder
    readers take it): the paper's fixed-dataset protocol. Written under a temporary name and
    renamed when complete, so an interrupted export leaves nothing behind.
    """
    from tqdm import tqdm

    spec = spec or AugmentSpec()
    if n < 1:
        raise FastSSLError(f"--n must be >= 1, got {n}")
    if not 1 <= jpeg_quality <= 100:
        raise FastSSLError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
    out = Path(out)
    as_npy = out.suffix.lower() == ".npy"
    if out.exists() and not overwrite:
        raise FastSSLError(f"output exists: {out} (remove it or pass --overwrite)")
    if not out.parent.exists():
        raise FastSSLError(f"output folder does not exist: {out.parent}")
    arr = image_for(image, spec)
    rend = Renderer(arr, spec, backend, "cpu")
    S = spec.size
    from PIL import Image

    with atomic_output(out, folder=not as_npy) as tmp:
        if as_npy:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, S, S, 3))
        else:
            (tmp / "mono").mkdir()
        bar = tqdm(total=n, unit="patch", unit_scale=True, desc=f"export {rend.backend}", disable=not progress)
        for a in range(0, n, batch_size):
            b = min(a + batch_size, n)
            p = rend.params(a, b, seed=seed, epoch=0)
            if as_npy and rend.backend == "numba":
                rend.render_numpy(p, out=mm[a:b])
            else:
                x = rend.render_nhwc(p)
                if as_npy:
                    mm[a:b] = x
                else:
                    for i in range(b - a):
                        Image.fromarray(x[i]).save(tmp / "mono" / f"{a + i:07d}.jpg", quality=jpeg_quality)
            bar.update(b - a)
        bar.close()
        if as_npy:
            mm.flush()
            del mm
    return out


def preview(
    image,
    out: str | os.PathLike,
    spec: AugmentSpec | None = None,
    *,
    n: int = 64,
    seed: int = 0,
    backend: str = "auto",
    pad: int = 2,
) -> Path:
    """A grid of ``n`` sample patches as a PNG (like the paper's figure)."""
    from PIL import Image

    spec = spec or AugmentSpec()
    if n < 1:
        raise FastSSLError(f"--n must be >= 1, got {n}")
    out = Path(out)
    if not out.parent.exists():
        raise FastSSLError(f"output folder does not exist: {out.parent}")
    arr = image_for(image, spec)
    rend = Renderer(arr, spec, backend, "cpu")
    x = rend.render_nhwc(rend.params(0, n, seed=seed))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    S = spec.size
    grid = np.full((rows * (S + pad) + pad, cols * (S + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (S + pad) : pad + r * (S + pad) + S, pad + c * (S + pad) : pad + c * (S + pad) + S] = x[i]
    with atomic_output(out) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return out

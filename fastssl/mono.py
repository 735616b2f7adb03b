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

import dataclasses
import hashlib
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import NPY, PNG, atomic_output, check_destination, claim, reserve
from .distributed import rank_world, resolve_device
from .errors import FastSSLError
from .image import IMAGE_EXTS, load_image
from .kernels import BACKENDS, backend_class, unavailable
from .kernels.backend import UnsupportedInput
from .kernels.pyramid import build_pyramid
from .progress import bar as progress_bar
from .signals import check_stop
from .spec import PAPER_EPOCH, AugmentSpec, PatchParams, check_image_fits, num_levels, sample_params


def backend_names() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


def backend_available(name: str, device) -> str | None:
    """None when backend ``name`` can render on ``device``, else the reason it cannot."""

    return unavailable(name, torch.device(device).type)


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto``: of the backends available on the device's type, the one that ranks first there
    (each declares its ``auto_rank``: torch, then DALI, on a GPU; Numba, then torch, on the CPU)."""
    if name == "auto":
        ranked = []
        for b in BACKENDS:
            if backend_available(b, device) is None:
                rank = backend_class(b).auto_rank.get(device.type)
                if rank is not None:
                    ranked.append((rank, b))
        if not ranked:
            raise FastSSLError(f"no augmentation backend renders on {device.type}")
        return min(ranked)[1]
    why = backend_available(name, device)
    if why:
        raise FastSSLError(f"backend {name!r} is unavailable: {why}")
    return name


def images_digest(images) -> str:
    """SHA-256 of source images (each one's shape and pixels, in order): which photos a run's
    patches come from, recorded in its recipe so that a run on other photos is never taken for
    it."""
    h = hashlib.sha256()
    for a in images:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}:{a.dtype};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


class Renderer:
    """Applies sampled parameters with one backend (see :mod:`fastssl.kernels`), which holds the
    pyramid resident on its device. ``compile``: passed to the backend (torch: run the chain
    under ``torch.compile``; default on CUDA).

    ``image`` is one (h, w, 3) uint8 array or a list of them: with several, each patch's source
    image is sampled with its parameters. A backend that takes several images at once (numba,
    torch, DALI: ``many_images``) holds every pyramid in one buffer (numba, torch: packed texels;
    DALI: an atlas) and renders a batch from many images in one call; otherwise, or when they are
    too large together, one backend instance holds each image's pyramid and a batch is rendered
    image by image into one output.
    """

    def __init__(self, image, spec: AugmentSpec, backend: str = "auto", device="cpu", threads=None, compile=None):
        images = image if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise FastSSLError("no source image given")
        self.spec = spec
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.heights = np.array([a.shape[0] for a in images], dtype=np.int64)
        self.widths = np.array([a.shape[1] for a in images], dtype=np.int64)
        self.height, self.width = int(self.heights[0]), int(self.widths[0])
        self._pool: list[np.ndarray] = []
        cls = backend_class(self.backend)
        self.impls = []
        pyramids = [build_pyramid(a, num_levels(a.shape[0], a.shape[1])) for a in images]
        pyramid = pyramids[-1]
        together = len(images) > 1 and cls.many_images
        self._first = None  # with one backend for several images: the index of each image's level 0
        try:
            if together:
                levels = [p.levels for p in pyramids]
                try:
                    self.impls.append(cls(levels, spec.size, spec.resized, self.device, threads, compile=compile))
                    self._first = np.cumsum([0] + [len(lv) for lv in levels[:-1]]).astype(np.int64)
                except UnsupportedInput:  # too large together (e.g. 32-bit indices): one instance each
                    together = False
            if not together:
                for p in pyramids:
                    self.impls.append(cls(p.levels, spec.size, spec.resized, self.device, threads, compile=compile))
        except UnsupportedInput as e:
            raise FastSSLError(str(e)) from None
        self._num_images = len(images)
        self.source_sha256 = images_digest(images)
        self.impl = self.impls[0]
        self._depths = np.array([num_levels(int(h), int(w)) for h, w in zip(self.heights, self.widths, strict=True)])
        self.pyramid = pyramid if len(images) == 1 else None
        self.threads = self.impl.threads

    @property
    def num_images(self) -> int:
        return self._num_images

    def params(self, start: int, stop: int, seed: int = 0, epoch: int = 0) -> PatchParams:
        if self.num_images == 1:
            return sample_params(self.spec, self.height, self.width, start, stop, seed=seed, epoch=epoch)
        return sample_params(
            self.spec, self.heights, self.widths, start, stop, seed=seed, epoch=epoch, depths=self._depths
        )

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

    def _render(self, p: PatchParams, out=None):
        if p.size != self.spec.size:
            raise FastSSLError(f"parameters for {p.size} px patches given to a renderer of {self.spec.size} px")
        if out is None and self.impl.writes_into:
            out = self._buffer(len(p))
        if self.num_images == 1:
            return self.impl.render(p.for_render(), out=out)
        if self._first is not None:  # one call: each patch's level counted over all the images
            rp = p.for_render()
            return self.impl.render(dataclasses.replace(rp, level=self._first[p.image] + rp.level), out=out)
        for j in np.unique(p.image):  # one render per source image in the batch, into one output
            idx = np.flatnonzero(p.image == j)
            q = p.subset(idx)
            part = self.impls[j].render(q.for_render())
            if out is None:
                shape = (len(p), *part.shape[1:])
                out = np.empty(shape, np.uint8) if isinstance(part, np.ndarray) else part.new_empty(shape)
            if isinstance(out, np.ndarray):
                out[idx] = part if isinstance(part, np.ndarray) else part.cpu().numpy()
            else:
                out[torch.as_tensor(idx, device=out.device)] = part
        return out

    def render_numpy(self, p: PatchParams, out: np.ndarray | None = None) -> np.ndarray:
        """(n, S, S, 3) uint8 NumPy from a CPU backend that writes into buffers (numba)."""
        if not self.impl.writes_into:
            raise ValueError(f"backend {self.backend} does not render into NumPy buffers")
        return self._render(p, out)

    def render(self, p: PatchParams) -> torch.Tensor:
        """(n, 3, S, S) uint8 channels-last tensor on the device."""
        nhwc = self._render(p)
        if isinstance(nhwc, np.ndarray):
            nhwc = torch.from_numpy(nhwc)
        if nhwc.device.type == "cpu" and self.device.type == "cuda":
            nhwc = nhwc.pin_memory().to(self.device, non_blocking=True)
        elif nhwc.device.type != self.device.type:
            nhwc = nhwc.to(self.device)
        return nhwc.permute(0, 3, 1, 2)

    def render_nhwc(self, p: PatchParams) -> np.ndarray:
        """(n, S, S, 3) uint8 NumPy from whichever backend (for export and comparison)."""
        x = self._render(p)
        return x if isinstance(x, np.ndarray) else x.cpu().numpy()


def image_for(image, spec: AugmentSpec) -> np.ndarray:
    """A path (None: the built-in photo; ``paper:NAME``) or an array, checked to fit ``spec``."""
    arr = image if isinstance(image, np.ndarray) else load_image(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise FastSSLError(f"image array must be (h, w, 3) uint8, got {arr.shape} {arr.dtype}")
    check_image_fits(spec, arr.shape[0], arr.shape[1])
    return arr


def folder_images(image):
    """The image files of a folder, in name order (``image`` itself when it is no folder)."""
    if isinstance(image, (str, os.PathLike)) and Path(image).is_dir():
        files = sorted(p for p in Path(image).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise FastSSLError(f"no images in folder {image}")
        return files
    return image


def images_for(image, spec: AugmentSpec):
    """One image (an array), or a list of them for several sources: ``image`` may be a list of
    paths / arrays, or a folder (its image files in name order)."""
    image = folder_images(image)
    if isinstance(image, (list, tuple)):
        if not image:
            raise FastSSLError("no source image given")
        arrays = [image_for(x, spec) for x in image]
        return arrays[0] if len(arrays) == 1 else arrays
    return image_for(image, spec)


class MonoSource:
    """Batches of augmented patches of one image (or of several: a list, or a folder).

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
        self.renderer = Renderer(images_for(image, self.spec), self.spec, backend, device, threads, compile)
        r, w = rank_world()
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


def _is_export_folder(p: Path) -> bool:
    """An earlier JPEG export: only ``mono/`` holding only ``NNNNNNN.jpg`` files."""
    try:
        if [x.name for x in p.iterdir()] != ["mono"] or not (p / "mono").is_dir():
            return False
        return all(re.fullmatch(r"\d{7,}\.jpg", f.name) for f in (p / "mono").iterdir())
    except OSError:
        return False


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
    spec = spec or AugmentSpec()
    if n < 1:
        raise FastSSLError(f"`n` must be >= 1, got {n}")
    if batch_size < 1:
        raise FastSSLError(f"`batch_size` must be >= 1, got {batch_size}")
    if not 1 <= jpeg_quality <= 100:
        raise FastSSLError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
    out = Path(out)
    as_npy = out.suffix.lower() == ".npy"
    replace = NPY if as_npy else _is_export_folder
    check_destination(out, folder=not as_npy, overwrite=overwrite, replace=replace)
    with claim(out):  # for the life of the command: a second export to ``out`` is refused
        check_destination(out, folder=not as_npy, overwrite=overwrite, replace=replace)
        if as_npy:
            _check_free(out, n * spec.size * spec.size * 3 + 4096)
        rend = Renderer(images_for(image, spec), spec, backend, "cpu")
        _export(rend, n, out, as_npy, replace, seed, batch_size, jpeg_quality, progress)
    return out


def _check_free(out: Path, need: int) -> None:
    """Refuse, before anything is reserved, an output larger than the free space (reserving it
    all would leave other writers on that file system without space)."""

    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise FastSSLError(
            f"could not write {out}: no space left on device (it needs {need / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB are free; nothing was written)"
        )


def _export(rend, n, out, as_npy, replace, seed, batch_size, jpeg_quality, progress) -> None:

    S = rend.spec.size
    with atomic_output(out, folder=not as_npy, replace=replace) as tmp:
        if as_npy:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, S, S, 3))
            # the blocks now: a full disk is an error here, not a SIGBUS when a page is first written
            reserve(tmp, mm.offset + mm.nbytes)
        else:
            (tmp / "mono").mkdir()
        bar = progress_bar(total=n, unit="patch", unit_scale=True, desc=f"export {rend.backend}", enabled=progress)
        for a in range(0, n, batch_size):
            b = min(a + batch_size, n)
            p = rend.params(a, b, seed=seed, epoch=0)
            if as_npy and rend.impl.writes_into:  # rendered in place, straight into the file
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
        check_stop()


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

    spec = spec or AugmentSpec()
    if n < 1:
        raise FastSSLError(f"`n` must be >= 1, got {n}")
    out = check_destination(out, replace=PNG)
    if out.suffix.lower() != ".png":
        raise FastSSLError(f"the preview is a PNG: give an output ending in .png, got {out}")
    rend = Renderer(images_for(image, spec), spec, backend, "cpu")
    x = rend.render_nhwc(rend.params(0, n, seed=seed))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    S = spec.size
    grid = np.full((rows * (S + pad) + pad, cols * (S + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (S + pad) : pad + r * (S + pad) + S, pad + c * (S + pad) : pad + c * (S + pad) + S] = x[i]
    with atomic_output(out, replace=PNG) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return out

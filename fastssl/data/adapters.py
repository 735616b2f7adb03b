"""The trainer's data interface, and adapters from the engine's sources to it.

The trainer needs ``len(data)`` (steps per epoch for this rank), ``data.set_epoch(e)`` and
``data.iter_from(step)``: the batches ``(images, labels or None)`` of the epoch from ``step``
on, so a resumed run continues at the exact batch it stopped at.
"""

from __future__ import annotations

from itertools import islice

import numpy as np
import torch

from ..distributed import rank_world
from ..errors import FastSSLError
from ..seeds import epoch_seed
from ..spec import PatchParams


class MonoData:
    """Adapts a MonoSource (no labels) to the trainer's data interface."""

    def __init__(self, src):
        self.src = src

    @property
    def source_sha256(self) -> str:
        return self.src.renderer.source_sha256

    def __len__(self):
        return len(self.src)

    def set_epoch(self, epoch: int):
        self.src.set_epoch(epoch)

    def iter_from(self, step: int):
        for s in range(step, len(self.src)):
            yield self.src.batch(s), None


class FixedData:
    """A fixed dataset with index access, for methods that need one (DeepCluster). Each epoch
    takes the order and per-item targets the method set (``set_targets``), else a seeded
    permutation and no targets; rank ``r`` of ``W`` takes every ``W``-th index of it. Batches
    reach the device channels-last. Subclasses say how items are fetched (``_get``)."""

    def __init__(self, n: int, batch_size: int, device, seed: int = 0):
        self.n, self.batch_size = int(n), int(batch_size)
        self.device = torch.device(device)
        self.seed, self.epoch = int(seed), 0
        self.targets: torch.Tensor | None = None
        self.order: torch.Tensor | None = None
        self.rank, self.world = rank_world()

    def _get(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 (len(idx), 3, H, W) images of these indices (any device)."""
        raise NotImplementedError

    def __len__(self):
        n = len(self.order) if self.order is not None else self.n
        return n // self.world // self.batch_size

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def set_targets(self, targets: torch.Tensor, order: torch.Tensor):
        self.targets, self.order = targets.cpu(), order.cpu()

    def _to(self, x):
        return x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def all_batches(self, batch_size: int):
        """Every item once, in index order (for features)."""
        yield from self.range_batches(0, self.n, batch_size)

    def range_batches(self, lo: int, hi: int, batch_size: int):
        """Items ``lo .. hi - 1`` in index order, ``batch_size`` at a time."""
        for a in range(lo, hi, batch_size):
            yield self._to(self._get(torch.arange(a, min(a + batch_size, hi))))

    def iter_from(self, step: int):
        if self.order is not None:
            order = self.order
        else:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g)
        shard = order[self.rank :: self.world]
        for s in range(step, len(self)):
            idx = shard[s * self.batch_size : (s + 1) * self.batch_size]
            y = None if self.targets is None else self.targets[idx].to(self.device, non_blocking=True)
            yield self._to(self._get(idx)), y


class TensorData(FixedData):
    """A fixed dataset held in memory: uint8 (N, 3, H, W) images (the labelled split decoded once)."""

    def __init__(self, images: torch.Tensor, batch_size: int, device, seed: int = 0):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise FastSSLError(f"TensorData needs uint8 (N, 3, H, W) images, got {tuple(images.shape)} {images.dtype}")
        super().__init__(len(images), batch_size, device, seed)
        self.images = images

    def _get(self, idx):
        return self.images[idx]


class IndexedPatches(FixedData):
    """Patches ``0 .. n-1`` of epoch 0 of a patch stream, rendered when asked for, never held.

    The counter-based sampler makes patch ``i`` a function of ``(seed, 0, i)``: its parameters
    are drawn once (125 bytes a patch: 160 MB for 1.28M patches) and any set of indices
    is rendered from them, so a fixed dataset of 1.28M patches at 224 px (193 GB of pixels)
    costs its parameters, not its pixels. ``renderer`` is a :class:`~fastssl.mono.Renderer`.
    """

    FIELDS = ("matrix", "box", "level", "jitter", "factors", "order", "image")
    BYTES_PER_PATCH = 48 + 48 + 4 + 1 + 16 + 4 + 4  # the FIELDS of one patch

    def __init__(self, renderer, n: int, batch_size: int, device, seed: int = 0, chunk: int = 65536):
        super().__init__(n, batch_size, device, seed)
        self.renderer = renderer
        parts = [renderer.params(a, min(a + chunk, n), seed=seed, epoch=0) for a in range(0, n, chunk)]
        self.params = {f: np.concatenate([getattr(p, f) for p in parts]) for f in self.FIELDS}
        self.size = renderer.spec.size

    @property
    def source_sha256(self) -> str:
        return self.renderer.source_sha256

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.params.values())

    def _get(self, idx):
        i = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)
        kw = {f: a[i] for f, a in self.params.items()}
        n = len(i)
        p = PatchParams(
            size=self.size,
            crop=np.zeros((n, 4)),
            angle=np.zeros(n),
            shear=np.zeros(n),
            flips=np.zeros((n, 2), bool),
            **kw,
        )
        return self.renderer.render(p)  # a recycled buffer stays alive while this batch refers to it


class LoaderData:
    """Adapts a labelled Loader; ``use_labels=False`` hides labels (RotNet on a labelled set)."""

    def __init__(self, loader, use_labels: bool = True):
        self.loader = loader
        self.use_labels = use_labels

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch: int):
        self.loader.set_epoch(epoch)

    def iter_from(self, step: int):
        for x, y in islice(iter(self.loader), step, None):
            yield x, (y if self.use_labels else None)

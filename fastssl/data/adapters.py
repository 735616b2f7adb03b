"""The trainer's data interface, and adapters from the engine's sources to it.

The trainer needs ``len(data)`` (steps per epoch for this rank), ``data.set_epoch(e)`` and
``data.iter_from(step)``: the batches ``(images, labels or None)`` of the epoch from ``step``
on, so a resumed run continues at the exact batch it stopped at.
"""

from __future__ import annotations

from itertools import islice

import torch

from ..errors import FastSSLError


class MonoData:
    """Adapts a MonoSource (no labels) to the trainer's data interface."""

    def __init__(self, src):
        self.src = src

    def __len__(self):
        return len(self.src)

    def set_epoch(self, epoch: int):
        self.src.set_epoch(epoch)

    def iter_from(self, step: int):
        for s in range(step, len(self.src)):
            yield self.src.batch(s), None


class TensorData:
    """A fixed, in-memory dataset: uint8 (N, 3, H, W) images, for methods that need index
    access (DeepCluster). Each epoch takes the order and per-image targets the method set
    (``set_targets``), else a seeded permutation and no targets; rank ``r`` of ``W`` takes
    every ``W``-th index of it. Batches move to the device channels-last."""

    def __init__(self, images: torch.Tensor, batch_size: int, device, seed: int = 0):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise FastSSLError(f"TensorData needs uint8 (N, 3, H, W) images, got {tuple(images.shape)} {images.dtype}")
        self.images, self.batch_size = images, int(batch_size)
        self.device = torch.device(device)
        self.seed, self.epoch = int(seed), 0
        self.targets: torch.Tensor | None = None
        self.order: torch.Tensor | None = None
        from ..distributed import rank_world

        self.rank, self.world = rank_world()

    def __len__(self):
        n = len(self.order) if self.order is not None else len(self.images)
        return n // self.world // self.batch_size

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def set_targets(self, targets: torch.Tensor, order: torch.Tensor):
        self.targets, self.order = targets.cpu(), order.cpu()

    def _to(self, x):
        return x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def all_batches(self, batch_size: int):
        """Every image once, in index order (for features)."""
        for a in range(0, len(self.images), batch_size):
            yield self._to(self.images[a : a + batch_size])

    def iter_from(self, step: int):
        if self.order is not None:
            order = self.order
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.images), generator=g)
        shard = order[self.rank :: self.world]
        for s in range(step, len(self)):
            idx = shard[s * self.batch_size : (s + 1) * self.batch_size]
            y = None if self.targets is None else self.targets[idx].to(self.device, non_blocking=True)
            yield self._to(self.images[idx]), y


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

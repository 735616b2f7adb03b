"""Loaders for labelled data, all yielding the batch contract: ``(images, labels)`` with
images ``uint8`` (B, 3, res, res) in channels-last memory on the target device and labels
``int64`` (B,) on the same device.

- FFCV (a ``.beton``): the crop (random-resized or centre) and the flip run inside FFCV's
  compiled decoder, drawn from ``(seed, epoch, sample)`` (:mod:`.ffcv_ops`); batches land on
  the device without a float copy. ``distributed=True``
  shards by ``torch.distributed`` rank (run under torchrun).
- PyTorch fallback (a folder / archive / CIFAR source, or when FFCV is not installed): a
  ``DataLoader`` with PIL decoding and the same crop and flip, ``workers`` processes.

Anything beyond FFCV's operations (rotation, hue jitter, normalisation) happens on the device
after loading. ``ten_crop=True`` (evaluation) decodes a centre square at ``res / crop_ratio``
and makes the ten crops (four corners + centre, and their mirror images) on the device: the
batch then holds ``10 * B`` images, sample-major (sample 0's ten crops first), with ``B``
labels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import FastSSLError
from ..seeds import epoch_seed
from .beton import FFCV_INSTALL, import_ffcv, keep_threads, read_info
from .sources import LabelledSource, open_source


def ffcv_available() -> bool:
    return import_ffcv()


def ten_crop(x: torch.Tensor, res: int) -> torch.Tensor:
    """(B, 3, H, W) -> (10 B, 3, res, res): corners, centre, then the same mirrored."""
    B, C, H, W = x.shape
    if min(H, W) < res:
        raise FastSSLError(f"ten-crop of {res} px needs images of at least {res} px, got {H}x{W}")
    t, left = (H - res) // 2, (W - res) // 2
    boxes = [(0, 0), (0, W - res), (H - res, 0), (H - res, W - res), (t, left)]
    crops = [x[:, :, i : i + res, j : j + res] for i, j in boxes]
    crops += [c.flip(3) for c in crops]
    out = torch.stack(crops, dim=1).reshape(B * 10, C, res, res)
    return out.contiguous(memory_format=torch.channels_last)


def _random_box(h: int, w: int, scale, ratio, rng: np.random.Generator):
    """torchvision's RandomResizedCrop box: 10 tries, then the largest centred box."""
    area = h * w
    log_r = np.log(ratio)
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(a * r)))
        ch = int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_r = w / h
    if in_r < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_r > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class _PILDataset(torch.utils.data.Dataset):
    """PIL decode + the same crop and flip as the FFCV pipeline; returns HWC uint8."""

    def __init__(self, src: LabelledSource, indices, res, train, scale, ratio, crop_ratio, seed):
        self.src, self.idx = src, np.asarray(indices, dtype=np.int64)
        self.res, self.train, self.scale, self.ratio, self.crop_ratio, self.seed = (
            res,
            train,
            scale,
            ratio,
            crop_ratio,
            seed,
        )
        self.epoch = 0

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, k):
        i = int(self.idx[k])
        img = Image.fromarray(self.src.image(i))
        w, h = img.size
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            top, left, ch, cw = _random_box(h, w, self.scale, self.ratio, rng)
            flip = rng.random() < 0.5
        else:
            c = int(self.crop_ratio * min(h, w))
            top, left, ch, cw = (h - c) // 2, (w - c) // 2, c, c
            flip = False
        out = img.resize((self.res, self.res), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
        a = np.asarray(out, dtype=np.uint8)
        if flip:
            a = a[:, ::-1]
        return np.ascontiguousarray(a), int(self.src.labels[i])


def _collate(batch):
    x = torch.from_numpy(np.stack([b[0] for b in batch]))
    y = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    return x, y


class Loader:
    """Iterate ``(images, labels)`` batches; ``len()`` is batches per epoch for this rank."""

    def __init__(
        self,
        data,
        *,
        batch_size: int,
        train: bool,
        res: int,
        device="cpu",
        distributed: bool = False,
        workers: int | None = None,
        seed: int = 0,
        ten_crop: bool = False,
        crop_ratio: float = 1.0,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        drop_last: bool | None = None,
        indices=None,
        backend: str = "auto",
    ):
        if batch_size < 1:
            raise FastSSLError(f"batch size must be >= 1, got {batch_size}")
        if res < 1:
            raise FastSSLError(f"resolution must be >= 1, got {res}")
        if not 0 < crop_ratio <= 1:
            raise FastSSLError(f"crop ratio must be in (0, 1], got {crop_ratio}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise FastSSLError("CUDA device asked for, but CUDA is not available: use `device` cpu")
        self.res, self.train, self.ten = res, train, ten_crop and not train
        self.batch_size = batch_size
        # None: every core; 0: the PyTorch fallback loads in this process (FFCV always uses >= 1 thread)
        self.workers = len(os.sched_getaffinity(0)) if workers is None else int(workers)
        if self.workers < 0:
            raise FastSSLError(f"`workers` must be >= 0, got {workers}")
        drop_last = train if drop_last is None else drop_last
        decode_res = int(round(res / crop_ratio)) if self.ten else res
        eval_ratio = 1.0 if self.ten else crop_ratio
        is_beton = isinstance(data, (str, os.PathLike)) and str(data).endswith(".beton")
        if backend == "auto":
            backend = "ffcv" if is_beton else "pytorch"
        if backend == "ffcv":
            if not is_beton:
                raise FastSSLError("the FFCV loader reads a .beton; convert the data with `fastssl data convert`")
            if not ffcv_available():
                raise FastSSLError(
                    f"reading {data} needs FFCV ({FFCV_INSTALL}), or pass the image folder/archive to use the "
                    "PyTorch fallback"
                )
            if not Path(data).is_file():
                raise FastSSLError(f".beton not found: {data}")
            self._build_ffcv(
                str(data), train, decode_res, eval_ratio, scale, ratio, distributed, seed, drop_last, indices
            )
        elif backend == "pytorch":
            if is_beton:
                raise FastSSLError("a .beton needs the FFCV loader (backend 'ffcv'); the fallback reads image sources")
            src = data if isinstance(data, LabelledSource) else open_source(data)
            self._build_torch(src, train, decode_res, eval_ratio, scale, ratio, distributed, seed, drop_last, indices)
        else:
            raise FastSSLError(f"unknown loader backend {backend!r}; choose auto, ffcv or pytorch")
        self.backend = backend

    # ------------------------------------------------------------------ FFCV
    def _build_ffcv(self, path, train, res, crop_ratio, scale, ratio, distributed, seed, drop_last, indices):
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
        from ffcv.loader import Loader as FFCVLoader
        from ffcv.loader import OrderOption
        from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

        from .ffcv_ops import SeededResizedCrop

        # schema, truncation, records and class index, with clear errors; every block's checksum
        # for files up to 2 GiB (once per process), the header's, metadata's and table's above
        read_info(path, verify="auto")
        nb = self.device.type == "cuda"
        self._crop = None
        if train:  # crops and flips follow (seed, epoch, sample): a run is repeatable
            self._crop = SeededResizedCrop((res, res), scale, ratio, seed)
            image = [self._crop]
        else:
            image = [CenterCropRGBImageDecoder((res, res), ratio=crop_ratio)]
        # on the CPU the batch stays where the pipeline wrote it: a ToDevice there is a torch copy
        # in FFCV's thread, whose OpenMP team then lives beside the training step's for as long
        # as that thread does, more threads than cores, and libgomp stops letting idle threads
        # spin (the step ran 1.6x slower: benchmarks/ffcv_thread.py)
        move = [ToDevice(self.device, non_blocking=nb)] if self.device.type != "cpu" else []
        image += [ToTensor(), *move, ToTorchImage(channels_last=True)]
        label = [IntDecoder(), ToTensor(), Squeeze(1), *move]
        with keep_threads():  # FFCV's constructor sets the process's thread counts to its workers'
            self._ffcv = FFCVLoader(
                path,
                batch_size=self.batch_size,
                num_workers=max(1, min(self.workers, len(os.sched_getaffinity(0)))),  # threads: at most the cores
                order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                distributed=distributed,
                seed=seed,
                drop_last=drop_last,
                indices=None if indices is None else np.asarray(indices),
                pipelines={"image": image, "label": label},
                os_cache=True,
            )
        self._dl = None

    # --------------------------------------------------------------- PyTorch
    def _build_torch(self, src, train, res, crop_ratio, scale, ratio, distributed, seed, drop_last, indices):
        idx = np.arange(len(src)) if indices is None else np.asarray(indices)
        self._ds = _PILDataset(src, idx, res, train, scale, ratio, crop_ratio, seed)
        self._sampler = None
        if distributed:
            self._sampler = torch.utils.data.DistributedSampler(self._ds, shuffle=train, seed=seed, drop_last=drop_last)
        self._gen = gen = torch.Generator().manual_seed(seed)
        self._seed = seed
        self._dl = torch.utils.data.DataLoader(
            self._ds,
            batch_size=self.batch_size,
            shuffle=train and self._sampler is None,
            sampler=self._sampler,
            num_workers=self.workers,
            collate_fn=_collate,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
            generator=gen,
        )
        self._ffcv = None
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Order, crops and flips of ``epoch``: the same for the same (seed, epoch), so a resumed
        run sees the batches it would have seen and a run repeated gives the same numbers."""
        if self._ffcv is not None:
            self._ffcv.next_epoch = epoch  # FFCV's shuffle is a function of (seed, epoch)
            if self._crop is not None:
                self._crop.set_epoch(epoch)
            return
        self._epoch = epoch
        self._ds.epoch = epoch
        self._gen.manual_seed(epoch_seed(self._seed, epoch))
        if self._sampler is not None:
            self._sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._ffcv) if self._ffcv is not None else len(self._dl)

    def __iter__(self):
        if self._ffcv is not None:
            with keep_threads():  # FFCV's iter() sets the process's thread counts again
                batches = iter(self._ffcv)
            for x, y in batches:
                yield (ten_crop(x, self.res) if self.ten else x), y
            return
        nb = self.device.type == "cuda"
        for x, y in self._dl:
            x = x.to(self.device, non_blocking=nb).permute(0, 3, 1, 2)
            y = y.to(self.device, non_blocking=nb)
            yield (ten_crop(x, self.res) if self.ten else x), y

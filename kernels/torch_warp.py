"""Warp + colour jitter with torch ops: one ``grid_sample`` over the pyramid atlas, batched colour ops.

Runs on CPU and CUDA with the same parameters as the Numba kernel. It is the portable GPU path
and the cross-check for every other backend: same coordinates (pixel centres at integers,
clamp-to-edge inside the crop box, fill 0 outside), same colour formulas in float32, same
strided mean for contrast, rounding once at the end (round half up).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .backend import GREY as _W
from .backend import MEAN_STRIDE, Backend
from .pyramid import atlas_of


class TorchPyramid:
    """The pyramid as one float32 (1, 3, H, W) atlas on one device (of several images: each
    image's atlas on shelves of one sheet, ``first[i]`` the index of image i's level 0).

    Level 0 sits at the left, the smaller levels stacked in a column to its right, each with a
    one-texel border replicating its edge. Sampling a level at coordinates clamped to its own
    extent is then exactly ``padding_mode="border"`` on that level alone, and the whole batch,
    whatever its levels, is one ``grid_sample`` call with no host synchronisation.
    """

    def __init__(self, levels, device):
        self.device = torch.device(device)
        at, self.first = atlas_of(levels)
        height, width = at.image.shape[:2]
        self.atlas = torch.from_numpy(at.image).to(self.device).permute(2, 0, 1).unsqueeze(0).float().contiguous()
        self.origin = torch.tensor(at.origin, dtype=torch.float64, device=self.device)
        self.limit = torch.tensor(at.shape - 1, dtype=torch.float64, device=self.device)
        self.scale = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64, device=self.device)


def _grey(x):
    return _W[0] * x[:, 0] + _W[1] * x[:, 1] + _W[2] * x[:, 2]


def _hue(x, shift):
    """Hue rotation through HSV without branches: h from the max channel, then each channel
    f(n) = V - (max - min) * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6 for n = 5, 3, 1
    (R, G, B). The same colour as HSV's sector table, as the Numba kernel's own form (there
    min + C * t with t from |h - c| per channel) gives, to rounding; grey pixels stay grey."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    cr = maxc - minc
    inv = torch.where(cr > 0, 1.0 / torch.where(cr > 0, cr, torch.ones_like(cr)), torch.zeros_like(cr))
    rc = (maxc - r) * inv
    gc = (maxc - g) * inv
    bc = (maxc - b) * inv
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h / 6.0 + 1.0 + shift.view(-1, 1, 1)
    h6 = (h - torch.floor(h)) * 6.0
    out = []
    for n in (5.0, 3.0, 1.0):
        k = h6 + n
        k = torch.where(k >= 6.0, k - 6.0, k)
        out.append(maxc - cr * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, dim=1)


def _apply_op(x, op, fac):
    """One colour op on a (m, 3, S, S) float tensor, per-patch factors (m,)."""
    if op == 0:
        return (x * fac.view(-1, 1, 1, 1)).clamp_(0, 255)
    if op == 1:
        mean = _grey(x[:, :, ::MEAN_STRIDE, ::MEAN_STRIDE]).mean(dim=(1, 2))
        f = fac.view(-1, 1, 1, 1)
        return (f * x + ((1.0 - fac) * mean).view(-1, 1, 1, 1)).clamp_(0, 255)
    if op == 2:
        f = fac.view(-1, 1, 1, 1)
        return (f * x + (1.0 - f) * _grey(x).unsqueeze(1)).clamp_(0, 255)
    return _hue(x, fac)


def _base(size: int, dev) -> torch.Tensor:
    """(1, S*S, 3) homogeneous output pixel centres (x, y, 1)."""
    ys, xs = torch.meshgrid(
        torch.arange(size, device=dev, dtype=torch.float32),
        torch.arange(size, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, size * size, 3)


def warp(pyr: TorchPyramid, level_matrix, box, level, size: int):
    """Sample (n, 3, S, S) float32 patches; tensors already on ``pyr.device``. One ``grid_sample``
    over the atlas; no host synchronisation."""
    n = level.shape[0]
    base = _base(size, pyr.device)
    # float64 up to the grid: the atlas is large, and float32 atlas coordinates would add ~2e-4 px
    uv = base.double() @ level_matrix.double().transpose(1, 2)  # (n, S*S, 2), pixel centres in the level
    uv = torch.minimum(uv.clamp_min(0.0), pyr.limit[level].unsqueeze(1)) + pyr.origin[level].unsqueeze(1)
    # atlas pixel centres -> grid_sample's [-1, 1] with align_corners=False
    grid = ((uv + 0.5) * pyr.scale - 1.0).float().view(n, size, size, 2)
    out = F.grid_sample(
        pyr.atlas.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    st = base @ box.float().transpose(1, 2)  # (n, S*S, 2)
    inside = ((st >= 0) & (st < 1)).all(dim=-1).view(n, 1, size, size)
    return out * inside


def colour(x, jitter, factors, order):
    """Colour jitter in place of a (n, 3, S, S) float tensor; each patch its own op order."""
    sel = jitter.nonzero().squeeze(1)
    if len(sel) == 0:
        return x
    y = x[sel]
    fac = factors[sel]
    ordr = order[sel].long()
    for k in range(4):
        for op in range(4):
            idx = (ordr[:, k] == op).nonzero().squeeze(1)
            if len(idx):
                y[idx] = _apply_op(y[idx], op, fac[idx, op])
    x[sel] = y
    return x


def colour_masked(x, jitter, factors, order):
    """The same jitter with no host synchronisation and fixed shapes, for ``torch.compile``: at
    each of the four positions every op is evaluated for the whole batch and each patch keeps the
    one it has there. Four times the arithmetic of :func:`colour`, free once fused into one
    kernel, wasteful in eager mode."""
    n = x.shape[0]
    on = jitter.view(n, 1, 1, 1)
    for k in range(4):
        op = order[:, k].view(n, 1, 1, 1)
        y = x
        for j in range(4):
            y = torch.where(on & (op == j), _apply_op(x, j, factors[:, j]), y)
        x = y
    return x


def to_uint8_nhwc(x):
    """Round half up, clamp, and return a uint8 (n, 3, S, S) tensor in channels-last memory."""
    y = torch.floor(x + 0.5).clamp_(0, 255).to(torch.uint8)
    return y.contiguous(memory_format=torch.channels_last)


def run(pyr: TorchPyramid, level_matrix, box, level, jitter, factors, order, size: int):
    """The whole chain: (n, 3, S, S) uint8 channels-last on ``pyr.device``."""
    x = warp(pyr, level_matrix, box, level, size)
    x = colour(x, jitter, factors, order)
    return to_uint8_nhwc(x)


def run_fixed(pyr: TorchPyramid, level_matrix, box, level, jitter, factors, order, size: int):
    """:func:`run` with :func:`colour_masked`: no data-dependent shapes, no host synchronisation,
    so ``torch.compile`` takes it whole (the GPU path)."""
    x = warp(pyr, level_matrix, box, level, size)
    x = colour_masked(x, jitter, factors, order)
    return to_uint8_nhwc(x)


class TorchBackend(Backend):
    """The chain in torch ops on any device; ``compile`` (default: on CUDA) runs the fixed-shape,
    synchronisation-free form under ``torch.compile``, falling back to eager with a warning if
    the compiler fails."""

    name = "torch"
    auto_rank = {"cpu": 1, "cuda": 0}  # auto: first on a GPU (the fastest there, gpu_check), second on the CPU
    many_images = True

    def __init__(self, levels, size, resized, device, threads=None, compile=None, **options):
        super().__init__(levels, size, resized, device, threads)
        self.device = dev = torch.device(device)
        if threads and dev.type == "cpu":
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads() if dev.type == "cpu" else 0
        self.pyramid = TorchPyramid(levels, dev)
        self._compiled = torch.compile(run_fixed) if (compile if compile is not None else dev.type == "cuda") else None

    def render(self, p, out=None):
        dev = self.device

        def t(a, dt):
            return torch.as_tensor(a, dtype=dt).to(dev, non_blocking=True)

        args = (
            self.pyramid,
            t(p.level_matrix, torch.float64),
            t(p.box, torch.float64),
            t(p.level, torch.int64),
            t(p.jitter, torch.bool),
            t(p.factors, torch.float32),
            t(p.order, torch.int64),
            self.size,
        )
        if self._compiled is not None:
            try:
                return self._compiled(*args).permute(0, 2, 3, 1)
            except Exception as e:  # a compiler failure must not stop a run: eager from here on
                warnings.warn(
                    f"torch.compile of the torch backend failed, running eager: {type(e).__name__}: {e}", stacklevel=2
                )
                self._compiled = None
        return run(*args).permute(0, 2, 3, 1)  # NHWC view of the channels-last batch

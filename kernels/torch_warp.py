"""Warp + colour jitter with torch ops: bilinear taps gathered from the packed pyramid, colour ops
in float32, the same formulas as the Numba kernel.

Runs on CPU and CUDA with the same parameters as the Numba kernel, and reads the same packed
texels (:func:`~kernels.pyramid.pack_texels`: each level inside a one-texel border, one
``int32`` word R | G << 8 | B << 16 a texel). It is the portable GPU path and the cross-check for
every other backend: same coordinates (pixel centres at integers, float32, clamped to
[-1, side - 1], which with the border is clamp-to-edge), same taps and interpolation order,
fill 0 outside the crop box, same colour formulas in float32, same strided mean for contrast,
rounding once at the end (round half up). Everything is elementwise arithmetic and four
gathers per pixel, so that under ``torch.compile`` the chain fuses into a pass for contrast's
mean over the strided pixels and one over every output pixel, with no float64 and no float
batch stored in between.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .backend import GREY as _W
from .backend import MEAN_STRIDE, Backend
from .pyramid import pack_indexed

_BYTE = 255
EAGER_CHUNK_PIXELS = 1 << 18  # output pixels per eager pass on the CPU (see TorchBackend.render)


class TorchPyramid:
    """The packed texels of one image's levels, or of several images' (a list of level lists,
    their levels numbered image after image), resident on one device, with each level's
    (offset, width, height, stride) as an (L, 4) int32 table."""

    def __init__(self, levels, device):
        self.device = torch.device(device)
        tp = pack_indexed(levels, "torch")  # indexed with int32, as in the Numba kernel
        self.texels = torch.from_numpy(tp.texels.view(np.int32)).to(self.device)
        geometry = np.stack([tp.offsets, tp.widths, tp.heights, tp.strides], axis=1)
        self.geometry = torch.from_numpy(geometry.astype(np.int32)).to(self.device)


def _grey(r, g, b):
    return _W[0] * r + _W[1] * g + _W[2] * b


def _hue(r, g, b, shift):
    """Hue rotation through HSV without branches, as the Numba kernel writes it: the hue in
    sixths of a turn is 0, 2 or 4 (by which channel is the maximum) plus a difference over the
    chroma C = max - min; rotated by 6 * shift and wrapped to [0, 6), each channel is
    min + C * t with t = clamp(|h - 3| - 1), clamp(2 - |h - 2|), clamp(2 - |h - 4|). A grey
    pixel (C = 0) stays itself. Channels (m, h, w), ``shift`` broadcastable to them."""
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    cr = maxc - minc
    inv = 1.0 / cr.clamp_min(1e-12)
    isr = maxc == r
    isg = maxc == g
    num = torch.where(isr, g - b, torch.where(isg, b - r, r - g))
    s6 = 6.0 * shift
    h = num * inv + torch.where(isr, s6, torch.where(isg, 2.0 + s6, 4.0 + s6))
    h6 = h - 6.0 * torch.floor(h * np.float32(1.0 / 6.0))
    tr = ((h6 - 3.0).abs() - 1.0).clamp(0.0, 1.0)
    tg = (2.0 - (h6 - 2.0).abs()).clamp(0.0, 1.0)
    tb = (2.0 - (h6 - 4.0).abs()).clamp(0.0, 1.0)
    return minc + cr * tr, minc + cr * tg, minc + cr * tb


def _apply_op(x, op, fac):
    """One colour op on a (m, 3, h, w) float tensor, per-patch factors (m,)."""
    if op == 0:
        return (x * fac.view(-1, 1, 1, 1)).clamp_(0, 255)
    if op == 1:
        mean = _grey(*x[:, :, ::MEAN_STRIDE, ::MEAN_STRIDE].unbind(1)).mean(dim=(1, 2))
        f = fac.view(-1, 1, 1, 1)
        return (f * x + ((1.0 - fac) * mean).view(-1, 1, 1, 1)).clamp_(0, 255)
    if op == 2:
        f = fac.view(-1, 1, 1, 1)
        return (f * x + (1.0 - f) * _grey(*x.unbind(1)).unsqueeze(1)).clamp_(0, 255)
    return torch.stack(_hue(*x.unbind(1), fac.view(-1, 1, 1)), dim=1)


def sample(pyr: TorchPyramid, level_matrix, box, level, xs, ys):
    """The output pixels at columns ``xs`` and rows ``ys`` (float32 vectors of pixel centres) as
    three float32 (n, len(ys), len(xs)) channels, bilinear from each patch's level, 0 outside its
    crop box. As the Numba kernel: float32 coordinates u = m0 x + (m1 y + m2) clamped to
    [-1, w - 1] (the border makes that clamp-to-edge), the top-left tap at
    ``offset + floor(v) * stride + floor(u)``, interpolated along x, then y."""
    n = level.shape[0]
    m = level_matrix.float().view(n, 6, 1, 1).unbind(1)
    bx = box.float().view(n, 6, 1, 1).unbind(1)
    off, w, h, stride = pyr.geometry[level].view(n, 4, 1, 1).unbind(1)
    x = xs.view(1, 1, -1)
    y = ys.view(1, -1, 1)
    u = torch.minimum((m[0] * x + (m[1] * y + m[2])).clamp_min(-1.0), (w - 1).float())
    v = torch.minimum((m[3] * x + (m[4] * y + m[5])).clamp_min(-1.0), (h - 1).float())
    fu = torch.floor(u)
    fv = torch.floor(v)
    ax = u - fu
    ay = v - fv
    i = off + fv.int() * stride + fu.int()  # int32: half the index traffic of int64 in eager mode
    j = i + stride
    tex = pyr.texels
    t00, t01, t10, t11 = tex[i], tex[i + 1], tex[j], tex[j + 1]
    s = bx[0] * x + bx[1] * y + bx[2]
    t = bx[3] * x + bx[4] * y + bx[5]
    inside = (s >= 0) & (s < 1) & (t >= 0) & (t < 1)
    out = []
    for shift in (0, 8, 16):
        a = ((t00 >> shift) & _BYTE).float()
        b = ((t01 >> shift) & _BYTE).float()
        c = ((t10 >> shift) & _BYTE).float()
        d = ((t11 >> shift) & _BYTE).float()
        top = a + ax * (b - a)
        bottom = c + ax * (d - c)
        out.append(torch.where(inside, top + ay * (bottom - top), 0.0))
    return tuple(out)


def _pixels(size: int, dev, step: int = 1):
    return torch.arange(0, size, step, device=dev, dtype=torch.float32)


def warp(pyr: TorchPyramid, level_matrix, box, level, size: int):
    """Sample (n, 3, S, S) float32 patches; tensors already on the pyramid's device, no host
    synchronisation."""
    px = _pixels(size, pyr.device)
    return torch.stack(sample(pyr, level_matrix, box, level, px, px), dim=1)


def colour(x, jitter, factors, order):
    """Colour jitter in place of a (n, 3, S, S) float tensor, each op applied only to the patches
    that have it at that position (eager: least arithmetic, but one host synchronisation per
    group)."""
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


def _position(rgb, op, f, on, mean):
    """Each patch's op at one position of its order, in one branch-free form on the channels
    ``rgb``: brightness, contrast and saturation are all ``a x + b grey + c`` (clamped), hue is
    chosen per patch; patches with ``on`` false stay as they are. ``op``, ``f``, ``on``, ``mean``:
    (n, 1, 1). Elementwise only, so that a compiler fuses the four positions into one pass."""
    a = torch.where(on & (op != 3), f, 1.0)
    b = torch.where(on & (op == 2), 1.0 - f, 0.0)
    c = torch.where(on & (op == 1), (1.0 - f) * mean, 0.0)
    grey = b * _grey(*rgb)
    hue = _hue(*rgb, f)
    is_hue = on & (op == 3)
    return tuple(torch.where(is_hue, q, (a * p + grey + c).clamp(0.0, 255.0)) for p, q in zip(rgb, hue, strict=True))


def colour_fixed(rgb, jitter, factors, order, strided):
    """The jitter of :func:`colour` with fixed shapes and no host synchronisation, for
    ``torch.compile``, on three (n, h, w) channels: contrast's mean first, from ``strided`` (the
    channels of the pixels on every ``MEAN_STRIDE``-th row and column) run through the ops that
    precede contrast; then all four positions, every patch its own op at each."""
    n = jitter.shape[0]
    order = order.long()
    fk = factors.gather(1, order).view(n, 4, 1, 1).unbind(1)
    ok = order.view(n, 4, 1, 1).unbind(1)
    on = jitter.view(n, 1, 1)
    before = (order == 1).long().argmax(dim=1).view(n, 1, 1)  # contrast's position
    for k in range(3):
        strided = _position(strided, ok[k], fk[k], on & (before > k), 0.0)
    mean = _grey(*strided).mean(dim=(1, 2)).view(n, 1, 1)
    for k in range(4):
        rgb = _position(rgb, ok[k], fk[k], on, mean)
    return rgb


def _to_uint8(c):
    """Round half up and clamp to uint8."""
    return torch.floor(c + 0.5).clamp(0, 255).to(torch.uint8)


def to_uint8_nhwc(x):
    """:func:`_to_uint8` of a (n, 3, S, S) tensor, in channels-last memory."""
    return _to_uint8(x).contiguous(memory_format=torch.channels_last)


def run(pyr: TorchPyramid, level_matrix, box, level, jitter, factors, order, size: int):
    """The whole chain, eager: (n, 3, S, S) uint8 channels-last on the pyramid's device."""
    x = warp(pyr, level_matrix, box, level, size)
    x = colour(x, jitter, factors, order)
    return to_uint8_nhwc(x)


def run_fixed(pyr: TorchPyramid, level_matrix, box, level, jitter, factors, order, size: int):
    """:func:`run` with no data-dependent shapes and no host synchronisation, so that
    ``torch.compile`` takes it whole (the GPU path): the strided pixels contrast's mean needs are
    sampled on their own (a sixteenth of the work), so that the full batch is sampled, jittered
    and rounded without a float batch stored in between."""
    full = _pixels(size, pyr.device)
    strided = _pixels(size, pyr.device, MEAN_STRIDE)
    rgb = sample(pyr, level_matrix, box, level, full, full)
    s = sample(pyr, level_matrix, box, level, strided, strided)
    rgb = colour_fixed(rgb, jitter, factors, order, s)
    # rounded channel by channel into NHWC: the float batch is never stored
    return torch.stack([_to_uint8(c) for c in rgb], dim=-1).permute(0, 3, 1, 2)


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
            x = torch.as_tensor(a, dtype=dt)
            if dev.type == "cuda":
                # pinned, the copy is queued behind the batches already on the stream instead of
                # waiting for them (from pageable memory the driver may sync with the stream), so
                # the host samples the next batch while the device renders this one
                x = x.pin_memory()
            return x.to(dev, non_blocking=True)

        args = (
            self.pyramid,
            t(p.level_matrix, torch.float32),  # float32 coordinates, as the Numba kernel's
            t(p.box, torch.float32),
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
        if dev.type != "cpu":
            return run(*args).permute(0, 2, 3, 1)  # NHWC view of the channels-last batch
        # eager on the CPU: each op is a pass over the whole batch, so the batch goes in chunks
        # that stay in cache (224 px, 256 patches: 2.5-3.7x the patches/s of one pass)
        n, size = p.n, self.size
        nhwc = torch.empty((n, size, size, 3), dtype=torch.uint8)
        step = max(1, EAGER_CHUNK_PIXELS // (size * size))
        for i in range(0, n, step):
            part = (a[i : i + step] for a in args[1:7])
            nhwc[i : i + step] = run(self.pyramid, *part, size).permute(0, 2, 3, 1)
        return nhwc

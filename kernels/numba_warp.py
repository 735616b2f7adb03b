"""Fused warp + colour jitter on the CPU (Numba).

One call fills a whole ``uint8`` NHWC batch, parallel over patches (``prange``), with no
per-patch Python and no full-size temporaries: each output pixel is sampled (bilinear, from
the patch's pyramid level, clamp-to-edge inside the crop box, fill 0 outside it), run through
the patch's colour operations in its own order, rounded once and stored.

Contrast blends towards the patch's mean grey level at that point of the chain. That mean is
taken over the pixels on every 4th row and column (a pre-pass through the colour ops that
precede contrast), the same definition the torch backend uses, so the two agree exactly up to
interpolation rounding; against the exact full mean it stays within a few LSB.

Compiled with ``cache=True``: a second process loads the machine code from the cache instead of
paying the JIT again.
"""

from __future__ import annotations

import numba as nb
import numpy as np

MEAN_STRIDE = 4

_f32 = np.float32
_ZERO = _f32(0.0)
_ONE = _f32(1.0)
_MAXV = _f32(255.0)
_HALF = _f32(0.5)
_WR, _WG, _WB = _f32(0.299), _f32(0.587), _f32(0.114)


@nb.njit(inline="always", fastmath=True)
def _clamp(v):
    return min(max(v, _ZERO), _MAXV)


@nb.njit(inline="always", fastmath=True)
def _hue(r, g, b, shift):
    maxc = max(r, max(g, b))
    minc = min(r, min(g, b))
    cr = maxc - minc
    if cr <= _ZERO:
        return r, g, b  # grey: hue is undefined and the shift changes nothing
    s = cr / maxc
    rc = (maxc - r) / cr
    gc = (maxc - g) / cr
    bc = (maxc - b) / cr
    if maxc == r:
        h = bc - gc
    elif maxc == g:
        h = _f32(2.0) + rc - bc
    else:
        h = _f32(4.0) + gc - rc
    h = h / _f32(6.0) + _ONE + shift
    h = h - np.floor(h)
    h6 = h * _f32(6.0)
    i = int(np.floor(h6))
    f = h6 - _f32(i)
    i = i % 6
    v = maxc
    p = v * (_ONE - s)
    q = v * (_ONE - s * f)
    t = v * (_ONE - s * (_ONE - f))
    if i == 0:
        return v, t, p
    if i == 1:
        return q, v, p
    if i == 2:
        return p, v, t
    if i == 3:
        return p, q, v
    if i == 4:
        return t, p, v
    return v, p, q


@nb.njit(inline="always", fastmath=True)
def _colour(r, g, b, fac, order, upto, mean):
    """Apply ops order[0..upto-1]; op 1 (contrast) blends towards ``mean``."""
    for k in range(upto):
        op = order[k]
        if op == 0:
            f = fac[0]
            r = _clamp(r * f)
            g = _clamp(g * f)
            b = _clamp(b * f)
        elif op == 1:
            f = fac[1]
            m = (_ONE - f) * mean
            r = _clamp(f * r + m)
            g = _clamp(f * g + m)
            b = _clamp(f * b + m)
        elif op == 2:
            f = fac[2]
            grey = (_ONE - f) * (_WR * r + _WG * g + _WB * b)
            r = _clamp(f * r + grey)
            g = _clamp(f * g + grey)
            b = _clamp(f * b + grey)
        else:
            r, g, b = _hue(r, g, b, fac[3])
    return r, g, b


@nb.njit(inline="always", fastmath=True)
def _sample(pyr, off, h, w, u, v):
    """Bilinear tap at (u, v) (pixel centres at integers), clamp-to-edge."""
    fu = np.floor(u)
    fv = np.floor(v)
    ax = u - fu
    ay = v - fv
    x0 = int(fu)
    y0 = int(fv)
    x1 = min(max(x0 + 1, 0), w - 1)
    y1 = min(max(y0 + 1, 0), h - 1)
    x0 = min(max(x0, 0), w - 1)
    y0 = min(max(y0, 0), h - 1)
    t00 = pyr[off + y0 * w + x0]
    t01 = pyr[off + y0 * w + x1]
    t10 = pyr[off + y1 * w + x0]
    t11 = pyr[off + y1 * w + x1]
    w00 = (_ONE - ax) * (_ONE - ay)
    w01 = ax * (_ONE - ay)
    w10 = (_ONE - ax) * ay
    w11 = ax * ay
    r = w00 * _f32(t00 & 255) + w01 * _f32(t01 & 255) + w10 * _f32(t10 & 255) + w11 * _f32(t11 & 255)
    g = (
        w00 * _f32((t00 >> 8) & 255)
        + w01 * _f32((t01 >> 8) & 255)
        + w10 * _f32((t10 >> 8) & 255)
        + w11 * _f32((t11 >> 8) & 255)
    )
    b = (
        w00 * _f32((t00 >> 16) & 255)
        + w01 * _f32((t01 >> 16) & 255)
        + w10 * _f32((t10 >> 16) & 255)
        + w11 * _f32((t11 >> 16) & 255)
    )
    return r, g, b


@nb.njit(inline="always", fastmath=True)
def _texel(pyr, off, h, w, m, bx, x, y):
    """Sampled colour of output pixel (x, y): fill 0 outside the crop box."""
    s = bx[0] * x + bx[1] * y + bx[2]
    t = bx[3] * x + bx[4] * y + bx[5]
    if s >= _ZERO and s < _ONE and t >= _ZERO and t < _ONE:
        u = m[0] * x + m[1] * y + m[2]
        v = m[3] * x + m[4] * y + m[5]
        return _sample(pyr, off, h, w, u, v)
    return _ZERO, _ZERO, _ZERO


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def warp_colour(pyr, offsets, heights, widths, mats, boxes, levels, jitter, factors, order, out):
    """Fill ``out`` (n, S, S, 3) uint8.

    pyr: packed uint32 pyramid; offsets/heights/widths: (L,) int64 per level;
    mats, boxes: (n, 6) float32 row-major 2x3 (mats already in each patch's level);
    levels: (n,) int32; jitter: (n,) uint8; factors: (n, 4) float32; order: (n, 4) int8.
    """
    n = out.shape[0]
    S = out.shape[1]
    for i in nb.prange(n):
        lv = levels[i]
        off = offsets[lv]
        h = heights[lv]
        w = widths[lv]
        m = mats[i]
        bx = boxes[i]
        fac = factors[i]
        ordr = order[i]
        jit = jitter[i] != 0
        mean = _ZERO
        if jit:
            # position of contrast in this patch's order; mean grey at that point of the chain
            pos = 0
            while ordr[pos] != 1:
                pos += 1
            acc = _ZERO
            cnt = 0
            for y in range(0, S, 4):
                for x in range(0, S, 4):
                    r, g, b = _texel(pyr, off, h, w, m, bx, _f32(x), _f32(y))
                    r, g, b = _colour(r, g, b, fac, ordr, pos, _ZERO)
                    acc += _WR * r + _WG * g + _WB * b
                    cnt += 1
            mean = acc / _f32(cnt)
        o = out[i]
        for y in range(S):
            fy = _f32(y)
            for x in range(S):
                r, g, b = _texel(pyr, off, h, w, m, bx, _f32(x), fy)
                if jit:
                    r, g, b = _colour(r, g, b, fac, ordr, 4, mean)
                o[y, x, 0] = np.uint8(min(max(r + _HALF, _ZERO), _MAXV))
                o[y, x, 1] = np.uint8(min(max(g + _HALF, _ZERO), _MAXV))
                o[y, x, 2] = np.uint8(min(max(b + _HALF, _ZERO), _MAXV))


def run(pyramid, params_arrays, out: np.ndarray) -> np.ndarray:
    """Apply parameters (see :func:`prepare`) to ``out`` in place and return it."""
    mats, boxes, levels, jitter, factors, order = params_arrays
    warp_colour(
        pyramid.packed,
        pyramid.offsets,
        pyramid.heights,
        pyramid.widths,
        mats,
        boxes,
        levels,
        jitter,
        factors,
        order,
        out,
    )
    return out


def prepare(level_matrix, box, level, jitter, factors, order):
    """Contiguous float32/int arrays in the layout :func:`warp_colour` takes."""
    n = len(level)
    return (
        np.ascontiguousarray(level_matrix.reshape(n, 6), dtype=np.float32),
        np.ascontiguousarray(box.reshape(n, 6), dtype=np.float32),
        np.ascontiguousarray(level, dtype=np.int32),
        np.ascontiguousarray(jitter, dtype=np.uint8),
        np.ascontiguousarray(factors, dtype=np.float32),
        np.ascontiguousarray(order, dtype=np.int8),
    )

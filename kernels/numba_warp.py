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

from .backend import GREY, MEAN_STRIDE, Backend

_f32 = np.float32
_ZERO = _f32(0.0)
_ONE = _f32(1.0)
_MAXV = _f32(255.0)
_HALF = _f32(0.5)
_WR, _WG, _WB = (_f32(w) for w in GREY)


@nb.njit(inline="always", fastmath=True)
def _clamp(v):
    return min(max(v, _ZERO), _MAXV)


@nb.njit(inline="always", fastmath=True)
def _hue(r, g, b, shift):
    """Hue rotation through HSV without branches: h from selects, RGB from
    f(n) = V - V*S*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6 for n = 5, 3, 1 (V*S = max - min)."""
    maxc = max(r, max(g, b))
    minc = min(r, min(g, b))
    cr = maxc - minc
    inv = _ONE / cr if cr > _ZERO else _ZERO
    rc = (maxc - r) * inv
    gc = (maxc - g) * inv
    bc = (maxc - b) * inv
    h = bc - gc if maxc == r else ((_f32(2.0) + rc - bc) if maxc == g else (_f32(4.0) + gc - rc))
    h = h / _f32(6.0) + _ONE + shift
    h6 = (h - np.floor(h)) * _f32(6.0)
    kr = h6 + _f32(5.0)
    kr = kr - _f32(6.0) if kr >= _f32(6.0) else kr
    kg = h6 + _f32(3.0)
    kg = kg - _f32(6.0) if kg >= _f32(6.0) else kg
    kb = h6 + _ONE
    kb = kb - _f32(6.0) if kb >= _f32(6.0) else kb
    r2 = maxc - cr * min(max(min(kr, _f32(4.0) - kr), _ZERO), _ONE)
    g2 = maxc - cr * min(max(min(kg, _f32(4.0) - kg), _ZERO), _ONE)
    b2 = maxc - cr * min(max(min(kb, _f32(4.0) - kb), _ZERO), _ONE)
    return r2, g2, b2


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


@nb.njit(inline="always", fastmath=True)
def _inside(bx, x, y):
    s = bx[0] * x + bx[1] * y + bx[2]
    t = bx[3] * x + bx[4] * y + bx[5]
    return s >= _ZERO and s < _ONE and t >= _ZERO and t < _ONE


@nb.njit(inline="always")
def _row_span(bx, y, S):
    """[lo, hi): the output pixels of row ``y`` inside the crop box.

    s(x) and t(x) are linear in x, so the inside pixels form one interval. Its ends are first
    solved in float64, then moved until ``_inside`` (the exact per-pixel test the fill uses)
    agrees, so the span equals the per-pixel test.
    """
    lo = 0.0
    hi = float(S)
    fy = float(y)
    for a, c in ((float(bx[0]), float(bx[1]) * fy + float(bx[2])), (float(bx[3]), float(bx[4]) * fy + float(bx[5]))):
        # 0 <= a * x + c < 1
        if a > 0:
            lo = max(lo, -c / a)
            hi = min(hi, (1.0 - c) / a)
        elif a < 0:
            lo = max(lo, (1.0 - c) / a)
            hi = min(hi, -c / a)
        elif not (0.0 <= c < 1.0):
            return 0, 0
    if not hi > lo:
        return 0, 0
    x0 = min(max(int(np.ceil(lo)), 0), S)
    x1 = min(max(int(np.ceil(hi)), 0), S)
    fy32 = _f32(y)
    while x0 > 0 and _inside(bx, _f32(x0 - 1), fy32):
        x0 -= 1
    while x0 < x1 and not _inside(bx, _f32(x0), fy32):
        x0 += 1
    while x1 < S and _inside(bx, _f32(x1), fy32):
        x1 += 1
    while x1 > x0 and not _inside(bx, _f32(x1 - 1), fy32):
        x1 -= 1
    return x0, x1


@nb.njit(inline="always", fastmath=True)
def _row_colour(rr, gg, bb, op, f, mean, S):
    """One colour op over a row of float32 channel buffers (branch-free inner loops)."""
    if op == 0:
        for x in range(S):
            rr[x] = _clamp(rr[x] * f)
            gg[x] = _clamp(gg[x] * f)
            bb[x] = _clamp(bb[x] * f)
    elif op == 1:
        m = (_ONE - f) * mean
        for x in range(S):
            rr[x] = _clamp(f * rr[x] + m)
            gg[x] = _clamp(f * gg[x] + m)
            bb[x] = _clamp(f * bb[x] + m)
    elif op == 2:
        g1 = _ONE - f
        for x in range(S):
            grey = g1 * (_WR * rr[x] + _WG * gg[x] + _WB * bb[x])
            rr[x] = _clamp(f * rr[x] + grey)
            gg[x] = _clamp(f * gg[x] + grey)
            bb[x] = _clamp(f * bb[x] + grey)
    else:
        for x in range(S):
            rr[x], gg[x], bb[x] = _hue(rr[x], gg[x], bb[x], f)


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def warp_colour(pyr, offsets, heights, widths, mats, boxes, levels, jitter, factors, order, out):
    """Fill ``out`` (n, S, S, 3) uint8.

    pyr: packed uint32 pyramid; offsets/heights/widths: (L,) int64 per level;
    mats, boxes: (n, 6) float32 row-major 2x3 (mats already in each patch's level);
    levels: (n,) int32; jitter: (n,) uint8; factors: (n, 4) float32; order: (n, 4) int8.

    Row by row: the span of the row inside the crop box is found once, the interior is sampled
    into three float32 row buffers (fill 0 elsewhere), each colour op runs over the row as a
    branch-free loop, and the row is rounded and stored.
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
            for y in range(0, S, MEAN_STRIDE):
                for x in range(0, S, MEAN_STRIDE):
                    r, g, b = _texel(pyr, off, h, w, m, bx, _f32(x), _f32(y))
                    r, g, b = _colour(r, g, b, fac, ordr, pos, _ZERO)
                    acc += _WR * r + _WG * g + _WB * b
                    cnt += 1
            mean = acc / _f32(cnt)
        rows = np.empty((3, S), dtype=np.float32)
        rr = rows[0]
        gg = rows[1]
        bb = rows[2]
        wts = np.empty((2, S), dtype=np.float32)
        wx = wts[0]
        wy = wts[1]
        idx = np.empty((4, S), dtype=np.int64)
        i00 = idx[0]
        i01 = idx[1]
        i10 = idx[2]
        i11 = idx[3]
        o = out[i]
        for y in range(S):
            fy = _f32(y)
            x0, x1 = _row_span(bx, y, S)
            for x in range(x0):
                rr[x] = _ZERO
                gg[x] = _ZERO
                bb[x] = _ZERO
            uy = m[1] * fy + m[2]
            vy = m[4] * fy + m[5]
            # pass 1 (vectorisable): texel addresses and bilinear weights of the span
            for x in range(x0, x1):
                fx = _f32(x)
                u = m[0] * fx + uy
                v = m[3] * fx + vy
                fu = np.floor(u)
                fv = np.floor(v)
                wx[x] = u - fu
                wy[x] = v - fv
                ix = int(fu)
                iy = int(fv)
                xa = min(max(ix, 0), w - 1)
                xb = min(max(ix + 1, 0), w - 1)
                ya = off + min(max(iy, 0), h - 1) * w
                yb = off + min(max(iy + 1, 0), h - 1) * w
                i00[x] = ya + xa
                i01[x] = ya + xb
                i10[x] = yb + xa
                i11[x] = yb + xb
            # pass 2: four gathers per pixel, unpack, blend
            for x in range(x0, x1):
                t00 = pyr[i00[x]]
                t01 = pyr[i01[x]]
                t10 = pyr[i10[x]]
                t11 = pyr[i11[x]]
                ax = wx[x]
                ay = wy[x]
                w00 = (_ONE - ax) * (_ONE - ay)
                w01 = ax * (_ONE - ay)
                w10 = (_ONE - ax) * ay
                w11 = ax * ay
                rr[x] = w00 * _f32(t00 & 255) + w01 * _f32(t01 & 255) + w10 * _f32(t10 & 255) + w11 * _f32(t11 & 255)
                gg[x] = (
                    w00 * _f32((t00 >> 8) & 255)
                    + w01 * _f32((t01 >> 8) & 255)
                    + w10 * _f32((t10 >> 8) & 255)
                    + w11 * _f32((t11 >> 8) & 255)
                )
                bb[x] = (
                    w00 * _f32((t00 >> 16) & 255)
                    + w01 * _f32((t01 >> 16) & 255)
                    + w10 * _f32((t10 >> 16) & 255)
                    + w11 * _f32((t11 >> 16) & 255)
                )
            for x in range(x1, S):
                rr[x] = _ZERO
                gg[x] = _ZERO
                bb[x] = _ZERO
            if jit:
                for k in range(4):
                    op = ordr[k]
                    _row_colour(rr, gg, bb, op, fac[op], mean, S)
            for x in range(S):
                o[y, x, 0] = np.uint8(min(max(rr[x] + _HALF, _ZERO), _MAXV))
                o[y, x, 1] = np.uint8(min(max(gg[x] + _HALF, _ZERO), _MAXV))
                o[y, x, 2] = np.uint8(min(max(bb[x] + _HALF, _ZERO), _MAXV))


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


class NumbaBackend(Backend):
    """The CPU kernel: one fused warp + colour pass per patch, written in place into a NumPy
    buffer, threads over patches (``threads``: Numba's thread count)."""

    name = "numba"
    writes_into = True

    @classmethod
    def unavailable(cls, device_type: str) -> str | None:
        return None  # renders on the CPU; on another device the engine copies its batches there

    def __init__(self, levels, size, resized, device, threads=None, **options):
        from .pyramid import pack_levels

        super().__init__(levels, size, resized, device, threads)
        self.pyramid = pack_levels(levels)
        if threads:
            nb.set_num_threads(int(threads))
        self.threads = nb.get_num_threads()

    def render(self, level_matrix, box, level, jitter, factors, order, out=None):
        if out is None:
            out = np.empty((len(level), self.size, self.size, 3), np.uint8)
        return run(self.pyramid, prepare(level_matrix, box, level, jitter, factors, order), out)

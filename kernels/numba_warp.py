"""Fused warp + colour jitter on the CPU (Numba).

One call fills a whole ``uint8`` NHWC batch, parallel over patches (``prange``), with no
per-patch Python and no full-size temporaries: each output pixel is sampled (bilinear, from
the patch's pyramid level, clamp-to-edge inside the crop box, fill 0 outside it), run through
the patch's colour operations in its own order, rounded once and stored; a row at a time,
in loops over row buffers that LLVM vectorises (see :func:`warp_colour`).

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
_LO32 = np.uint64(0xFFFFFFFF)
_HI32 = np.uint64(32)
_BYTE = np.uint32(255)
_G = np.uint32(8)
_B = np.uint32(16)  # a texel's top byte is 0: blue needs no mask


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


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _coords(off, stride, w, h, m0, m3, uy, vy, fx0, step, n, idx, ax, ay):
    """Pass 1 of a row (vectorised): for the n pixels x = fx0 + step * k, the index of the
    top-left texel of the bilinear tap and its two weights. The coordinates are clamped to
    [-1, side - 1]: with the one-texel border that repeats each level's edge, that is exactly
    clamp-to-edge, and no tap needs a test of its own."""
    fw = _f32(w - 1)
    fh = _f32(h - 1)
    lo = _f32(-1.0)
    for k in range(n):
        fx = fx0 + step * _f32(k)
        u = min(max(m0 * fx + uy, lo), fw)
        v = min(max(m3 * fx + vy, lo), fh)
        fu = np.floor(u)
        fv = np.floor(v)
        ax[k] = u - fu
        ay[k] = v - fv
        idx[k] = np.uint64(off + np.int64(fv) * stride + np.int64(fu))


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _taps(pairs, stride, n, idx, top, bot):
    """Pass 2 (scalar loads, the only ones): a texel pair is one 64-bit word (texel x in the low
    half, x + 1 in the high half), so a bilinear tap is two loads, its top and its bottom pair."""
    below = np.uint64(stride)
    for k in range(n):
        i = idx[k]  # unsigned: no negative-index wrap-around to test
        top[k] = pairs[i]
        bot[k] = pairs[i + below]


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _blend(top, bot, ax, ay, n, rr, gg, bb):
    """Pass 3 (vectorised): unpack the four texels' channels, interpolate along x, then y. Every
    integer step stays in 32-bit lanes (unsigned 32-bit masks and shifts: a plain int literal
    would widen the lanes to 64 bits and halve the pixels per vector)."""
    for k in range(n):
        a64 = top[k]
        b64 = bot[k]
        t00 = np.uint32(a64 & _LO32)
        t01 = np.uint32(a64 >> _HI32)
        t10 = np.uint32(b64 & _LO32)
        t11 = np.uint32(b64 >> _HI32)
        fx = ax[k]
        fy = ay[k]
        a = _f32(np.int32(t00 & _BYTE))
        b = _f32(np.int32(t01 & _BYTE))
        c = _f32(np.int32(t10 & _BYTE))
        d = _f32(np.int32(t11 & _BYTE))
        hi = a + fx * (b - a)
        lo = c + fx * (d - c)
        rr[k] = hi + fy * (lo - hi)
        a = _f32(np.int32((t00 >> _G) & _BYTE))
        b = _f32(np.int32((t01 >> _G) & _BYTE))
        c = _f32(np.int32((t10 >> _G) & _BYTE))
        d = _f32(np.int32((t11 >> _G) & _BYTE))
        hi = a + fx * (b - a)
        lo = c + fx * (d - c)
        gg[k] = hi + fy * (lo - hi)
        a = _f32(np.int32(t00 >> _B))
        b = _f32(np.int32(t01 >> _B))
        c = _f32(np.int32(t10 >> _B))
        d = _f32(np.int32(t11 >> _B))
        hi = a + fx * (b - a)
        lo = c + fx * (d - c)
        bb[k] = hi + fy * (lo - hi)


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _store(rr, gg, bb, o, S):
    """Round, clamp and interleave a row into the uint8 output (3 * S bytes)."""
    for x in range(S):
        o[3 * x] = np.uint8(min(max(rr[x] + _HALF, _ZERO), _MAXV))
        o[3 * x + 1] = np.uint8(min(max(gg[x] + _HALF, _ZERO), _MAXV))
        o[3 * x + 2] = np.uint8(min(max(bb[x] + _HALF, _ZERO), _MAXV))


@nb.njit(parallel=True, fastmath=True, boundscheck=False, cache=True, nogil=True)
def warp_colour(pairs, offsets, heights, widths, strides, mats, boxes, levels, jitter, factors, order, out):
    """Fill ``out`` (n, S, S, 3) uint8.

    pairs, offsets, heights, widths, strides: the pyramid of :func:`fastssl.kernels.pyramid.pack_pairs`;
    mats, boxes: (n, 6) float32 row-major 2x3 (mats already in each patch's level);
    levels: (n,) int32; jitter: (n,) uint8; factors: (n, 4) float32; order: (n, 4) int8.

    Row by row: the span of the row inside the crop box is found once; its pixels go through
    three passes over contiguous row buffers (coordinates and weights, vectorised; the texel
    loads, two 64-bit words per pixel; the unpack and blend, vectorised), each colour op runs
    over the row as a branch-free loop, and the row is rounded and stored. Every loop starts
    at index 0 of its buffers, so no index can be negative and LLVM vectorises without
    wrap-around checks.
    """
    n = out.shape[0]
    S = out.shape[1]
    flat = out.reshape(n, S, 3 * S)
    for i in nb.prange(n):
        lv = levels[i]
        off = offsets[lv]
        h = heights[lv]
        w = widths[lv]
        stride = strides[lv]
        m = mats[i]
        bx = boxes[i]
        fac = factors[i]
        ordr = order[i]
        jit = jitter[i] != 0
        rr = np.empty(S, np.float32)
        gg = np.empty(S, np.float32)
        bb = np.empty(S, np.float32)
        ax = np.empty(S, np.float32)
        ay = np.empty(S, np.float32)
        idx = np.empty(S, np.uint64)
        top = np.empty(S, np.uint64)
        bot = np.empty(S, np.uint64)
        mean = _ZERO
        if jit:
            # mean grey at contrast's place in this patch's order, over every MEAN_STRIDE-th row
            # and column (pixels outside the crop box are 0 and stay 0 through the ops before it)
            pos = 0
            while ordr[pos] != 1:
                pos += 1
            acc = _ZERO
            side = (S + MEAN_STRIDE - 1) // MEAN_STRIDE
            for y in range(0, S, MEAN_STRIDE):
                x0, x1 = _row_span(bx, y, S)
                first = (x0 + MEAN_STRIDE - 1) // MEAN_STRIDE * MEAN_STRIDE
                k = max(0, (x1 - first + MEAN_STRIDE - 1) // MEAN_STRIDE)
                if k == 0:
                    continue
                fy = _f32(y)
                _coords(
                    off,
                    stride,
                    w,
                    h,
                    m[0],
                    m[3],
                    m[1] * fy + m[2],
                    m[4] * fy + m[5],
                    _f32(first),
                    _f32(MEAN_STRIDE),
                    k,
                    idx,
                    ax,
                    ay,
                )
                _taps(pairs, stride, k, idx, top, bot)
                _blend(top, bot, ax, ay, k, rr, gg, bb)
                for q in range(pos):
                    op = ordr[q]
                    _row_colour(rr, gg, bb, op, fac[op], _ZERO, k)
                for x in range(k):
                    acc += _WR * rr[x] + _WG * gg[x] + _WB * bb[x]
            mean = acc / _f32(side * side)
        for y in range(S):
            fy = _f32(y)
            x0, x1 = _row_span(bx, y, S)
            k = x1 - x0
            _coords(off, stride, w, h, m[0], m[3], m[1] * fy + m[2], m[4] * fy + m[5], _f32(x0), _ONE, k, idx, ax, ay)
            _taps(pairs, stride, k, idx, top, bot)
            _blend(top, bot, ax, ay, k, rr[x0:x1], gg[x0:x1], bb[x0:x1])
            for x in range(x0):
                rr[x] = _ZERO
                gg[x] = _ZERO
                bb[x] = _ZERO
            for x in range(x1, S):
                rr[x] = _ZERO
                gg[x] = _ZERO
                bb[x] = _ZERO
            if jit:
                for q in range(4):
                    op = ordr[q]
                    _row_colour(rr, gg, bb, op, fac[op], mean, S)
            _store(rr, gg, bb, flat[i, y], S)


def run(pyramid, params_arrays, out: np.ndarray) -> np.ndarray:
    """Apply parameters (see :func:`prepare`) to ``out`` in place and return it."""
    mats, boxes, levels, jitter, factors, order = params_arrays
    warp_colour(
        pyramid.pairs,
        pyramid.offsets,
        pyramid.heights,
        pyramid.widths,
        pyramid.strides,
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
        from .pyramid import pack_pairs

        super().__init__(levels, size, resized, device, threads)
        self.pyramid = pack_pairs(levels)
        if threads:
            nb.set_num_threads(int(threads))
        self.threads = nb.get_num_threads()

    def render(self, level_matrix, box, level, jitter, factors, order, out=None):
        if out is None:
            out = np.empty((len(level), self.size, self.size, 3), np.uint8)
        return run(self.pyramid, prepare(level_matrix, box, level, jitter, factors, order), out)

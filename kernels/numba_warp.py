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
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .backend import GREY, MEAN_STRIDE, Backend
from .pyramid import pack_indexed

_f32 = np.float32
_ZERO = _f32(0.0)
_ONE = _f32(1.0)
_MAXV = _f32(255.0)
_HALF = _f32(0.5)
_TWO = _f32(2.0)
_THREE = _f32(3.0)
_FOUR = _f32(4.0)
_SIX = _f32(6.0)
_SIXTH = _f32(1.0 / 6.0)
_TINY = _f32(1e-12)
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
    """Hue rotation through HSV without branches. The hue in sixths of a turn is an offset
    (0, 2, 4 by which channel is the maximum) plus a difference over the chroma C = max - min;
    rotated by 6 * shift and wrapped to [0, 6), it gives each channel as min + C * t with
    t = clamp(|h - 3| - 1), clamp(2 - |h - 2|), clamp(2 - |h - 4|) (clamp to [0, 1]): the
    same colour as HSV's sector table, in 51 vector instructions for 16 pixels. A grey pixel
    (C = 0) stays itself."""
    maxc = max(r, max(g, b))
    minc = min(r, min(g, b))
    cr = maxc - minc
    inv = _ONE / max(cr, _TINY)
    isr = maxc == r
    isg = maxc == g
    num = (g - b) if isr else ((b - r) if isg else (r - g))
    s6 = _SIX * shift
    base = s6 if isr else ((_TWO + s6) if isg else (_FOUR + s6))
    x = num * inv + base
    h6 = x - _SIX * np.floor(x * _SIXTH)
    tr = min(max(abs(h6 - _THREE) - _ONE, _ZERO), _ONE)
    tg = min(max(_TWO - abs(h6 - _TWO), _ZERO), _ONE)
    tb = min(max(_TWO - abs(h6 - _FOUR), _ZERO), _ONE)
    return minc + cr * tr, minc + cr * tg, minc + cr * tb


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
    """One colour op over a row of float32 channel buffers (branch-free inner loops). The
    values entering an op are in [0, 255] (the blend and hue are convex in their inputs); an
    affine op with a factor in [0, 1] (as sampled: the factors are never negative) is a convex
    combination of values in range, so it runs without the clamps that other factors need."""
    if op == 0:
        if _ZERO <= f <= _ONE:
            for x in range(S):
                rr[x] = rr[x] * f
                gg[x] = gg[x] * f
                bb[x] = bb[x] * f
        else:
            for x in range(S):
                rr[x] = _clamp(rr[x] * f)
                gg[x] = _clamp(gg[x] * f)
                bb[x] = _clamp(bb[x] * f)
    elif op == 1:
        m = (_ONE - f) * mean
        if _ZERO <= f <= _ONE:
            for x in range(S):
                rr[x] = f * rr[x] + m
                gg[x] = f * gg[x] + m
                bb[x] = f * bb[x] + m
        else:
            for x in range(S):
                rr[x] = _clamp(f * rr[x] + m)
                gg[x] = _clamp(f * gg[x] + m)
                bb[x] = _clamp(f * bb[x] + m)
    elif op == 2:
        g1 = _ONE - f
        if _ZERO <= f <= _ONE:
            for x in range(S):
                grey = g1 * (_WR * rr[x] + _WG * gg[x] + _WB * bb[x])
                rr[x] = f * rr[x] + grey
                gg[x] = f * gg[x] + grey
                bb[x] = f * bb[x] + grey
        else:
            for x in range(S):
                grey = g1 * (_WR * rr[x] + _WG * gg[x] + _WB * bb[x])
                rr[x] = _clamp(f * rr[x] + grey)
                gg[x] = _clamp(f * gg[x] + grey)
                bb[x] = _clamp(f * bb[x] + grey)
    else:
        for x in range(S):
            rr[x], gg[x], bb[x] = _hue(rr[x], gg[x], bb[x], f)


@nb.njit(inline="always", fastmath=True)
def _tap(o, st, fw, fh, m0, m3, uy, vy, fx):
    """The bilinear tap of the pixel at ``fx`` on a row: the index of its top-left texel
    (32-bit: the pyramid holds fewer than 2**31 entries) and its two weights. The coordinates
    are clamped to [-1, side - 1]: with the one-texel border that repeats each level's edge,
    that is exactly clamp-to-edge, and no tap needs a test of its own."""
    lo = _f32(-1.0)
    u = min(max(m0 * fx + uy, lo), fw)
    v = min(max(m3 * fx + vy, lo), fh)
    fu = np.floor(u)
    fv = np.floor(v)
    return o + np.int32(np.int32(fv) * st) + np.int32(fu), u - fu, v - fv


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _coords(off, stride, w, h, m0, m3, uy, vy, fx0, step, n, idx, ax, ay):
    """Pass 1 of a row (vectorised, 16 pixels a vector): :func:`_tap` of the n pixels
    x = fx0 + step * k."""
    fw = _f32(w - 1)
    fh = _f32(h - 1)
    st = np.int32(stride)
    o = np.int32(off)
    for k in range(n):
        i, ax[k], ay[k] = _tap(o, st, fw, fh, m0, m3, uy, vy, fx0 + step * _f32(k))
        idx[k] = np.uint32(i)


PREFETCH_AHEAD = 3  # rows: the source texels of row y + 3 are requested while row y renders
PREFETCH_EVERY = 8  # output pixels between two prefetched taps along that row
# pyramids smaller than this are not prefetched: their patches mostly hit the caches already
# (sources of up to about 0.8 Mpix; `benchmarks/kernel_roofline.py` times the kernel both ways)
PREFETCH_MIN_BYTES = 4 << 20
# the threads take patches in chunks of about this many output pixels, as they free up: a
# jittered patch costs more than a plain one, so equal shares of a batch finish apart
CHUNK_PIXELS = 1 << 16


def _element_ptr(context, builder, signature, args):
    """LLVM pointer to ``arr[i]`` for an intrinsic called as ``f(arr, i, ...)``."""
    aryty, idxty = signature.args[:2]
    ary = context.make_array(aryty)(context, builder, args[0])
    return builder.gep(ary.data, [context.cast(builder, args[1], idxty, types.intp)])


@intrinsic
def _prefetch(typingctx, arr, i):
    """``prefetcht0`` of ``arr[i]`` (LLVM's prefetch intrinsic: read, keep in all cache levels):
    a hint, never a fault, so an index needs no bounds test."""
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature, args)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _pair(typingctx, texels, i):
    """The 64-bit word that starts at ``texels[i]`` (uint32): texel i in its low half, texel
    i + 1 in its high half, as one load aligned to 4 bytes (such loads are allowed on x86-64
    and ARMv8; one word in 16 straddles a cache line)."""
    sig = types.uint64(texels, i)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature, args)
        return builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=4)

    return sig, codegen


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _prefetch_row(texels, off, stride, w, h, m0, m3, uy, vy, S):
    """Request the cache lines of a coming row's taps (every ``PREFETCH_EVERY``-th pixel, top
    and bottom pair), so that its loads find them in cache: a patch of a large photo reads a
    region that is in no cache yet, along a line the hardware prefetcher cannot follow when
    the patch is rotated (measured: 15-20% of the kernel's time on a 2560x1920 photo)."""
    fw = _f32(w - 1)
    fh = _f32(h - 1)
    st = np.int32(stride)
    o = np.int32(off)
    for k in range(0, S, PREFETCH_EVERY):
        i, _, _ = _tap(o, st, fw, fh, m0, m3, uy, vy, _f32(k))
        _prefetch(texels, i)
        _prefetch(texels, i + st)


@intrinsic
def _store4(typingctx, out, k, a, b, c, d):
    """``out[k:k + 4] = a, b, c, d`` (uint64) as one vector store (LLVM may emit two 16-byte
    stores); the caller keeps ``k + 4`` within ``out``."""
    sig = types.void(out, k, a, b, c, d)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature, args)
        vec = ir.VectorType(ir.IntType(64), 4)
        v = ir.Constant(vec, ir.Undefined)
        for j, word in enumerate(args[2:]):
            v = builder.insert_element(v, word, ir.Constant(ir.IntType(32), j))
        builder.store(v, builder.bitcast(ptr, vec.as_pointer()), align=8)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _taps(texels, stride, n, idx, top, bot):
    """Pass 2 (scalar loads, the only ones): a texel and its right neighbour are one 64-bit
    word (:func:`_pair`), so a bilinear tap is two loads, its top and its bottom pair; four
    pixels' words go out as one vector store per row buffer (the pass is bound by loads and
    stores)."""
    below = np.uint32(stride)
    m = n - n % 4
    for k in range(0, m, 4):
        i0 = idx[k]  # unsigned: no negative-index wrap-around to test
        i1 = idx[k + 1]
        i2 = idx[k + 2]
        i3 = idx[k + 3]
        _store4(top, k, _pair(texels, i0), _pair(texels, i1), _pair(texels, i2), _pair(texels, i3))
        _store4(
            bot,
            k,
            _pair(texels, i0 + below),
            _pair(texels, i1 + below),
            _pair(texels, i2 + below),
            _pair(texels, i3 + below),
        )
    for k in range(m, n):
        i = idx[k]
        top[k] = _pair(texels, i)
        bot[k] = _pair(texels, i + below)


@nb.njit(inline="always", fastmath=True)
def _bilinear(top, bot, ax, ay, k):
    """The pixel ``k`` of a row: unpack its four texels' channels, interpolate along x, then y.
    ``top`` and ``bot`` are the tap words seen as uint32 (texel x at 2k, its right neighbour
    at 2k + 1), so every integer step stays in 32-bit lanes (unsigned 32-bit masks and
    shifts: a plain int literal would widen the lanes to 64 bits and halve the pixels per
    vector)."""
    t00 = top[2 * k]
    t01 = top[2 * k + 1]
    t10 = bot[2 * k]
    t11 = bot[2 * k + 1]
    fx = ax[k]
    fy = ay[k]
    a = _f32(np.int32(t00 & _BYTE))
    b = _f32(np.int32(t01 & _BYTE))
    c = _f32(np.int32(t10 & _BYTE))
    d = _f32(np.int32(t11 & _BYTE))
    hi = a + fx * (b - a)
    lo = c + fx * (d - c)
    r = hi + fy * (lo - hi)
    a = _f32(np.int32((t00 >> _G) & _BYTE))
    b = _f32(np.int32((t01 >> _G) & _BYTE))
    c = _f32(np.int32((t10 >> _G) & _BYTE))
    d = _f32(np.int32((t11 >> _G) & _BYTE))
    hi = a + fx * (b - a)
    lo = c + fx * (d - c)
    g = hi + fy * (lo - hi)
    a = _f32(np.int32(t00 >> _B))
    b = _f32(np.int32(t01 >> _B))
    c = _f32(np.int32(t10 >> _B))
    d = _f32(np.int32(t11 >> _B))
    hi = a + fx * (b - a)
    lo = c + fx * (d - c)
    return r, g, hi + fy * (lo - hi)


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _blend(top, bot, ax, ay, n, rr, gg, bb):
    """Pass 3 (vectorised, 16 pixels a vector): :func:`_bilinear` into float row buffers."""
    for k in range(n):
        rr[k], gg[k], bb[k] = _bilinear(top, bot, ax, ay, k)


@nb.njit(inline="always", fastmath=True)
def _q(v):
    return np.uint8(min(max(v + _HALF, _ZERO), _MAXV))


@nb.njit(inline="always", fastmath=True)
def _q_in(v):
    """:func:`_q` of a value known to lie in [0, 255] (truncation of v + 0.5 rounds it)."""
    return np.uint8(np.int32(v + _HALF))


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _blend_store(top, bot, ax, ay, n, o):
    """:func:`_bilinear` and the store in one loop, for the rows of patches without colour
    operations: rounded and interleaved straight into the uint8 row ``o`` (3 * n bytes), 16
    pixels an iteration, no float row buffers in between. No clamp: a bilinear blend of bytes
    lies in [0, 255]."""
    for k in range(n):
        r, g, b = _bilinear(top, bot, ax, ay, k)
        o[3 * k] = _q_in(r)
        o[3 * k + 1] = _q_in(g)
        o[3 * k + 2] = _q_in(b)


@nb.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
def _colour_store(rr, gg, bb, op, f, mean, S, o):
    """The last colour op of a row, rounded and interleaved into the uint8 row ``o`` (3 * S
    bytes) as it is computed; clamped only where the op can leave [0, 255] (an affine op with
    a factor above 1; hue and convex combinations stay in range)."""
    inside = _ZERO <= f <= _ONE
    if op == 0:
        if inside:
            for x in range(S):
                o[3 * x] = _q_in(rr[x] * f)
                o[3 * x + 1] = _q_in(gg[x] * f)
                o[3 * x + 2] = _q_in(bb[x] * f)
        else:
            for x in range(S):
                o[3 * x] = _q(rr[x] * f)
                o[3 * x + 1] = _q(gg[x] * f)
                o[3 * x + 2] = _q(bb[x] * f)
    elif op == 1:
        m = (_ONE - f) * mean
        if inside:
            for x in range(S):
                o[3 * x] = _q_in(f * rr[x] + m)
                o[3 * x + 1] = _q_in(f * gg[x] + m)
                o[3 * x + 2] = _q_in(f * bb[x] + m)
        else:
            for x in range(S):
                o[3 * x] = _q(f * rr[x] + m)
                o[3 * x + 1] = _q(f * gg[x] + m)
                o[3 * x + 2] = _q(f * bb[x] + m)
    elif op == 2:
        g1 = _ONE - f
        if inside:
            for x in range(S):
                grey = g1 * (_WR * rr[x] + _WG * gg[x] + _WB * bb[x])
                o[3 * x] = _q_in(f * rr[x] + grey)
                o[3 * x + 1] = _q_in(f * gg[x] + grey)
                o[3 * x + 2] = _q_in(f * bb[x] + grey)
        else:
            for x in range(S):
                grey = g1 * (_WR * rr[x] + _WG * gg[x] + _WB * bb[x])
                o[3 * x] = _q(f * rr[x] + grey)
                o[3 * x + 1] = _q(f * gg[x] + grey)
                o[3 * x + 2] = _q(f * bb[x] + grey)
    else:
        for x in range(S):
            r, g, b = _hue(rr[x], gg[x], bb[x], f)
            o[3 * x] = _q_in(r)
            o[3 * x + 1] = _q_in(g)
            o[3 * x + 2] = _q_in(b)


@nb.njit(fastmath=True, boundscheck=False, nogil=True, inline="always")
def _warp_row(texels, off, stride, w, h, m, bx, y, S, idx, ax, ay, top, bot, prefetch, ahead=1):
    """Coordinates and taps of row ``y``'s span (returned as ``x0, x1``). With ``prefetch``,
    first requests the taps of the row ``PREFETCH_AHEAD`` steps further along this walk
    over the rows (a step: ``ahead`` rows)."""
    fy = _f32(y)
    ya = y + PREFETCH_AHEAD * ahead
    if prefetch and ya < S:
        fa = _f32(ya)
        _prefetch_row(texels, off, stride, w, h, m[0], m[3], m[1] * fa + m[2], m[4] * fa + m[5], S)
    x0, x1 = _row_span(bx, y, S)
    k = x1 - x0
    _coords(off, stride, w, h, m[0], m[3], m[1] * fy + m[2], m[4] * fy + m[5], _f32(x0), _ONE, k, idx, ax, ay)
    _taps(texels, stride, k, idx, top, bot)
    return x0, x1


@nb.njit(fastmath=True, boundscheck=False, nogil=True, inline="always")
def _blend_row(
    texels, off, stride, w, h, m, bx, y, S, idx, ax, ay, top, bot, top32, bot32, rr, gg, bb, prefetch, ahead
):
    """Row ``y`` sampled into the float buffers, zeros outside the crop box."""
    x0, x1 = _warp_row(texels, off, stride, w, h, m, bx, y, S, idx, ax, ay, top, bot, prefetch, ahead)
    _blend(top32, bot32, ax, ay, x1 - x0, rr[x0:x1], gg[x0:x1], bb[x0:x1])
    for x in range(x0):
        rr[x] = _ZERO
        gg[x] = _ZERO
        bb[x] = _ZERO
    for x in range(x1, S):
        rr[x] = _ZERO
        gg[x] = _ZERO
        bb[x] = _ZERO


@nb.njit(parallel=True, fastmath=True, boundscheck=False, cache=True, nogil=True)
def warp_colour(
    texels, offsets, heights, widths, strides, mats, boxes, levels, jitter, factors, order, out, prefetch=True
):
    """Fill ``out`` (n, S, S, 3) uint8.

    texels, offsets, heights, widths, strides: the pyramid of :func:`fastssl.kernels.pyramid.pack_texels`;
    mats, boxes: (n, 6) float32 row-major 2x3 (mats already in each patch's level);
    levels: (n,) int32; jitter: (n,) uint8; factors: (n, 4) float32; order: (n, 4) int8;
    prefetch: request each coming row's source texels ahead (see :func:`_prefetch_row`).

    Row by row: the span of the row inside the crop box is found once; its pixels go through
    three passes over contiguous row buffers (coordinates and weights, vectorised; the texel
    loads, two 64-bit words per pixel; the unpack and blend, vectorised); for a patch without
    colour jitter the blend rounds and stores the row itself, otherwise each colour op runs
    over the row as a branch-free loop, the last one rounding and storing the row as it goes.
    A jittered patch first renders every ``MEAN_STRIDE``-th row up to contrast's place in its
    order and keeps those rows: contrast's mean comes from them (every ``MEAN_STRIDE``-th
    column), and they then go on through the remaining ops without being sampled twice.
    Every loop starts at index 0 of its buffers, so no index can be negative and LLVM
    vectorises without wrap-around checks.
    """
    n = out.shape[0]
    S = out.shape[1]
    flat = out.reshape(n, S, 3 * S)
    pf = prefetch
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
        idx = np.empty(S, np.uint32)
        top = np.empty(S, np.uint64)
        bot = np.empty(S, np.uint64)
        top32 = top.view(np.uint32)
        bot32 = bot.view(np.uint32)
        if not jit:
            for y in range(S):
                x0, x1 = _warp_row(texels, off, stride, w, h, m, bx, y, S, idx, ax, ay, top, bot, pf)
                o = flat[i, y]
                for x in range(3 * x0):
                    o[x] = 0
                _blend_store(top32, bot32, ax, ay, x1 - x0, o[3 * x0 : 3 * x1])
                for x in range(3 * x1, 3 * S):
                    o[x] = 0
            continue
        # contrast's mean grey is taken over every MEAN_STRIDE-th row and column at contrast's
        # place in the order: those rows are rendered first, up to contrast, and kept (the
        # pixels outside the crop box are 0 and stay 0 through the ops before contrast)
        pos = 0
        while ordr[pos] != 1:
            pos += 1
        nkeep = (S + MEAN_STRIDE - 1) // MEAN_STRIDE
        keep = np.empty((nkeep, 3, S), np.float32)
        acc = _ZERO
        for j in range(nkeep):
            y = j * MEAN_STRIDE
            kr = keep[j, 0]
            kg = keep[j, 1]
            kb = keep[j, 2]
            _blend_row(
                texels, off, stride, w, h, m, bx, y, S, idx, ax, ay, top, bot, top32, bot32, kr, kg, kb, pf, MEAN_STRIDE
            )
            for q in range(pos):
                op = ordr[q]
                _row_colour(kr, kg, kb, op, fac[op], _ZERO, S)
            for x in range(0, S, MEAN_STRIDE):
                acc += _WR * kr[x] + _WG * kg[x] + _WB * kb[x]
        mean = acc / _f32(nkeep * nkeep)
        for y in range(S):
            if y % MEAN_STRIDE == 0:
                j = y // MEAN_STRIDE
                kr = keep[j, 0]
                kg = keep[j, 1]
                kb = keep[j, 2]
                first = pos
            else:
                kr, kg, kb = rr, gg, bb
                _blend_row(
                    texels, off, stride, w, h, m, bx, y, S, idx, ax, ay, top, bot, top32, bot32, kr, kg, kb, pf, 1
                )
                first = 0
            for q in range(first, 3):
                op = ordr[q]
                _row_colour(kr, kg, kb, op, fac[op], mean, S)
            op = ordr[3]  # the last op rounds and stores the row as it goes
            _colour_store(kr, kg, kb, op, fac[op], mean, S, flat[i, y])


def run(pyramid, params_arrays, out: np.ndarray, prefetch: bool | None = None) -> np.ndarray:
    """Apply parameters (see :func:`prepare`) to ``out`` in place and return it. ``prefetch``:
    None prefetches pyramids of at least ``PREFETCH_MIN_BYTES``."""
    mats, boxes, levels, jitter, factors, order = params_arrays
    if prefetch is None:
        prefetch = pyramid.texels.nbytes >= PREFETCH_MIN_BYTES
    chunk = max(1, CHUNK_PIXELS // (out.shape[1] * out.shape[2]))
    with nb.parallel_chunksize(chunk):
        warp_colour(
            pyramid.texels,
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
            bool(prefetch),
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
    auto_rank = {"cpu": 0}  # auto: first on the CPU
    profiler = "stages"
    # several images' levels packed one after another: a batch from many photos is one parallel
    # call, not one per photo (each call wakes the thread pool; beside torch's, that dominated)
    many_images = True

    @classmethod
    def unavailable(cls, device_type: str) -> str | None:
        return None  # renders on the CPU; on another device the engine copies its batches there

    def __init__(self, levels, size, resized, device, threads=None, **options):
        super().__init__(levels, size, resized, device, threads)
        self.pyramid = pack_indexed(levels, "numba")  # the kernel's texel indices are 32-bit
        if threads:
            nb.set_num_threads(int(threads))
        self.threads = nb.get_num_threads()

    def render(self, p, out=None):
        if out is None:
            out = np.empty((p.n, self.size, self.size, 3), np.uint8)
        return run(self.pyramid, prepare(p.level_matrix, p.box, p.level, p.jitter, p.factors, p.order), out)

    @classmethod
    def describe(cls) -> str:
        return f"numba {nb.threading_layer()} threads"  # the layers differ in speed: name the one that ran

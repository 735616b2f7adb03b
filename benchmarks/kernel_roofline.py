"""Where the Numba kernel's time goes, pass by pass, against what the machine can do.

For each pass of a row (``_coords``, ``_taps``, ``_blend`` or ``_blend_store``, a colour op,
``_colour_store``): the time per pixel on one thread (rows of ``--size`` pixels from a real
batch, repeated for ``--seconds``), the instructions of its innermost loop as LLVM emitted
them, and how many pixels one iteration of that loop handles (the vector width it reached).
With ``--asm PASS`` the loop itself is printed.

    python benchmarks/kernel_roofline.py --size 256 --image paper:bridge
    python benchmarks/kernel_roofline.py --asm _blend
    python benchmarks/kernel_roofline.py --asm hue
    python benchmarks/kernel_roofline.py --image paper:bridge --threads 2 --batch 256 --seconds 4

The last line is the whole kernel with and without the prefetch of coming rows, on fresh
batches, by default of 16 patches on one thread (``--threads``, ``--batch``: as the engine runs).

Machine code is read with Numba's ``inspect_asm``, which the on-disk cache disables: the
script compiles in a temporary cache folder of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="fastssl-roofline-"))
os.environ["NUMBA_DISABLE_CACHING"] = "1"

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402


def inner_loop(asm: str) -> list[str]:
    """The compute loop: of the single-block loops (a label, straight code, a jump back to it)
    that call nothing, the one with the most vector instructions (the longest, for a scalar
    loop)."""
    lines = [
        ln
        for ln in asm.splitlines()
        if ln.strip()
        and not ln.strip().startswith("#")
        and (ln.strip().endswith(":") or not ln.strip().startswith("."))
    ]
    labels = {ln.rstrip(":").strip(): i for i, ln in enumerate(lines) if ln.strip().endswith(":")}
    best: list[str] = []
    key = lambda body: (sum(("ymm" in b) or ("zmm" in b) for b in body), sum("mm" in b for b in body), len(body))  # noqa: E731
    for i, ln in enumerate(lines):
        m = re.match(r"\s*j\w+\s+(\.?\w+)", ln)
        if not m or m.group(1) not in labels or labels[m.group(1)] >= i:
            continue
        body = lines[labels[m.group(1)] : i + 1]
        if any("call" in b for b in body):  # the runtime's wrappers, not a compute loop
            continue
        if sum(b.strip().endswith(":") for b in body) > 1:  # not one basic block: not innermost
            continue
        if key(body) > key(best):
            best = body
    return best


_REG_BYTES = (("zmm", 64), ("ymm", 32), ("xmm", 16))
_SUFFIX_BYTES = {"b": 1, "w": 2, "l": 4, "q": 8}


def stored_bytes(line: str) -> int:
    """Bytes an instruction stores: a move whose destination (AT&T: the last operand) is
    memory, sized by its source register (vector), its scalar form, or its suffix (integer)."""
    m = re.match(r"\s*(v?mov\w*)\s+(%\w+),\s*(\S*\(.*\))\s*$", line)
    if not m:
        return 0
    op, src = m.group(1), m.group(2)
    if op in ("movss", "vmovss", "movd", "vmovd"):
        return 4
    if op in ("movsd", "vmovsd", "vmovq"):
        return 8
    for reg, n in _REG_BYTES:
        if reg in src:
            return n
    return _SUFFIX_BYTES.get(op[-1], 8)


def lanes(body: list[str], out_bytes: int) -> int:
    """Pixels per iteration: the bytes the loop stores per trip over the bytes a pixel stores
    in that pass (its output buffers), whatever the vector width or unrolling."""
    stored = sum(stored_bytes(b) for b in body)
    return max(1, round(stored / out_bytes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--image", default=None)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--asm", default=None, help="print this pass's inner loop (e.g. _blend)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1, help="threads for the whole-kernel line (passes: one)")
    ap.add_argument("--batch", type=int, default=16, help="patches a batch for the whole-kernel line")
    a = ap.parse_args(argv)

    from fastssl import AugmentSpec
    from fastssl.kernels import numba_warp as nw
    from fastssl.mono import Renderer, images_for

    nb.set_num_threads(1)
    S = a.size
    spec = AugmentSpec(size=S)
    r = Renderer(images_for(a.image, spec), spec, "numba", threads=1)
    p = r.params(0, 16, seed=0)
    pyr = r.impl.pyramid  # the bordered levels, one uint32 a texel
    mats, boxes, levels, *_ = nw.prepare(p.level_matrix(), p.box, p.level, p.jitter, p.factors, p.order)
    i = 0  # the first patch: its rows, as the kernel sees them
    lv = levels[i]
    off, h, w, st = (int(x[lv]) for x in (pyr.offsets, pyr.heights, pyr.widths, pyr.strides))
    m = mats[i]
    f32 = np.float32

    @nb.njit(fastmath=True)
    def rows(reps, texels, m, S, idx, ax, ay, top, bot, rr, gg, bb, o, which):
        for _ in range(reps):
            for y in range(S):
                fy = f32(y)
                if which == 0:
                    nw._coords(
                        off, st, w, h, m[0], m[3], m[1] * fy + m[2], m[4] * fy + m[5], f32(0), f32(1), S, idx, ax, ay
                    )
                elif which == 1:
                    nw._taps(texels, st, S, idx, top, bot)
                elif which == 2:
                    nw._blend(top.view(np.uint32), bot.view(np.uint32), ax, ay, S, rr, gg, bb)
                elif which == 3:
                    nw._row_colour(rr, gg, bb, 3, f32(0.05), f32(0), S)
                elif which == 4:
                    nw._row_colour(rr, gg, bb, 2, f32(1.2), f32(0), S)
                elif which == 5:
                    nw._colour_store(rr, gg, bb, 2, f32(1.2), f32(0), S, o)
                else:
                    nw._blend_store(top.view(np.uint32), bot.view(np.uint32), ax, ay, S, o)

    @nb.njit(fastmath=True, boundscheck=False, nogil=True)
    def hue_row(rr, gg, bb, n, shift):  # the hue op's loop alone, for its machine code
        for x in range(n):
            rr[x], gg[x], bb[x] = nw._hue(rr[x], gg[x], bb[x], shift)

    bufs = (
        np.zeros(S, np.uint32),
        np.zeros(S, np.float32),
        np.zeros(S, np.float32),
        np.zeros(S, np.uint64),
        np.zeros(S, np.uint64),
        np.zeros(S, np.float32),
        np.zeros(S, np.float32),
        np.zeros(S, np.float32),
        np.zeros(3 * S, np.uint8),
    )
    passes = [  # name, bytes moved per pixel (loads + stores of the pass's buffers), of them stored
        ("_coords", 12, 12),
        ("_taps", 4 + 16 + 16, 16),
        ("_blend", 16 + 8 + 12, 12),
        ("hue (_row_colour op 3)", 24, 12),
        ("saturation (_row_colour op 2)", 24, 12),
        ("_colour_store (saturation as the last op)", 12 + 3, 3),
        ("_blend_store (rows without colour)", 16 + 8 + 3, 3),
    ]
    rows(1, pyr.texels, m, S, *bufs, 0)  # coordinates of the first row's ... all rows, for the taps
    out = []
    for k, (name, nbytes, out_bytes) in enumerate(passes):
        rows(1, pyr.texels, m, S, *bufs, k)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < a.seconds:
            rows(4, pyr.texels, m, S, *bufs, k)
            reps += 4
        ns = (time.perf_counter() - t0) / (reps * S * S) * 1e9
        if name.startswith("hue"):
            hue_row(bufs[5], bufs[6], bufs[7], S, f32(0.05))
        fn = {
            "_coords": nw._coords,
            "_taps": nw._taps,
            "_blend": nw._blend,
            "_colour_store": nw._colour_store,
            "_blend_store": nw._blend_store,
            "hue": hue_row,
        }.get(name.split()[0])
        body = inner_loop(next(iter(fn.inspect_asm().values()))) if fn else []
        n_ins = sum(not b.strip().endswith(":") for b in body)
        lane = lanes(body, out_bytes) if body else None
        rec = {"pass": name, "ns_per_pixel": round(ns, 3), "bytes_per_pixel": nbytes}
        if body:
            rec.update(
                loop_instructions=n_ins, pixels_per_iteration=lane, instructions_per_pixel=round(n_ins / lane, 2)
            )
        out.append(rec)
        if a.asm == name.split()[0]:
            print("\n".join(body))
    ns = {r["pass"].split()[0]: r["ns_per_pixel"] for r in out}
    plain = ns["_coords"] + ns["_taps"] + ns["_blend_store"]
    jittered = ns["_coords"] + ns["_taps"] + ns["_blend"] + ns["hue"] + 2 * ns["saturation"] + ns["_colour_store"]
    total = (plain + jittered) / 2  # the default chain jitters half the patches
    print(f"S={S}, one thread, first patch of the batch (level {lv}, {w}x{h}):")
    print(f"{'pass':44s} {'ns/pixel':>9s} {'bytes/pixel':>12s} {'loop instr.':>12s} {'pixels/iter.':>13s}")
    for rec in out:
        print(
            f"{rec['pass']:44s} {rec['ns_per_pixel']:9.3f} {rec['bytes_per_pixel']:12d} "
            f"{rec.get('loop_instructions', '-')!s:>12s} {rec.get('pixels_per_iteration', '-')!s:>13s}"
        )
    print(f"without colour (coords + taps + blend_store): {plain:.2f} ns/pixel = {1e3 / plain:.0f} Mpix/s per core")
    print(
        "with colour (coords + taps + blend + hue + 2 affine ops + the last one with the store):"
        f" {jittered:.2f} ns/pixel = {1e3 / jittered:.0f} Mpix/s per core"
    )
    print(f"half the patches jittered: {total:.2f} ns/pixel = {1e3 / total:.0f} Mpix/s per core")
    # the whole kernel with and without the prefetch of coming rows: fresh batches (a batch run
    # twice finds its texels in cache), alternating which setting gets the even ones
    B = a.batch
    nb.set_num_threads(a.threads)
    batch = np.empty((B, S, S, 3), np.uint8)
    spent = {True: 0.0, False: 0.0}
    count = {True: 0, False: 0}
    t0 = None
    b = 0
    while b < 6 or time.perf_counter() - t0 < a.seconds:
        q = r.params(B * (b + 1), B * (b + 2), seed=0)
        args = nw.prepare(q.level_matrix(), q.box, q.level, q.jitter, q.factors, q.order)
        pf = (b % 2 == 0) == (b // 2 % 2 == 0)
        b += 1
        if b <= 2:
            nw.run(pyr, args, batch, prefetch=pf)  # both ways once first (compile, warm caches)
            t0 = time.perf_counter()
            continue
        t1 = time.perf_counter()
        nw.run(pyr, args, batch, prefetch=pf)
        spent[pf] += time.perf_counter() - t1
        count[pf] += 1
    # per core: wall time x threads over the pixels
    whole = {k: spent[k] * a.threads / (max(count[k], 1) * B * S * S) * 1e9 for k in spent}
    mib = pyr.texels.nbytes / 2**20
    print(
        f"whole kernel, fresh batches of {B} on {a.threads} thread(s) (pyramid {mib:.1f} MiB): {whole[True]:.2f} "
        f"ns/pixel per core with the row prefetch, {whole[False]:.2f} without (by default on from "
        f"{nw.PREFETCH_MIN_BYTES / 2**20:.0f} MiB)"
    )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(
                {
                    "size": S,
                    "passes": out,
                    "plain_ns_per_pixel": round(plain, 3),
                    "jittered_ns_per_pixel": round(jittered, 3),
                    "total_ns_per_pixel": round(total, 3),
                    "kernel_ns_per_pixel": {"prefetch": round(whole[True], 3), "none": round(whole[False], 3)},
                    "kernel_threads": a.threads,
                    "kernel_batch": B,
                    "pyramid_mib": round(mib, 2),
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

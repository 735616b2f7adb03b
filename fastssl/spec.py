"""The paper's single-image augmentation chain as data, and the one sampler every backend uses.

:class:`AugmentSpec` holds the generator chain of Asano et al. (ICLR 2020); every field
defaults to the paper's value. :func:`sample_params` draws the per-patch parameters for any
range of patch indices at once (numpy's Philox streams, turned into parameters by compiled
Numba passes) and composes the whole geometry (initial crop, random-resized crop, rotation +
shear, flips, centre crop) into one 2x3 matrix per patch.

Coordinates: pixel *centres* sit at integer coordinates; ``matrix @ (x, y, 1)`` maps the
output pixel ``(x, y)`` (column, row) to a point of the level-0 source image. ``box`` maps
the same pixel to normalised coordinates of the random-resized crop (the ``R x R`` image of
the PIL chain): the pixel is inside that image, so gets a texel, iff both lie in ``[0, 1)``,
else it takes the fill value (0), exactly as PIL's affine transform with ``fillcolor=0``.

Determinism: patch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``. Parameters are
drawn in blocks of :data:`BLOCK` patches, each block from its own counter-based Philox stream
keyed by ``(seed, epoch, block)``. So the stream does not depend on the batch size, the number
of workers or the number of DDP ranks: a rank only chooses which patch indices it draws.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from .errors import FastSSLError
from .kernels.backend import RenderParams

BLOCK = 256
COLOUR_OPS = ("brightness", "contrast", "saturation", "hue")
PAPER_EPOCH = 1_281_167  # patches per epoch in the paper: the size of ImageNet-train


@dataclass(frozen=True)
class AugmentSpec:
    """The augmentation chain; defaults are the paper's (Asano et al., ICLR 2020)."""

    size: int = 256  # final patch side S
    initial_crop: float | None = 0.5  # square crop of this fraction of the short side; None: off
    scale: tuple[float, float] = (1 / 500, 1.0)  # random-resized-crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio, sampled log-uniformly
    margin: float = math.sqrt(2)  # the RRC output is round(margin * S) before the affine
    rotation: float = 30.0  # degrees, uniform in [-rotation, rotation]
    shear: float = 30.0  # degrees (x-shear), uniform in [-shear, shear]
    vflip: float = 0.0  # probability of a vertical flip
    hflip: float = 0.0  # probability of a horizontal flip
    jitter_p: float = 0.5  # probability that colour jitter is applied to a patch
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grey_p: float = 0.0  # probability that a patch ends grey, after its jitter (not in the paper)
    random_order: bool = True  # the four colour ops in a random order per patch
    antialias: bool = True  # sample from the pyramid level matching the local scale

    def __post_init__(self) -> None:
        self.validate()

    def replace(self, **changes) -> AugmentSpec:
        return dataclasses.replace(self, **changes)

    @property
    def resized(self) -> int:
        """Side of the random-resized crop, ``round(margin * size)``."""
        return int(round(self.margin * self.size))

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise FastSSLError(f"invalid augmentation spec: {msg}")

        if not isinstance(self.size, (int, np.integer)) or isinstance(self.size, bool):
            bad(f"size must be an integer, got {self.size!r}")
        if not 1 <= self.size <= 4096:
            bad(f"size must be between 1 and 4096 pixels, got {self.size}")
        if self.initial_crop is not None and not 0 < self.initial_crop <= 1:
            bad(f"initial_crop must be in (0, 1] (or None to disable), got {self.initial_crop}")
        for name, lo_min, hi_max in (("scale", 0.0, 1.0), ("ratio", 0.0, math.inf)):
            pair = getattr(self, name)
            if len(pair) != 2:
                bad(f"{name} must be a (low, high) pair, got {pair!r}")
            lo, hi = pair
            if not (math.isfinite(lo) and (math.isfinite(hi) or hi_max == math.inf)):
                bad(f"{name} must be finite, got {pair!r}")
            if not lo_min < lo <= hi <= hi_max:
                bad(f"{name} must satisfy {lo_min:g} < low <= high <= {hi_max:g}, got {pair!r}")
        if not math.isfinite(self.ratio[1]):
            bad(f"ratio must be finite, got {self.ratio!r}")
        if not 1 <= self.margin <= 4:
            bad(f"margin must be in [1, 4], got {self.margin}")
        if not 0 <= self.rotation <= 180:
            bad(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.shear < 80:
            bad(f"shear must be in [0, 80) degrees, got {self.shear}")
        for name in ("vflip", "hflip", "jitter_p", "grey_p"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                bad(f"{name} is a probability and must be in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0 <= v <= 10:
                bad(f"{name} must be in [0, 10], got {v}")
        if not 0 <= self.hue <= 0.5:
            bad(f"hue must be in [0, 0.5], got {self.hue}")


@dataclass
class PatchParams:
    """Per-patch parameters for ``n`` patches; what every backend applies."""

    size: int
    matrix: np.ndarray  # (n, 2, 3) float64: output pixel -> level-0 source pixel
    box: np.ndarray  # (n, 2, 3) float64: output pixel -> normalised RRC coords, valid in [0, 1)
    level: np.ndarray  # (n,) int32: pyramid level to sample from
    jitter: np.ndarray  # (n,) bool: colour jitter applied
    factors: np.ndarray  # (n, 4) float32: brightness, contrast, saturation, hue
    order: np.ndarray  # (n, 4) int8: permutation of COLOUR_OPS indices
    # the raw draws, kept for the PIL reference chain and for inspection
    crop: np.ndarray  # (n, 4) float64: RRC box x0, y0, w, h in level-0 source pixels (edges)
    angle: np.ndarray  # (n,) degrees
    shear: np.ndarray  # (n,) degrees
    flips: np.ndarray  # (n, 2) bool: horizontal, vertical
    image: np.ndarray | None = None  # (n,) int32: the source image of each patch (0 with one image)

    def __post_init__(self) -> None:
        if self.image is None:
            self.image = np.zeros(len(self.level), dtype=np.int32)

    def __len__(self) -> int:
        return len(self.level)

    def level_matrix(self) -> np.ndarray:
        """``matrix`` expressed in the coordinates of each patch's own pyramid level."""
        return level_matrix(self.matrix, self.level)

    def for_render(self) -> RenderParams:
        """What a backend applies (:class:`~fastssl.kernels.backend.RenderParams`)."""
        return RenderParams(self.level_matrix(), self.box, self.level, self.jitter, self.factors, self.order)

    def subset(self, idx) -> PatchParams:
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return PatchParams(**{k: (v if k == "size" else v[idx]) for k, v in kw.items()})


def level_matrix(matrix: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Map level-0 pixel-centre coordinates to level ``l`` of a 2x2 box pyramid.

    Pixel ``k`` of level ``l`` averages level-0 pixels ``[2^l k, 2^l (k+1))``, so a level-0
    coordinate ``u`` is ``(u + 0.5) / 2^l - 0.5`` there.
    """
    s = np.ldexp(1.0, -np.asarray(level, dtype=np.int64))[:, None, None]
    out = matrix * s
    out[:, :, 2] += 0.5 * s[:, :, 0] - 0.5
    return out


def num_levels(height: int, width: int, min_side: int = 4) -> int:
    """Pyramid depth: halve until the short side would drop below ``min_side``."""
    n, side = 1, min(height, width)
    while side // 2 >= min_side:
        side //= 2
        n += 1
    return n


PARAMS_STREAM, IMAGE_STREAM = 0x5EED, 0x1A6E  # the two Philox streams of a block


def _generator(seed: int, epoch: int, block: int, stream: int = PARAMS_STREAM) -> np.random.Generator:
    key = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch, block, stream])
    return np.random.Generator(np.random.Philox(key))


@nb.njit(cache=True)
def _block_from_uniforms(u, cx, cy, rw, rh, rrc, spread, hflip, vflip, jitter_p, colour, random_order, grey_p):
    """The draws of one block after its crop offsets, read in order from ``u``, the block's
    stream of uniform doubles: random-resized-crop tries, then per patch its box offsets, angle,
    shear, flips, jitter, four factors, the order of the ops and grey. Returns None when ``u``
    runs out first (the caller draws a longer ``u`` from the same stream).

    ``rrc``: scale and log-ratio ranges (4); ``spread``: rotation and shear bounds (2);
    ``colour``: low and high of brightness, contrast and saturation, then the hue bound (7).
    ``uniform(lo, hi)`` of numpy's Generator is ``lo + (hi - lo) * random()``, so the values are
    the ones its per-call draws give, in one pass.
    """
    n = len(cx)
    bw = np.zeros(n, np.int64)
    bh = np.zeros(n, np.int64)
    todo = np.arange(n)
    m = n
    pos = 0
    for _ in range(1000):  # random-resized crop, retried per patch until the box fits
        if pos + 2 * m > len(u):
            return None
        nxt = 0
        for j in range(m):
            t = todo[j]
            area = (rw[t] * rh[t]) * (rrc[0] + (rrc[1] - rrc[0]) * u[pos + j])
            aspect = np.exp(rrc[2] + (rrc[3] - rrc[2]) * u[pos + m + j])
            w = np.int64(np.round(np.sqrt(area * aspect)))
            h = np.int64(np.round(np.sqrt(area / aspect)))
            if w > 0 and h > 0 and w <= rw[t] and h <= rh[t]:
                bw[t] = w
                bh[t] = h
            else:
                todo[nxt] = t
                nxt += 1
        pos += 2 * m
        m = nxt
        if m == 0:
            break
    if m:
        raise FastSSLError("random-resized crop found no valid box in 1000 tries: check scale/ratio")
    per = 11 + (4 if random_order else 0) + (1 if grey_p > 0 else 0)
    if pos + per * n > len(u):
        return None
    v = u[pos : pos + per * n]
    crop = np.empty((n, 4))
    angle = np.empty(n)
    shear = np.empty(n)
    flips = np.empty((n, 2), np.bool_)
    jitter = np.empty(n, np.bool_)
    factors = np.empty((n, 4))
    order = np.empty((n, 4), np.int64)
    for i in range(n):
        crop[i, 0] = cx[i] + np.int64(v[i] * (rw[i] - bw[i] + 1))
        crop[i, 1] = cy[i] + np.int64(v[n + i] * (rh[i] - bh[i] + 1))
        crop[i, 2] = bw[i]
        crop[i, 3] = bh[i]
        angle[i] = -spread[0] + (spread[0] - -spread[0]) * v[2 * n + i]
        shear[i] = -spread[1] + (spread[1] - -spread[1]) * v[3 * n + i]
        flips[i, 0] = v[4 * n + i] < hflip
        flips[i, 1] = v[5 * n + i] < vflip
        jitter[i] = v[6 * n + i] < jitter_p
        for k in range(3):
            lo = colour[2 * k]
            factors[i, k] = lo + (colour[2 * k + 1] - lo) * v[(7 + k) * n + i]
        factors[i, 3] = -colour[6] + (colour[6] - -colour[6]) * v[10 * n + i]
        for k in range(4):
            order[i, k] = k
        if random_order:  # argsort of the patch's four draws (insertion sort; they never tie)
            r = v[11 * n + 4 * i : 11 * n + 4 * i + 4]
            for k in range(1, 4):
                q = k
                while q > 0 and r[order[i, q - 1]] > r[order[i, q]]:
                    order[i, q - 1], order[i, q] = order[i, q], order[i, q - 1]
                    q -= 1
    if grey_p > 0:  # drawn last and only when asked: the other draws stay as they were
        g = v[(per - 1) * n :]
        for i in range(n):
            if g[i] < grey_p:  # grey after the jitter (if any): saturation at 0, moved to the end
                if not jitter[i]:
                    factors[i, 0] = 1.0
                    factors[i, 1] = 1.0
                    factors[i, 3] = 0.0
                factors[i, 2] = 0.0
                k = 0
                for q in range(4):
                    if order[i, q] != 2:
                        order[i, k] = order[i, q]
                        k += 1
                order[i, 3] = 2
                jitter[i] = True
    return crop, angle, shear, flips, jitter, factors, order


def _draw_block(spec: AugmentSpec, height, width, rng: np.random.Generator, n: int):
    """Raw draws for ``n`` patches from one block's stream. ``height`` and ``width`` are the
    source image's (ints), or each patch's source image's (arrays of ``n``). The crop offsets
    are bounded integers (numpy); every later draw is a uniform double, so those are drawn as
    one array and turned into parameters in one compiled pass (:func:`_block_from_uniforms`)."""
    multi = np.ndim(height) > 0
    c = crop_region(spec, height, width) if spec.initial_crop is not None else None
    if c is not None:
        cx = rng.integers(0, width - c + 1, size=n)
        cy = rng.integers(0, height - c + 1, size=n)
        rw = np.array(c, dtype=np.int64) if multi else np.full(n, c)
        rh = rw.copy()
    else:
        cx = np.zeros(n, dtype=np.int64)
        cy = np.zeros(n, dtype=np.int64)
        rw = np.array(width, dtype=np.int64) if multi else np.full(n, width)
        rh = np.array(height, dtype=np.int64) if multi else np.full(n, height)
    lo = lambda v: max(0.0, 1.0 - v)  # noqa: E731
    rrc = np.array([spec.scale[0], spec.scale[1], *np.log(spec.ratio)])
    spread = np.array([spec.rotation, spec.shear], dtype=np.float64)
    colour = np.array(
        [lo(spec.brightness), 1 + spec.brightness, lo(spec.contrast), 1 + spec.contrast]
        + [lo(spec.saturation), 1 + spec.saturation, spec.hue],
        dtype=np.float64,
    )
    state = rng.bit_generator.state
    k = 20 * n  # room for 2 crop tries a patch (2 draws a try), then up to 16 draws a patch
    while True:
        out = _block_from_uniforms(
            rng.random(k),
            cx,
            cy,
            rw,
            rh,
            rrc,
            spread,
            spec.hflip,
            spec.vflip,
            spec.jitter_p,
            colour,
            spec.random_order,
            spec.grey_p,
        )
        if out is not None:
            return out
        rng.bit_generator.state = state  # the same stream, read further
        k *= 2


@nb.njit(cache=True)
def _compose_parts(crop, flips, ca, sa, ts, R, off, cen):
    """The factors of :func:`compose` per patch (T, the 2x2 inverse of rotation + shear, A
    without its translation, Nb, Bs), element by element with the same arithmetic as numpy's
    elementwise operations; the products are left to numpy's matmul."""
    n = len(crop)
    T = np.zeros((n, 3, 3))
    Finv = np.empty((n, 2, 2))
    A = np.zeros((n, 3, 3))
    Nb = np.zeros((n, 3, 3))
    Bs = np.zeros((n, 3, 3))
    for i in range(n):
        # output pixel -> flipped R-space: (x + off, y + off), then undo the flips:
        # p' = cen + s * (x + off - cen)
        sx = -1.0 if flips[i, 0] else 1.0
        sy = -1.0 if flips[i, 1] else 1.0
        T[i, 0, 0] = sx
        T[i, 1, 1] = sy
        T[i, 0, 2] = cen + sx * (off - cen)
        T[i, 1, 2] = cen + sy * (off - cen)
        T[i, 2, 2] = 1.0
        # inverse of F = Rot(a) @ ShearX(s) = [[ca, ca*ts - sa], [sa, sa*ts + ca]] (det 1)
        Finv[i, 0, 0] = sa[i] * ts[i] + ca[i]
        Finv[i, 0, 1] = -(ca[i] * ts[i] - sa[i])
        Finv[i, 1, 0] = -sa[i]
        Finv[i, 1, 1] = ca[i]
        A[i, :2, :2] = Finv[i]
        A[i, 2, 2] = 1.0
        # R-space pixel centre -> normalised box coords
        Nb[i, 0, 0] = Nb[i, 1, 1] = 1.0 / R
        Nb[i, 0, 2] = Nb[i, 1, 2] = 0.5 / R
        Nb[i, 2, 2] = 1.0
        # normalised box -> level-0 source pixel centres: u = x0 + s * w - 0.5
        Bs[i, 0, 0] = crop[i, 2]
        Bs[i, 1, 1] = crop[i, 3]
        Bs[i, 0, 2] = crop[i, 0] - 0.5
        Bs[i, 1, 2] = crop[i, 1] - 0.5
        Bs[i, 2, 2] = 1.0
    return T, Finv, A, Nb, Bs


def compose(spec: AugmentSpec, crop, angle, shear, flips):
    """Compose the geometry of the chain into (matrix, box), both (n, 2, 3), output -> source.

    Chain (forward): RRC box -> R x R, rotate+shear about the centre, flips, centre-crop S.
    Inverse, for output pixel (x, y): centre-crop offset, undo flips, inverse affine, then
    R-space pixel centre (p, q) -> box-normalised ((p + .5) / R, (q + .5) / R) -> source.
    """
    R, S = spec.resized, spec.size
    off = int(round((R - S) / 2.0))
    cen = (R - 1) / 2.0
    a = np.deg2rad(angle)
    ts = np.tan(np.deg2rad(shear))
    T, Finv, A, Nb, Bs = _compose_parts(
        np.ascontiguousarray(crop, dtype=np.float64),
        np.ascontiguousarray(flips, dtype=np.bool_),
        np.cos(a),
        np.sin(a),
        ts,
        float(R),
        float(off),
        cen,
    )
    A[:, :2, 2] = cen - Finv @ np.array([cen, cen])
    box = Nb @ A @ T
    matrix = Bs @ box
    return matrix[:, :2].copy(), box[:, :2].copy()


def choose_level(matrix: np.ndarray, levels, antialias: bool = True) -> np.ndarray:
    """Pyramid level per patch: round(log2 of the larger Jacobian column norm), clamped to the
    pyramid's depth (``levels``: one int, or one per patch)."""
    if not antialias or np.max(levels, initial=1) <= 1:
        return np.zeros(len(matrix), dtype=np.int32)
    step = np.maximum(np.hypot(matrix[:, 0, 0], matrix[:, 1, 0]), np.hypot(matrix[:, 0, 1], matrix[:, 1, 1]))
    lvl = np.round(np.log2(np.maximum(step, 1e-12)))
    return np.clip(lvl, 0, np.asarray(levels) - 1).astype(np.int32)


def crop_region(spec: AugmentSpec, height, width):
    """Side of the initial square crop (the short side without one); per image for arrays."""
    short = np.minimum(height, width)
    if spec.initial_crop is None:
        return short
    if np.ndim(short):
        return (short * spec.initial_crop).astype(np.int64)
    return int(short * spec.initial_crop)


def check_image_fits(spec: AugmentSpec, height: int, width: int, min_region: int = 8) -> None:
    """Raise when the image is too small for the chain (the crop region must be >= min_region)."""
    region = crop_region(spec, height, width)
    if region < min_region:
        what = f"the initial crop ({spec.initial_crop:g} of the short side)" if spec.initial_crop else "its short side"
        raise FastSSLError(
            f"image {width}x{height} is too small: {what} is {region} px, need at least {min_region} px; "
            "use a larger image or a larger initial crop"
        )


def sample_params(
    spec: AugmentSpec, height, width, start: int, stop: int, *, seed: int = 0, epoch: int = 0, depths=None
) -> PatchParams:
    """Parameters of patches ``start .. stop-1`` of ``epoch`` for an ``height x width`` image,
    or, with sequences of heights and widths, for a set of images: then each patch's source
    image is drawn too (from a second stream of its block), so patch ``i`` of epoch ``e`` is
    still a function of ``(seed, e, i)`` alone. ``depths``: each image's pyramid depth, from a
    caller that checked the images once (their size checks and depths are then not redone)."""
    if start < 0 or stop < start:
        raise FastSSLError(f"invalid patch range {start}..{stop}")
    if seed < 0 or epoch < 0:
        raise FastSSLError(f"seed and epoch must be >= 0, got seed {seed}, epoch {epoch}")
    hs, ws = np.atleast_1d(np.asarray(height, dtype=np.int64)), np.atleast_1d(np.asarray(width, dtype=np.int64))
    if len(hs) != len(ws) or len(hs) < 1:
        raise FastSSLError(f"heights and widths must be one per image, got {len(hs)} and {len(ws)}")
    multi = len(hs) > 1
    if depths is None:
        for h, w in {(int(h), int(w)) for h, w in zip(hs, ws, strict=True)}:
            check_image_fits(spec, h, w)
        depth = np.array([num_levels(int(h), int(w)) for h, w in zip(hs, ws, strict=True)])
    else:
        depth = np.asarray(depths)
    parts = []
    b0, b1 = start // BLOCK, (stop + BLOCK - 1) // BLOCK
    for b in range(b0, b1):
        if multi:
            img = _generator(seed, epoch, b, IMAGE_STREAM).integers(0, len(hs), size=BLOCK)
            draws = _draw_block(spec, hs[img], ws[img], _generator(seed, epoch, b), BLOCK)
        else:
            img = np.zeros(BLOCK, dtype=np.int64)
            draws = _draw_block(spec, int(hs[0]), int(ws[0]), _generator(seed, epoch, b), BLOCK)
        parts.append((img, *draws))
    if parts:
        raw = [np.concatenate(x) for x in zip(*parts, strict=True)]
        lo = start - b0 * BLOCK
        raw = [x[lo : lo + stop - start] for x in raw]
    else:
        raw = [
            np.zeros(0, np.int64),
            np.zeros((0, 4)),
            np.zeros(0),
            np.zeros(0),
            np.zeros((0, 2), bool),
            np.zeros(0, bool),
            np.zeros((0, 4)),
            np.zeros((0, 4), np.int64),
        ]
    image, crop, angle, shear, flips, jitter, factors, order = raw
    matrix, box = compose(spec, crop, angle, shear, flips)
    level = choose_level(matrix, depth[image] if multi else int(depth[0]), spec.antialias)
    return PatchParams(
        size=spec.size,
        matrix=matrix,
        box=box,
        level=level,
        jitter=jitter.astype(bool),
        factors=factors.astype(np.float32),
        order=order.astype(np.int8),
        crop=crop,
        angle=angle,
        shear=shear,
        flips=flips.astype(bool),
        image=image.astype(np.int32),
    )

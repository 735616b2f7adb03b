"""The paper's per-image PIL chain, applying the parameters our sampler drew.

This is how the authors' generator makes a patch (antialiased bicubic resize of the crop box,
bilinear affine with fill 0, flips, centre crop, then torchvision-style colour jitter on a PIL
image), written against :class:`~fastssl.spec.PatchParams` so it can be compared patch by patch
with the fused kernels, and timed as the "paper-style" peer in ``fastssl bench augment``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from .spec import AugmentSpec, PatchParams


def pil_affine_data(A: np.ndarray) -> tuple:
    """PIL AFFINE coefficients for a 2x3 inverse map given in pixel-centre coordinates.

    PIL evaluates its map at pixel edges convention (centre of pixel k at k + 0.5) on both
    sides, so the offset shifts by 0.5 - lin @ (0.5, 0.5).
    """
    lin = A[:, :2]
    off = A[:, 2] + 0.5 - lin @ np.array([0.5, 0.5])
    return (lin[0, 0], lin[0, 1], off[0], lin[1, 0], lin[1, 1], off[1])


def _hue_pil(img: Image.Image, shift: float) -> Image.Image:
    """torchvision's PIL ``adjust_hue``: shift the uint8 H channel with wrap-around."""
    h, s, v = img.convert("HSV").split()
    nh = (np.asarray(h, dtype=np.int64) + int(shift * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(nh.astype(np.uint8), "L"), s, v)).convert("RGB")


def pil_colour(img: Image.Image, factors, order) -> Image.Image:
    for op in order:
        f = float(factors[op])
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(f)
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(f)
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(f)
        else:
            img = _hue_pil(img, f)
    return img


def inverse_affine(spec: AugmentSpec, angle: float, shear: float) -> np.ndarray:
    """The R-space inverse map of rotation + x-shear about the centre (as in spec.compose)."""
    R = spec.resized
    cen = (R - 1) / 2.0
    a, ts = np.deg2rad(angle), np.tan(np.deg2rad(shear))
    ca, sa = np.cos(a), np.sin(a)
    Finv = np.array([[sa * ts + ca, -(ca * ts - sa)], [-sa, ca]])
    return np.concatenate([Finv, (np.array([cen, cen]) - Finv @ np.array([cen, cen]))[:, None]], axis=1)


def pil_patch(img: Image.Image, spec: AugmentSpec, p: PatchParams, i: int, colour: bool = True) -> np.ndarray:
    """Patch ``i`` of ``p`` through the PIL chain, as an (S, S, 3) uint8 array."""
    R, S = spec.resized, spec.size
    x0, y0, w, h = p.crop[i]
    im = img.resize((R, R), Image.Resampling.BICUBIC, box=(x0, y0, x0 + w, y0 + h))
    A = inverse_affine(spec, p.angle[i], p.shear[i])
    im = im.transform((R, R), Image.Transform.AFFINE, pil_affine_data(A), Image.Resampling.BILINEAR, fillcolor=0)
    if p.flips[i, 0]:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if p.flips[i, 1]:
        im = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    off = int(round((R - S) / 2.0))
    im = im.crop((off, off, off + S, off + S))
    if colour and p.jitter[i]:
        im = pil_colour(im, p.factors[i], p.order[i])
    return np.asarray(im, dtype=np.uint8)


def pil_batch(img: Image.Image, spec: AugmentSpec, p: PatchParams, colour: bool = True) -> np.ndarray:
    return np.stack([pil_patch(img, spec, p, i, colour) for i in range(len(p))])

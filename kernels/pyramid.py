"""A 2x2 box pyramid of an RGB uint8 image, and the packed forms the kernels read.

A packed texel is one little-endian ``uint32`` (R | G << 8 | B << 16). The Numba kernel reads
the bordered form of :func:`pack_texels` (all levels in one flat buffer, located by
``offsets``, ``heights``, ``widths`` and ``strides``); the torch and DALI backends an atlas
(:func:`build_atlas`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import UnsupportedInput


@dataclass
class Pyramid:
    """The levels of a 2x2 box pyramid; each backend packs them in its own form."""

    levels: list  # L arrays (h, w, 3) uint8, level 0 first

    def __len__(self) -> int:
        return len(self.levels)


def box_halve(img: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks (odd trailing row/column dropped), rounding to nearest."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    x = img[:h, :w].astype(np.uint16)
    s = x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


def pack_rgb(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.uint32)
    return (x[..., 0] | (x[..., 1] << 8) | (x[..., 2] << 16)).ravel()


def build_pyramid(img: np.ndarray, num_levels: int) -> Pyramid:
    """Levels 0..num_levels-1 of ``img`` (h, w, 3) uint8."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) uint8 image, got {img.shape} {img.dtype}")
    levels = [np.ascontiguousarray(img)]
    for _ in range(num_levels - 1):
        levels.append(box_halve(levels[-1]))
    return Pyramid(levels)


@dataclass
class Atlas:
    """All levels packed in one (H, W, 3) uint8 image: level 0 at the left, the smaller levels
    in a column to its right, each inside a one-texel border that replicates its edge.
    ``origin[l]`` is the (x, y) of level l's pixel (0, 0); ``shape[l]`` its (w, h)."""

    image: np.ndarray
    origin: np.ndarray  # (L, 2) int64
    shape: np.ndarray  # (L, 2) int64


def build_atlas(levels: list) -> Atlas:
    h0, w0 = levels[0].shape[:2]
    col = w0 + 2  # x of the column of smaller levels
    width = col + (levels[1].shape[1] + 2 if len(levels) > 1 else 0)
    height = max(h0 + 2, sum(lv.shape[0] + 2 for lv in levels[1:]))
    image = np.zeros((height, width, 3), np.uint8)
    origin, shape, y = [], [], 0
    for i, lv in enumerate(levels):
        x0, y0 = (0, 0) if i == 0 else (col, y)
        h, w = lv.shape[:2]
        image[y0 : y0 + h + 2, x0 : x0 + w + 2] = np.pad(lv, ((1, 1), (1, 1), (0, 0)), mode="edge")
        origin.append((x0 + 1, y0 + 1))
        shape.append((w, h))
        if i:
            y += h + 2
    return Atlas(image, np.array(origin, np.int64), np.array(shape, np.int64))


def atlas_of(levels: list) -> tuple[Atlas, np.ndarray]:
    """The atlas of one image's levels, or of several images' (a list of level lists): each
    image's own atlas, placed on shelves of a roughly square sheet (so that atlas coordinates
    keep their precision), its levels numbered after the previous image's. Returns the atlas
    and the index of each image's level 0 (``[0]`` for one image)."""
    if not isinstance(levels[0], list):
        return build_atlas(levels), np.zeros(1, np.int64)
    parts = [build_atlas(lv) for lv in levels]
    sizes = np.array([a.image.shape[:2] for a in parts], np.int64)  # (h, w) each
    width = max(int(sizes[:, 1].max()), int(np.ceil(np.sqrt((sizes[:, 0] * sizes[:, 1]).sum()))))
    places, x, y, shelf = [], 0, 0, 0
    for h, w in sizes:
        if x + w > width:  # the next shelf
            x, y, shelf = 0, y + shelf, 0
        places.append((x, y))
        x, shelf = x + int(w), max(shelf, int(h))
    image = np.zeros((y + shelf, width, 3), np.uint8)
    for a, (px, py) in zip(parts, places, strict=True):
        h, w = a.image.shape[:2]
        image[py : py + h, px : px + w] = a.image
    origin = np.concatenate([a.origin + np.array(pl, np.int64) for a, pl in zip(parts, places, strict=True)])
    shape = np.concatenate([a.shape for a in parts])
    first = np.cumsum([0] + [len(lv) for lv in levels[:-1]]).astype(np.int64)
    return Atlas(image, origin, shape), first


@dataclass
class TexelPyramid:
    """The levels for the Numba kernel: each level inside a one-texel border that repeats its
    edge, row-major with ``strides[l] = widths[l] + 2``, one ``uint32`` a texel (R | G << 8 |
    B << 16), all levels in one flat buffer that ends with one spare texel. The 64-bit word
    that starts at texel j holds texel j in its low half and texel j + 1 in its high half, so
    the two texels of a bilinear tap's row are one (4-byte aligned) 64-bit load; the spare
    texel makes that load valid at the last texel too. ``offsets[l]`` is the index of level
    l's pixel (0, 0). Four bytes a texel (about 26 MB for the pyramid of a 2560x1920 photo)."""

    texels: np.ndarray  # (total + 1,) uint32
    offsets: np.ndarray  # (L,) int64
    heights: np.ndarray  # (L,) int64
    widths: np.ndarray  # (L,) int64
    strides: np.ndarray  # (L,) int64


def pack_texels(levels: list) -> TexelPyramid:
    texels, offsets, start = [], [], 0
    for lv in levels:
        bordered = np.pad(lv, ((1, 1), (1, 1), (0, 0)), mode="edge")
        texels.append(pack_rgb(bordered))
        offsets.append(start + bordered.shape[1] + 1)
        start += texels[-1].size
    texels.append(np.zeros(1, np.uint32))
    return TexelPyramid(
        np.concatenate(texels),
        np.array(offsets, np.int64),
        np.array([lv.shape[0] for lv in levels], np.int64),
        np.array([lv.shape[1] for lv in levels], np.int64),
        np.array([lv.shape[1] + 2 for lv in levels], np.int64),
    )


def texel_count(levels) -> int:
    """The length of :func:`pack_texels`' buffer for these levels (each with its one-texel
    border, plus the trailing zero texel), without building it."""
    return sum((lv.shape[0] + 2) * (lv.shape[1] + 2) for lv in levels) + 1


def pack_indexed(levels, backend: str) -> TexelPyramid:
    """:func:`pack_texels` for a kernel that indexes texels with 32 bits: of one image's levels,
    or of several images' (a list of level lists, their levels numbered image after image),
    refused before packing when the buffer would not fit such indices."""
    several = isinstance(levels[0], list)
    flat = [lv for image in levels for lv in image] if several else levels
    count = texel_count(flat)
    if count >= 2**31:
        what = "these images together" if several else "image"
        raise UnsupportedInput(
            f"{what} too large for the {backend} backend: the pyramid has {count:,} texels (at most 2**31); "
            "downscale first"
        )
    return pack_texels(flat)

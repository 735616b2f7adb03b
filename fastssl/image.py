"""Load and validate the single source image (PIL decodes; this module only checks and converts).

Accepted: anything PIL opens. EXIF orientation is applied. Colour modes are converted to RGB:
grey (L, LA, 1), palette (P, PA), CMYK and YCbCr/LAB by PIL's converters; alpha is dropped (the
colour channels are kept as stored, not composited); 16- and 32-bit integer grey (I;16, I) are
scaled to 8 bits by their full range (65535 -> 255). Floating-point images (mode F) are refused:
their range is not defined. Every failure raises FastSSLError with one actionable line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FastSSLError

DEFAULT_IMAGE = "grace_hopper.jpg"  # ships with matplotlib; the built-in default photo


def default_image_path() -> Path:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data(DEFAULT_IMAGE) as f:
        return Path(f.name)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """An (h, w, 3) uint8 array for any PIL image mode we accept."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise FastSSLError(f"{mode} image has values outside 0..65535; convert it to 8-bit RGB first")
        if mode != "I" or (a.size and a.max() > 255):  # 16-bit data: full range 65535 -> 255
            a = np.round(a * (255.0 / 65535.0)).astype(np.int64)
        return np.repeat(a.astype(np.uint8)[:, :, None], 3, axis=2)
    if mode == "F":
        raise FastSSLError("floating-point (mode F) images have no defined range; convert to 8-bit RGB first")
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as e:
        raise FastSSLError(f"unsupported image mode {mode!r} ({e}); convert the image to 8-bit RGB") from None


def load_image(path: str | os.PathLike | None) -> np.ndarray:
    """Decode ``path`` (or the built-in default when None) into an (h, w, 3) uint8 array."""
    if path is None:
        path = default_image_path()
    p = Path(path)
    if not p.exists():
        raise FastSSLError(f"image not found: {p}")
    if p.is_dir():
        raise FastSSLError(f"expected an image file, got a directory: {p}")
    try:
        with Image.open(p) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = to_rgb_array(img)
    except FastSSLError:
        raise
    except UnidentifiedImageError:
        raise FastSSLError(f"not an image PIL can read: {p}") from None
    except Image.DecompressionBombError as e:
        raise FastSSLError(f"image too large to decode safely: {p} ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise FastSSLError(f"corrupt or truncated image {p}: {e}") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FastSSLError(f"image has no pixels: {p}")
    return arr

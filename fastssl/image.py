"""Load and validate the single source image (PIL decodes; this module only checks and converts).

Accepted: anything PIL opens. EXIF orientation is applied. Colour modes are converted to RGB:
grey (L, LA, 1), palette (P, PA), CMYK and YCbCr/LAB by PIL's converters; alpha is dropped (the
colour channels are kept as stored, not composited); 16- and 32-bit integer grey (I;16, I) are
scaled to 8 bits by their full range (65535 -> 255). Floating-point images (mode F) are refused:
their range is not defined. Every failure raises FastSSLError with one actionable line.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .cache import default_cache, download
from .errors import FastSSLError

# the file suffixes read as images, everywhere (folders of sources, class folders, archives)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

DEFAULT_IMAGE = "grace_hopper.jpg"  # ships with matplotlib; the built-in default photo

# The paper's source photos (Asano et al., ICLR 2020), from the authors' public repository that
# generates the single-image datasets (pinned commit), fetched once into the cache and checked.
PAPER_REPO = (
    "https://raw.githubusercontent.com/yukimasano/single_img_pretraining/04b07233154c614c6ae53535fe80de81e904ca8f"
)
PAPER_IMAGES = {  # name -> (file in that repository, SHA-256)
    "ameyoko": ("images/ameyoko.jpg", "78c2681de2dbfb416fb861ca3ae0a5e21f3f53c56dfc18b276b0feab4ec526aa"),
    "bridge": ("images/sf.png", "a17d42cda71851ff48b6abf24f7eaf28eb021e05094805443de073c11696b7f6"),
    "animals": ("images/animals.png", "8d53d41034236f3b7248134e1b9b48060ee0f6eed1eb779a1f0522e0bf05f533"),
}


def paper_image(name: str, cache=None, base_url: str | None = None, progress: bool = True) -> Path:
    """The path of the paper's photo ``name`` (ameyoko, bridge, animals), downloaded on first use."""
    if name not in PAPER_IMAGES:
        raise FastSSLError(f"unknown paper image {name!r}: choose paper:{', paper:'.join(PAPER_IMAGES)}")
    rel, sha = PAPER_IMAGES[name]
    dest = Path(cache or default_cache()) / "paper-images" / Path(rel).name
    return download(f"{base_url or PAPER_REPO}/{rel}", dest, sha256=sha, progress=progress)


def paper_name(path) -> str | None:
    """NAME of ``paper:NAME``, else None."""
    return path[len("paper:") :] if isinstance(path, str) and path.startswith("paper:") else None


def resolve_image(path) -> Path:
    """A path, ``paper:NAME`` (downloaded on first use) or None (the built-in photo)."""
    if path is None:
        return default_image_path()
    if paper_name(path) is not None:
        return paper_image(paper_name(path))
    return Path(path)


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


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, which must be a regular file: a FIFO, device or socket is refused
    without blocking on it (opened non-blocking, checked on the open descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FastSSLError(f"image not found: {path}") from None
    except OSError as e:
        raise FastSSLError(f"cannot read {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise FastSSLError(f"expected an image file, got a directory: {path}")
        raise FastSSLError(f"{path} is not a regular file (a FIFO, device or socket): give an image file")
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as e:
            raise FastSSLError(f"cannot read {path}: {e.strerror}") from None


def decode(data: bytes, name, exif: bool = True) -> np.ndarray:
    """Encoded image bytes to (h, w, 3) uint8 (EXIF orientation applied with ``exif``); every
    failure, a decompression bomb included, is one FastSSLError line."""
    try:
        with warnings.catch_warnings():
            # sizes between PIL's warning and error limits decode (or fail) without a warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                arr = to_rgb_array(ImageOps.exif_transpose(img) if exif else img)
    except FastSSLError:
        raise
    except UnidentifiedImageError:
        raise FastSSLError(f"not an image PIL can read: {name}") from None
    except Image.DecompressionBombError as e:
        raise FastSSLError(f"image too large to decode safely: {name} ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise FastSSLError(f"corrupt or truncated image {name}: {e}") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FastSSLError(f"image has no pixels: {name}")
    return arr


def load_image(path: str | os.PathLike | None) -> np.ndarray:
    """Decode ``path`` (``paper:NAME`` for the paper's photos; the built-in photo when None)
    into an (h, w, 3) uint8 array."""
    p = resolve_image(path)
    return decode(read_regular(p), p)

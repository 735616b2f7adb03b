"""Files fetched once: a cache folder and checksummed downloads (the paper's photos, CIFAR-10)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from .atomic import atomic_output
from .errors import FastSSLError
from .progress import bar as progress_bar


def download(url: str, dest: Path, md5: str | None = None, progress: bool = True, *, sha256: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary file; verify its checksum (``md5`` or
    ``sha256``, hex) before renaming. A file already at ``dest`` with that checksum is used."""

    algo, want = ("sha256", sha256) if sha256 else ("md5", md5)
    if not want:
        raise ValueError("download needs an md5 or a sha256 checksum")
    dest = Path(dest)
    if dest.exists():
        if _digest(dest, algo) == want:
            return dest
        raise FastSSLError(f"{dest} exists but its checksum does not match; delete it and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.new(algo)
    try:
        r = urllib.request.urlopen(url, timeout=60)
    except OSError as e:
        raise FastSSLError(f"cannot download {url}: {e}") from None
    total = int(r.headers.get("Content-Length") or 0) or None
    bar = progress_bar(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", enabled=progress)
    with r, bar, atomic_output(dest) as tmp, open(tmp, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
            h.update(chunk)
            bar.update(len(chunk))
        if h.hexdigest() != want:
            raise FastSSLError(f"download of {url} is corrupt: {algo} {h.hexdigest()} != expected {want}; try again")
    return dest


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def default_cache() -> Path:
    """``FASTSSL_CACHE``, else ``~/.cache/fastssl``: a folder (created on first download)."""
    p = Path(os.environ.get("FASTSSL_CACHE") or Path.home() / ".cache" / "fastssl")
    if p.exists() and not p.is_dir():
        where = "FASTSSL_CACHE" if os.environ.get("FASTSSL_CACHE") else "the cache folder"
        raise FastSSLError(f"{where} {p} is not a folder: point FASTSSL_CACHE at a folder")
    return p

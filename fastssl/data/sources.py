"""Where labelled images come from, read without extracting anything.

- an ImageFolder directory: ``ROOT/<class>/<image>`` (a single ``train/`` or ``val/`` level
  above the classes is allowed, and chosen with ``split=``);
- a ``.tar`` / ``.tar.gz`` / ``.tgz`` of such a folder, read directly: a plain tar by member
  offset, a compressed one in one sequential pass into memory (fine for CIFAR-size data; for
  ImageNet-size data use the folder). Members with absolute paths, ``..`` components, links or
  device entries are refused: nothing is ever written or followed outside the target;
- CIFAR-10 in its official *binary* distribution (``cifar-10-binary.tar.gz``; never the
  pickled one: a pickle can run code), downloaded into a cache with its checksum verified;
- an ImageNet root (``train/`` and ``val/`` class folders): an ImageFolder with ``split=``.

Every source is a :class:`LabelledSource`: ``classes``, ``labels``, ``keys`` and ``image(i)``
returning an RGB ``uint8`` array (grey, palette, RGBA, CMYK are converted by PIL).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from ..cache import default_cache, download
from ..errors import FastSSLError
from ..image import IMAGE_EXTS, decode, read_regular

MAX_MEMBER = 256 << 20  # an archive member larger than this is skipped unread (a bomb, not a photo)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on the CIFAR page
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def decode_rgb(data: bytes, name: str = "image") -> np.ndarray:
    """Decode image bytes with PIL into (h, w, 3) uint8 (16-bit grey scaled, not saturated);
    FastSSLError when unreadable."""
    try:
        return decode(data, name, exif=False)
    except FastSSLError as e:
        raise FastSSLError(f"unreadable image: {e}") from None


class LabelledSource:
    """A list of (key, label) with a way to read each image."""

    def __init__(self, name: str, classes: list[str], keys: list[str], labels: np.ndarray):
        self.name = name
        self.classes = classes
        self.keys = keys
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def raw(self, i: int) -> bytes:  # encoded bytes (folder / tar sources)
        raise NotImplementedError

    def image(self, i: int) -> np.ndarray:
        return decode_rgb(self.raw(i), self.keys[i])

    def counts(self, indices=None) -> dict[str, int]:
        lab = self.labels if indices is None else self.labels[np.asarray(indices, dtype=np.int64)]
        c = np.bincount(lab, minlength=len(self.classes))
        return {name: int(c[k]) for k, name in enumerate(self.classes)}

    def stored_bytes(self) -> int | None:
        """Bytes of the encoded images as stored (None where the source does not know)."""
        return None


def _group(paths: list[PurePosixPath], where: str, split: str | None):
    """Class per image from its parent folder; one optional split level (train/val) above."""
    prefixes = {p.parent.parent for p in paths}
    if split is not None:
        paths = [p for p in paths if split in p.parent.parent.parts]
        if not paths:
            raise FastSSLError(
                f"{where} has no split {split!r} (splits seen: {', '.join(sorted(str(x) for x in prefixes))})"
            )
        prefixes = {p.parent.parent for p in paths}
    if len(prefixes) > 1:
        names = ", ".join(sorted(str(x) or "." for x in prefixes)[:5])
        raise FastSSLError(f"{where} holds class folders under several parents ({names}); choose one with `split`")
    root_files = [p for p in paths if str(p.parent) in ("", ".")]
    if root_files:
        raise FastSSLError(
            f"{where} has images outside class folders (e.g. {root_files[0]}); expected ROOT/<class>/<image>"
        )
    classes = sorted({p.parent.name for p in paths})
    index = {c: k for k, c in enumerate(classes)}
    paths = sorted(paths)
    return classes, paths, np.array([index[p.parent.name] for p in paths], dtype=np.int64)


class FolderSource(LabelledSource):
    def __init__(self, root: str | os.PathLike, split: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FastSSLError(f"not a folder: {self.root}")
        found, empty = [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            imgs = [f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTS]
            rel = PurePosixPath(Path(dirpath).relative_to(self.root).as_posix())
            found += [rel / f for f in imgs]
            if not imgs and not dirnames and str(rel) != ".":
                empty.append(rel)
        if not found:
            raise FastSSLError(f"no images found in {self.root} (expected ROOT/<class>/<image>.jpg)")
        if empty:
            raise FastSSLError(f"class folder {self.root / str(empty[0])} has no images; remove it or add images")
        classes, paths, labels = _group(found, str(self.root), split)
        super().__init__(str(self.root), classes, [str(p) for p in paths], labels)

    def stored_bytes(self) -> int:
        return sum((self.root / k).stat().st_size for k in self.keys)

    def raw(self, i: int) -> bytes:
        return read_regular(self.root / self.keys[i])


def _check_member(m: tarfile.TarInfo, archive: str) -> None:
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts or m.name.startswith("/"):
        raise FastSSLError(f"refusing archive {archive}: member {m.name!r} points outside the archive")
    if m.issym() or m.islnk():
        raise FastSSLError(f"refusing archive {archive}: member {m.name!r} is a link")
    if not (m.isfile() or m.isdir()):
        raise FastSSLError(f"refusing archive {archive}: member {m.name!r} is not a regular file or folder")


class TarSource(LabelledSource):
    def __init__(self, path: str | os.PathLike, split: str | None = None):
        self.path = Path(path)
        compressed = self.path.suffix.lower() in (".gz", ".tgz", ".bz2", ".xz")
        self._data: dict[str, bytes] | None = {} if compressed else None
        self._offsets: dict[str, tuple[int, int]] = {}
        self._too_large: dict[str, int] = {}
        found = []
        try:
            with tarfile.open(self.path, "r:*") as tf:
                for m in tf:
                    _check_member(m, str(self.path))
                    if not m.isfile() or PurePosixPath(m.name).suffix.lower() not in IMAGE_EXTS:
                        continue
                    name = str(PurePosixPath(m.name))
                    found.append(PurePosixPath(name))
                    if m.size > MAX_MEMBER:  # kept as unreadable: never read into memory
                        self._too_large[name] = m.size
                    elif compressed:
                        self._data[name] = tf.extractfile(m).read()
                    else:
                        self._offsets[name] = (m.offset_data, m.size)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise FastSSLError(f"cannot read archive {self.path}: {e}") from None
        if not found:
            raise FastSSLError(f"no images found in archive {self.path} (expected <class>/<image>.jpg members)")
        classes, paths, labels = _group(found, str(self.path), split)
        super().__init__(str(self.path), classes, [str(p) for p in paths], labels)
        self._fh = None

    def stored_bytes(self) -> int:
        if self._data is not None:
            return sum(len(v) for v in self._data.values())
        return sum(size for _, size in self._offsets.values())

    def raw(self, i: int) -> bytes:
        key = self.keys[i]
        if key in self._too_large:
            size = self._too_large[key] >> 20
            raise FastSSLError(f"archive member {key} is {size} MiB, above {MAX_MEMBER >> 20} MiB: not read")
        if self._data is not None:
            return self._data[key]
        if self._fh is None or self._fh_pid != os.getpid():  # one handle per process
            self._fh = open(self.path, "rb")  # noqa: SIM115
            self._fh_pid = os.getpid()
        off, size = self._offsets[key]
        self._fh.seek(off)
        return self._fh.read(size)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fh"] = None
        return d


class CifarBinarySource(LabelledSource):
    """CIFAR-10 from ``cifar-10-binary.tar.gz``: records of 1 label byte + 3072 pixel bytes."""

    def __init__(self, archive: str | os.PathLike, train: bool = True):
        self.path = Path(archive)
        want = [f"data_batch_{k}.bin" for k in range(1, 6)] if train else ["test_batch.bin"]
        chunks: dict[str, bytes] = {}
        classes = CIFAR10_CLASSES
        try:
            with tarfile.open(self.path, "r:*") as tf:
                for m in tf:
                    _check_member(m, str(self.path))
                    base = PurePosixPath(m.name).name
                    if m.isfile() and base in want:
                        chunks[base] = tf.extractfile(m).read()
                    elif m.isfile() and base == "batches.meta.txt":
                        names = [x.strip() for x in tf.extractfile(m).read().decode().splitlines() if x.strip()]
                        if len(names) == 10:
                            classes = names
        except (tarfile.TarError, EOFError, OSError) as e:
            raise FastSSLError(f"cannot read CIFAR-10 archive {self.path}: {e}") from None
        missing = [w for w in want if w not in chunks]
        if missing:
            raise FastSSLError(f"{self.path} is not the CIFAR-10 binary distribution: missing {', '.join(missing)}")
        recs = []
        for w in want:
            b = np.frombuffer(chunks[w], dtype=np.uint8)
            if b.size % 3073:
                raise FastSSLError(f"{self.path}: {w} is truncated ({b.size} bytes, not a multiple of 3073)")
            recs.append(b.reshape(-1, 3073))
        rec = np.concatenate(recs)
        labels = rec[:, 0].astype(np.int64)
        if labels.max() >= 10:
            raise FastSSLError(f"{self.path}: label {labels.max()} out of range; not CIFAR-10")
        self._pixels = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        keys = [f"{'train' if train else 'test'}/{k:05d}" for k in range(len(rec))]
        super().__init__(str(self.path), list(classes), keys, labels)

    def image(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self._pixels[i])


def cifar10(
    cache: str | os.PathLike | None = None,
    train: bool = True,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
) -> CifarBinarySource:
    """CIFAR-10 from its official binary distribution, downloaded once into ``cache``."""
    path = download(url, Path(cache or default_cache()) / "cifar-10-binary.tar.gz", md5, progress)
    return CifarBinarySource(path, train=train)


def open_source(spec: str | os.PathLike, split: str | None = None, cache=None) -> LabelledSource:
    """A source from a CLI string: a folder, an archive, or ``cifar10`` / ``cifar10-test``."""
    s = str(spec)
    if s in ("cifar10", "cifar10-train", "cifar10-test"):
        return cifar10(cache, train=s != "cifar10-test")
    p = Path(s)
    if not p.exists():
        raise FastSSLError(f"data source not found: {p} (give a folder, a .tar/.tar.gz, or 'cifar10')")
    if p.is_dir():
        return FolderSource(p, split)
    if p.name.endswith("cifar-10-binary.tar.gz"):
        return CifarBinarySource(p, train=split != "test")
    if any(p.name.lower().endswith(e) for e in (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return TarSource(p, split)
    raise FastSSLError(f"unsupported data source {p}: give a folder, a .tar/.tar.gz archive, or 'cifar10'")


def train_val_sources(data, eval_data=None):
    """(train source, validation source or None): an ImageNet-layout root (``train/<class>/``
    and ``val/<class>/``) without ``eval_data`` gives its two splits; otherwise ``data`` and
    ``eval_data`` (None: the caller holds out part of ``data``)."""
    p = Path(str(data))
    if eval_data is None and p.is_dir() and (p / "train").is_dir() and (p / "val").is_dir():
        return FolderSource(p, "train"), FolderSource(p, "val")
    return open_source(data), (open_source(eval_data) if eval_data is not None else None)


def split_indices(labels: np.ndarray, val_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the last ``val_per_class`` items of each class (in key order) are
    validation, the rest training. Sources list items sorted by key, so this is stable."""
    labels = np.asarray(labels)
    if val_per_class < 0:
        raise FastSSLError(f"`val_per_class` must be >= 0, got {val_per_class}")
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if val_per_class >= len(idx):
            raise FastSSLError(
                f"`val_per_class` {val_per_class} leaves no training images in class {c} ({len(idx)} images)"
            )
        val.append(idx[len(idx) - val_per_class :] if val_per_class else idx[:0])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val

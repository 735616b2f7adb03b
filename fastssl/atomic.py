"""Nothing half-written, nothing lost: every output goes to a temporary name beside its
destination and is renamed into place only when complete; on any failure the temporary is
removed. An existing destination is replaced only when it is of the kind the command writes:
a folder is never replaced by a file, a file never by a folder, and a folder is replaced by a
folder only when ``replace`` recognises it as an earlier output of the same command."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import FastSSLError


def _kind(p: Path) -> str:
    st = p.lstat()
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    if stat.S_ISREG(st.st_mode):
        return "a file"
    return "a special file"


def os_error(dest, e: OSError) -> FastSSLError:
    """One line for an OSError while writing ``dest`` (a full disk said as such)."""
    if e.errno == errno.ENOSPC:
        return FastSSLError(f"could not write {dest}: no space left on device (nothing was kept)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FastSSLError(f"could not write {dest}: {e.strerror.lower()} (nothing was kept)")
    return FastSSLError(f"could not write {dest}: {e.strerror or e}")


def check_destination(
    dest: str | os.PathLike,
    *,
    folder: bool = False,
    overwrite: bool = True,
    replace: Callable[[Path], bool] | None = None,
    what: str = "output",
) -> Path:
    """Refuse, with one line, a destination that the write could not replace safely.

    - its parent folder must exist;
    - an existing folder is replaced only by a folder output, with ``overwrite``, and only
      when ``replace(dest)`` says it is an earlier output of the same kind (no ``replace``:
      never);
    - an existing file is replaced only by a file output, with ``overwrite``, and (when
      ``replace`` is given) only when ``replace(dest)`` is true;
    - links and special files are never replaced.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise FastSSLError(f"folder for the {what} does not exist: {dest.parent}")
    if not (dest.exists() or dest.is_symlink()):
        return dest
    kind = _kind(dest)
    want = "a folder" if folder else "a file"
    if kind != want:
        raise FastSSLError(f"{what} {dest} is {kind}; it is never replaced by {want}: choose another path")
    if not overwrite:
        raise FastSSLError(f"{what} exists: {dest} (remove it or pass `overwrite`)")
    if (replace is None and folder) or (replace is not None and not replace(dest)):
        raise FastSSLError(f"{what} {dest} exists and is not an earlier output of this command: choose another path")
    return dest


@contextlib.contextmanager
def atomic_output(
    dest: str | os.PathLike,
    *,
    folder: bool = False,
    replace: Callable[[Path], bool] | None = None,
    what: str = "output",
):
    """Yield a temporary path (a file, or a folder with ``folder=True``) beside ``dest``.

    When the block completes the temporary takes ``dest``'s name. ``dest`` is checked with
    :func:`check_destination` (overwrite allowed) before and again at the rename; callers
    that take an ``--overwrite`` flag check it first themselves. An OSError anywhere becomes
    one FastSSLError line; the temporary never outlives the block.
    """
    dest = Path(dest)
    check_destination(dest, folder=folder, replace=replace, what=what)
    umask = os.umask(0)
    os.umask(umask)
    tmp = None
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent))
            tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; outputs get the usual permissions
        else:
            fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent)
            os.close(fd)
            tmp = Path(name)
            tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600
        yield tmp
        check_destination(dest, folder=folder, replace=replace, what=what)  # it may have appeared meanwhile
        if folder and dest.is_dir():  # an earlier output of this command: swap, then remove the old one
            old = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except OSError as e:
        raise os_error(dest, e) from None
    finally:
        if tmp is not None:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def reserve(path: str | os.PathLike, size: int) -> None:
    """Allocate ``size`` bytes of ``path`` on disk now, so that writing through a memory map
    cannot hit a full disk later (that ends the process with SIGBUS instead of an error)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def has_magic(*magics: bytes) -> Callable[[Path], bool]:
    """A ``replace`` test: the file starts with one of ``magics`` (the format the command writes)."""

    def test(p: Path) -> bool:
        try:
            with open(p, "rb") as f:
                head = f.read(max(len(m) for m in magics))
        except OSError:
            return False
        return any(head.startswith(m) for m in magics)

    return test


PNG = has_magic(b"\x89PNG\r\n\x1a\n")
NPY = has_magic(b"\x93NUMPY")
ZIP = has_magic(b"PK\x03\x04")  # torch.save's format
JSON = has_magic(b"{", b"[")


LOCK_NAME = ".fastssl.lock"
_HELD: dict[str, list] = {}  # lock path -> [fd, depth]: a process may re-enter its own lock


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Exclusive use of a run folder for the block: ``flock`` on ``FOLDER/.fastssl.lock``,
    which holds the holder's PID while held. A second run into the folder is refused with one line naming
    that PID; the lock goes with the process, so a killed run leaves nothing to clean up."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise os_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FastSSLError(
            f"{folder} is in use by another fastssl run (PID {holder}); wait for it to end or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the file stays: removing it would let two runs lock two files
        os.close(fd)

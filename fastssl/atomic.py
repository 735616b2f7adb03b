"""Nothing half-written, nothing lost: every output goes to a temporary name beside its
destination and is renamed into place only when complete; on any failure the temporary is
removed. An existing destination is replaced only when it is of the kind the command writes:
a folder is never replaced by a file, a file never by a folder, and a folder is replaced by a
folder only when ``replace`` recognises it as an earlier output of the same command."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
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
        with claim(dest):
            if folder:
                tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent))
                reaper_add(tmp)
                tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; outputs get the usual permissions
            else:
                fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent)
                os.close(fd)
                tmp = Path(name)
                reaper_add(tmp)
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
            reaper_drop(tmp)


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


def _open_lock(path: Path) -> int | str:
    """``path`` created (never followed if a link) and locked with ``flock``: its descriptor,
    or the holder's PID (a string) when another process holds it. A lock file removed by its
    holder between our open and our lock is opened again, so two processes never hold two
    files of one name."""

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise FastSSLError(f"lock file {path} is a symbolic link; remove it (it is never followed)") from None
            raise os_error(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return holder
        try:
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same and stat.S_ISREG(os.fstat(fd).st_mode):
            break
        os.close(fd)  # the holder removed it meanwhile: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def _locked(path: Path, busy: Callable[[str], str]):
    """Hold the lock file ``path`` for the block (re-entrant in this process); ``busy(pid)``
    is the one line when another process holds it. The file is removed when released, and by
    the reaper when this process is killed."""
    key = str(path.parent.resolve() / path.name)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = _open_lock(path)
    if isinstance(fd, str):
        raise FastSSLError(busy(fd))
    _HELD[key] = [fd, 1]
    reaper_add(path, lock=True)
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.lstat(path).st_ino:
                path.unlink()  # while still locked: a waiting process then opens a new file
        os.close(fd)
        reaper_drop(path)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Exclusive use of a run folder for the block: ``flock`` on ``FOLDER/.fastssl.lock``,
    which holds the holder's PID while held. A second run into the folder is refused with one
    line naming that PID; the lock goes with the process (a killed run leaves nothing to
    clean up) and the file with the lock."""
    with _locked(
        Path(folder) / LOCK_NAME,
        lambda pid: (
            f"{folder} is in use by another fastssl run (PID {pid}); wait for it to end or choose another --out"
        ),
    ):
        yield


def claim_path(dest: str | os.PathLike) -> Path:
    return Path(dest).parent / f".{Path(dest).name}.fastssl-lock"


@contextlib.contextmanager
def claim(*dests: str | os.PathLike):
    """Exclusive use of output paths for the block, across processes: a second command writing
    one of them meanwhile is refused with one line (a lock file beside each, removed after)."""
    with contextlib.ExitStack() as stack:
        for d in dests:
            d = Path(d)
            if not d.parent.is_dir():
                continue  # check_destination says so in its words
            stack.enter_context(
                _locked(
                    claim_path(d),
                    lambda pid, d=d: (
                        f"{d} is being written by another fastssl command (PID {pid}); "
                        "wait for it to end or choose another path"
                    ),
                )
            )
        yield


# ------------------------------------------------------------------ reaper
# A process killed with SIGKILL runs no cleanup. Every temporary output and lock file is
# registered with a small watcher process (started on first use, detached from the terminal so that
# Ctrl-C does not reach it) that reads registrations from a pipe; when the pipe closes (this
# process and every child that inherited the pipe have ended) it removes what is still
# registered. A completed output is unregistered before its temporary name is renamed.
_REAPER_CODE = r"""
import fcntl, json, os, shutil, sys, time
held, locks = set(), set()
for line in sys.stdin.buffer:
    try:
        op, path = line[:1], json.loads(line[1:])
    except ValueError:
        continue
    if op == b"-":
        held.discard(path)
        locks.discard(path)
    else:
        (locks if op == b"L" else held).add(path)
for path in held:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
for path in locks:  # as a holder releases one: only while locked by us, and still that file
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        continue
    try:
        for _ in range(100):  # a dying holder may close the pipe before its lock: wait up to 2 s
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                time.sleep(0.02)
        else:
            continue  # another process holds it now: it is theirs
        if os.fstat(fd).st_ino == os.lstat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)
"""
_REAPER: dict = {"proc": None, "pid": None}


def _reaper_send(op: str, path: Path) -> None:
    if _REAPER["pid"] != os.getpid():  # none yet, or inherited through fork: start our own
        try:
            _REAPER["proc"] = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            _REAPER["proc"] = None
        _REAPER["pid"] = os.getpid()
    proc = _REAPER["proc"]
    if proc is None:
        return
    try:
        proc.stdin.write(op.encode() + json.dumps(str(Path(path).absolute())).encode() + b"\n")
        proc.stdin.flush()
    except (OSError, ValueError):
        _REAPER["proc"] = None


def reaper_add(path: str | os.PathLike, lock: bool = False) -> None:
    """Remove ``path`` if this process ends (even by SIGKILL) before :func:`reaper_drop`; a
    ``lock`` file only if no other process has locked it since."""
    _reaper_send("L" if lock else "+", Path(path))


def reaper_drop(path: str | os.PathLike) -> None:
    _reaper_send("-", Path(path))


@contextlib.contextmanager
def run_folder(out):
    """``out`` created if needed and held exclusively (a lock file with this process's PID)
    for the block; a folder this call created is removed again if the block fails before
    writing anything into it."""

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FastSSLError(f"`out` {out} is a file; give a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FastSSLError(f"cannot create `out` {out}: {e.strerror}") from None
    ok = False
    try:
        with run_lock(out):  # its lock file goes with the lock
            yield out
        ok = True
    finally:
        if created and not ok:
            with contextlib.suppress(OSError):  # only while empty: nothing the run wrote is removed
                out.rmdir()

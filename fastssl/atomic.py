"""Nothing half-written: every output goes to a temporary name beside its destination and is
renamed into place only when complete; on any failure the temporary is removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import FastSSLError


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike, *, folder: bool = False):
    """Yield a temporary path (a file, or a folder with ``folder=True``) beside ``dest``.

    When the block completes it replaces ``dest`` (an existing folder is removed first);
    an OSError anywhere becomes one FastSSLError line; the temporary never outlives the block.
    """
    dest = Path(dest)
    umask = os.umask(0)
    os.umask(umask)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent))
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; outputs get the usual permissions
    else:
        fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():  # overwriting a folder (or a file with a folder)
            shutil.rmtree(dest)
        elif folder and dest.exists():
            dest.unlink()
        os.replace(tmp, dest)
    except OSError as e:
        raise FastSSLError(f"could not write {dest}: {e}") from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)

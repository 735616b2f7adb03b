"""What the CLI tests share: run a command in-process or under torchrun, and the one-line error
contract."""

import os
import socket
import subprocess
import sys

from fastssl.cli import main


def run(args, capsys):
    """(exit status, stderr lines) of ``fastssl ARGS`` run in this process."""
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.err.strip().splitlines()


def one_line(rc, err, words=""):
    """Exit status 2 and exactly one ``fastssl: error:`` line holding ``words``."""
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("fastssl: error:") and words in err[0], err


def torchrun(args, nproc=2):
    """``fastssl ARGS`` under torchrun, NPROC processes on this machine (gloo, one thread each);
    asserts that every rank exited 0 and returns the completed process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "fastssl.cli", *map(str, args)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    # a rank's own error comes first; the launcher's summary of the failure last
    assert r.returncode == 0, r.stderr[:4000] + "\n...\n" + r.stderr[-1500:]
    return r

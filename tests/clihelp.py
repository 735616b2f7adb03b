"""What the CLI tests share: run a command in-process, and the one-line error contract."""

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

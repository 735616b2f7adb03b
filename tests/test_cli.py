import os

import numpy as np
import pytest
from PIL import Image

import fastssl.mono as mono
from fastssl import AugmentSpec
from fastssl.cli import main, parse_spec
from fastssl.image import load_image
from fastssl.mono import Renderer


def run(args, capsys):
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr()


def test_preview_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc, _ = run(["mono", "preview", "-o", out, "--size", 32, "--n", 9], capsys)
    assert rc == 0
    img = Image.open(out)
    assert img.size == (3 * 34 + 2, 3 * 34 + 2)


def test_export_npy_is_the_stream_and_backends_agree(tmp_path, capsys):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert (
        run(
            ["mono", "export", "--n", 70, "--size", 24, "--seed", 5, "--out", a, "--quiet", "--batch-size", 32], capsys
        )[0]
        == 0
    )
    assert (
        run(
            ["mono", "export", "--n", 70, "--size", 24, "--seed", 5, "--out", b, "--quiet", "--backend", "torch"],
            capsys,
        )[0]
        == 0
    )
    x, y = np.load(a), np.load(b)
    assert x.shape == (70, 24, 24, 3) and x.dtype == np.uint8
    assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
    rend = Renderer(load_image(None), AugmentSpec(size=24), "numba")
    np.testing.assert_array_equal(x[40:50], rend.render_nhwc(rend.params(40, 50, seed=5)))
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "b.npy"]


def test_export_jpeg_folder(tmp_path, capsys):
    out = tmp_path / "patches"
    rc, _ = run(["mono", "export", "--n", 5, "--size", 16, "--out", out, "--quiet"], capsys)
    assert rc == 0
    files = sorted(os.listdir(out / "mono"))
    assert files == [f"{i:07d}.jpg" for i in range(5)]
    assert Image.open(out / "mono" / files[0]).size == (16, 16)


@pytest.mark.parametrize(
    "args, words",
    [
        (["mono", "export", "/no/such.jpg", "--n", 3, "--out", "{tmp}/x.npy"], "image not found"),
        (["mono", "export", "--n", 3, "--size", 0, "--out", "{tmp}/x.npy"], "size"),
        (["mono", "export", "--n", 0, "--out", "{tmp}/x.npy"], "--n"),
        (["mono", "export", "--n", 3, "--spec", "jitter_p=2", "--out", "{tmp}/x.npy"], "probability"),
        (["mono", "export", "--n", 3, "--spec", "scale=0.5", "--out", "{tmp}/x.npy"], "bad --spec"),
        (["mono", "export", "--n", 3, "--spec", "colour=1", "--out", "{tmp}/x.npy"], "bad --spec"),
        (["mono", "export", "--n", 3, "--out", "{tmp}/missing/x.npy"], "does not exist"),
        (["mono", "preview", "{tmp}/tiny.png", "-o", "{tmp}/g.png"], "too small"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, words):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "tiny.png")
    before = set(os.listdir(tmp_path))
    rc, cap = run([str(a).replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert rc == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastssl: error:") and words in lines[0]
    assert set(os.listdir(tmp_path)) == before


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "x.npy"
    np.save(out, np.arange(3))
    keep = out.read_bytes()
    rc, cap = run(["mono", "export", "--n", 2, "--size", 8, "--out", out, "--quiet"], capsys)
    assert rc == 2 and "exists" in cap.err and out.read_bytes() == keep
    rc, _ = run(["mono", "export", "--n", 2, "--size", 8, "--out", out, "--quiet", "--overwrite"], capsys)
    assert rc == 0 and np.load(out).shape == (2, 8, 8, 3)


@pytest.mark.parametrize("target", ["x.npy", "folder"])
def test_an_export_that_fails_midway_leaves_nothing(tmp_path, monkeypatch, target):
    calls = {"n": 0}
    real = mono.Renderer.params

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(mono.Renderer, "params", failing)
    rc = main(
        ["mono", "export", "--n", "40", "--size", "8", "--batch-size", "16", "--quiet", "--out", str(tmp_path / target)]
    )
    assert rc == 2
    assert os.listdir(tmp_path) == []


def test_spec_overrides_are_typed():
    s = parse_spec(48, ["rotation=0", "scale=0.1,1", "initial_crop=none", "random_order=false", "hflip=0.5"])
    assert (s.size, s.rotation, s.scale, s.initial_crop, s.random_order, s.hflip) == (
        48,
        0.0,
        (0.1, 1.0),
        None,
        False,
        0.5,
    )


def test_outputs_get_the_usual_permissions(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert main(["mono", "preview", "-o", str(tmp_path / "g.png"), "--size", "8", "--n", "4"]) == 0
        assert main(["mono", "export", "--n", "3", "--size", "8", "--out", str(tmp_path / "p"), "--quiet"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "g.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o755


def test_only_numbas_finalizer_keyerror_is_kept_off_stderr():
    """The program's unraisable hook drops numba's harmless dispatcher-finalizer KeyError and
    passes every other report on."""
    import types

    from fastssl.cli import quiet_numba_finalizer

    seen = []
    hook = quiet_numba_finalizer(seen.append)

    def report(exc, filename, name):
        code = compile(f"def {name}():\n    raise exc\n", filename, "exec")
        ns = {"exc": exc}
        exec(code, ns)
        try:
            ns[name]()
        except BaseException as e:
            return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__, object=None)

    hook(report(KeyError("sig"), "/site-packages/numba/core/dispatcher.py", "finalizer"))
    assert seen == []
    for args in (
        (ValueError("x"), "/site-packages/numba/core/dispatcher.py", "finalizer"),
        (KeyError("sig"), "/site-packages/numba/core/other.py", "finalizer"),
        (KeyError("sig"), "/site-packages/numba/core/dispatcher.py", "compile"),
    ):
        hook(report(*args))
    assert len(seen) == 3

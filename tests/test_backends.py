"""The backend seam: a new renderer is one class and one registry line, and the engine (the
patch stream, export, the CLI's choices) takes it from the registry."""

import numpy as np
import pytest
import torch

import fastssl.kernels as kernels
from fastssl.kernels.backend import Backend, UnsupportedInput
from fastssl.mono import MonoSource, Renderer, backend_available, backend_names
from fastssl.spec import AugmentSpec


class NumpyReference(Backend):
    """Bilinear sampling of each patch's level in plain NumPy, crop-box fill, no colour jitter."""

    name = "numpy-ref"
    writes_into = True

    def __init__(self, levels, size, resized, device, threads=None, **options):
        super().__init__(levels, size, resized, device, threads)
        self.levels = [lv.astype(np.float64) for lv in levels]

    def render(self, p, out=None):
        S = self.size
        level_matrix, box, level = p.level_matrix, p.box, p.level
        if out is None:
            out = np.empty((p.n, S, S, 3), np.uint8)
        y, x = np.mgrid[0:S, 0:S].astype(np.float64)
        pts = np.stack([x, y, np.ones_like(x)])  # (3, S, S)
        for i in range(len(level)):
            lv = self.levels[level[i]]
            h, w = lv.shape[:2]
            u, v = np.tensordot(level_matrix[i], pts, 1)
            s, t = np.tensordot(box[i], pts, 1)
            fu, fv = np.floor(u), np.floor(v)
            ax, ay = (u - fu)[..., None], (v - fv)[..., None]
            x0, y0 = np.clip(fu, 0, w - 1).astype(int), np.clip(fv, 0, h - 1).astype(int)
            x1, y1 = np.clip(fu + 1, 0, w - 1).astype(int), np.clip(fv + 1, 0, h - 1).astype(int)
            top = lv[y0, x0] * (1 - ax) + lv[y0, x1] * ax
            bottom = lv[y1, x0] * (1 - ax) + lv[y1, x1] * ax
            px = top * (1 - ay) + bottom * ay
            inside = ((s >= 0) & (s < 1) & (t >= 0) & (t < 1))[..., None]
            out[i] = np.clip(np.floor(px * inside + 0.5), 0, 255).astype(np.uint8)
        return out


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(kernels.BACKENDS, "numpy-ref", f"{__name__}:NumpyReference")  # the one line
    return "numpy-ref"


def test_a_backend_is_one_class_and_one_registry_line(registered, photo):
    assert "numpy-ref" in backend_names() and backend_available("numpy-ref", "cpu") is None
    spec = AugmentSpec(size=24, jitter_p=0.0)
    src = MonoSource(photo, spec, backend=registered, batch_size=16, epoch_length=32)
    batch = src.batch(1)
    assert batch.shape == (16, 3, 24, 24) and batch.dtype == torch.uint8
    assert batch.is_contiguous(memory_format=torch.channels_last)
    ref = Renderer(photo, spec, "numba")
    a = ref.render_nhwc(ref.params(16, 32)).astype(int)
    b = batch.permute(0, 2, 3, 1).numpy().astype(int)
    # same parameters, same pixels up to float rounding (the NumPy one is float64)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def test_an_unknown_or_unavailable_backend_is_refused_with_its_reason(monkeypatch):
    from fastssl.errors import FastSSLError

    assert "unknown backend" in backend_available("nope", "cpu")
    monkeypatch.setitem(kernels.BACKENDS, "broken", "fastssl.kernels.no_such_module:X")
    assert "cannot be imported" in backend_available("broken", "cpu")
    with pytest.raises(FastSSLError, match="backend 'broken' is unavailable"):
        MonoSource(None, AugmentSpec(size=16), backend="broken")


def test_the_cli_offers_the_registered_backends(registered, tmp_path, capsys):
    from fastssl.cli import main

    out = tmp_path / "x.npy"
    args = ["mono", "export", "--n", 8, "--size", 16, "--spec", "jitter_p=0", "--backend", registered]
    assert main([str(a) for a in [*args, "--out", out, "--quiet"]]) == 0
    assert np.load(out).shape == (8, 16, 16, 3)


@pytest.mark.parametrize("backend", ["numba", "torch", "dali"])
def test_a_batch_from_several_images_is_one_render_call(backend, photo, monkeypatch):
    """numba, torch and DALI hold every image's pyramid in one buffer: a batch drawn from several
    images is one render call, and agrees with rendering it image by image (numba and torch,
    whose coordinates are relative to each level: exactly; DALI, whose atlas coordinates
    differ, to 1 LSB)."""
    if backend_available(backend, torch.device("cpu")):
        pytest.skip(backend_available(backend, torch.device("cpu")))
    imgs = [photo[:200, :300], np.ascontiguousarray(photo[40:297, 10:200]), photo[:320, :320], photo[:90, :130]]
    spec = AugmentSpec(size=32)
    together = Renderer(imgs, spec, backend)
    assert len(together.impls) == 1 and together.num_images == 4
    calls = []
    real = together.impl.render
    monkeypatch.setattr(together.impl, "render", lambda p, out=None: calls.append(p.n) or real(p, out))
    p = together.params(0, 96, seed=3)
    assert len(set(p.image.tolist())) == 4
    a = together.render_nhwc(p)
    assert calls == [96]
    monkeypatch.setattr(kernels.backend_class(backend), "many_images", False)
    apart = Renderer(imgs, spec, backend)
    assert len(apart.impls) == 4
    b = apart.render_nhwc(p)
    assert a.shape == b.shape == (96, 32, 32, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= (1 if backend == "dali" else 0)


def test_the_atlas_of_several_images_keeps_each_level_where_it_says():
    from fastssl.kernels.pyramid import atlas_of, build_pyramid

    rng = np.random.default_rng(0)
    pyrs = [
        build_pyramid(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 3) for h, w in [(40, 60), (33, 17), (64, 64)]
    ]
    at, first = atlas_of([p.levels for p in pyrs])
    assert first.tolist() == [0, 3, 6] and len(at.origin) == 9
    h, w = at.image.shape[:2]
    assert max(h, w) < 2 * min(h, w) + 70  # roughly square, not a strip
    for i, p in enumerate(pyrs):
        for lv, level in enumerate(p.levels):
            (x, y), (lw, lh) = at.origin[first[i] + lv], at.shape[first[i] + lv]
            assert (lw, lh) == (level.shape[1], level.shape[0])
            assert np.array_equal(at.image[y : y + lh, x : x + lw], level)


def test_images_too_large_together_are_rendered_one_by_one(photo, monkeypatch):
    """A backend that refuses several images in one pyramid (numba: 2**31 texels at most) gets
    one instance per image instead, and the batch still renders."""
    cls = kernels.backend_class("numba")
    real = cls.__init__

    def init(self, levels, *args, **kwargs):
        if isinstance(levels[0], list):
            raise UnsupportedInput("too large together")
        real(self, levels, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)
    r = Renderer([photo[:100, :120], photo[50:130, 20:140]], AugmentSpec(size=16), "numba")
    assert len(r.impls) == 2
    p = r.params(0, 12, seed=1)
    assert len(set(p.image.tolist())) == 2 and r.render_nhwc(p).shape == (12, 16, 16, 3)

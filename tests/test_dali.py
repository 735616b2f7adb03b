"""The DALI pipeline (CPU placement, what CI can run) against the Numba kernel: geometry so far."""

import numpy as np
import pytest

from fastssl import AugmentSpec
from fastssl.mono import Renderer

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastssl[dali]'; CI installs it)")

from fastssl.kernels.dali_warp import DaliWarp, footprint_crops  # noqa: E402


@pytest.mark.parametrize("size", [7, 32, 64])
def test_dali_cpu_geometry_agrees_with_numba(photo, size):
    spec = AugmentSpec(size=size, jitter_p=0.0, hflip=0.5, vflip=0.5)
    r = Renderer(photo, spec, "numba")
    p = r.params(0, 96, seed=3)
    a = r.render_nhwc(p)
    b = DaliWarp(size, spec.resized, 96).run(r.pyramid.levels, p.level_matrix(), p.box, p.level, p.jitter)
    assert b.shape == a.shape and b.dtype == np.uint8
    d = np.abs(a.astype(int) - b.astype(int))
    # measured: at most 1 LSB (float rounding in the bilinear weights), on <0.1% of values
    assert d.max() <= 1 and d.mean() < 0.01


def test_footprint_crops_cover_every_sample_point(photo):
    spec = AugmentSpec(size=16)
    r = Renderer(photo, spec, "numba")
    p = r.params(0, 64, seed=1)
    lm = p.level_matrix()
    hs = [lv.shape[0] for lv in r.pyramid.levels]
    ws = [lv.shape[1] for lv in r.pyramid.levels]
    crops, shifted = footprint_crops(lm, p.level, hs, ws, 16)
    ys, xs = np.mgrid[0:16, 0:16]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(256)])
    for i in range(64):
        y0, y1, x0, x1 = crops[i]
        h, w = hs[p.level[i]], ws[p.level[i]]
        uv = shifted[i] @ pts  # crop coordinates of every output pixel
        # the kernels clamp sample points to the level; what DALI clamps to is the crop
        u = np.clip(uv[0] + x0, 0, w - 1) - x0
        v = np.clip(uv[1] + y0, 0, h - 1) - y0
        # both bilinear neighbours lie in the crop, unless the crop edge is the level edge
        assert ((np.floor(u) >= 0) | (x0 == 0)).all() and ((np.floor(u) + 1 <= x1 - x0 - 1) | (x1 == w)).all()
        assert ((np.floor(v) >= 0) | (y0 == 0)).all() and ((np.floor(v) + 1 <= y1 - y0 - 1) | (y1 == h)).all()


def test_colour_jitter_is_refused_until_it_is_in_the_graph(photo):
    spec = AugmentSpec(size=8, jitter_p=1.0)
    r = Renderer(photo, spec, "numba")
    p = r.params(0, 4)
    with pytest.raises(NotImplementedError, match="colour"):
        DaliWarp(8, spec.resized, 4).run(r.pyramid.levels, p.level_matrix(), p.box, p.level, p.jitter)

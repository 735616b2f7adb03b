"""The DALI pipeline in its CPU placement (what CI can run) against the Numba kernel."""

import dataclasses

import numpy as np
import pytest
import torch

from fastssl import AugmentSpec, MonoSource
from fastssl.cli import main
from fastssl.mono import Renderer, resolve_backend

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastssl[dali]'; CI installs it)")

from fastssl.kernels.dali_warp import DaliWarp, footprint_crops  # noqa: E402


def _dali(rend, spec, p):
    return DaliWarp(spec.size, spec.resized, len(p)).run(
        rend.pyramid.levels, p.level_matrix(), p.box, p.level, p.jitter, p.factors, p.order
    )


@pytest.mark.parametrize("size", [7, 32, 64])
def test_dali_cpu_full_chain_agrees_with_numba(photo, size):
    spec = AugmentSpec(size=size, hflip=0.5, vflip=0.5)
    r = Renderer(photo, spec, "numba")
    p = r.params(0, 96, seed=3)
    assert p.jitter.any() and not p.jitter.all()
    a = r.render_nhwc(p)
    b = _dali(r, spec, p)
    assert b.shape == a.shape and b.dtype == np.uint8
    d = np.abs(a.astype(int) - b.astype(int))
    # measured: at most 1 LSB (float rounding), on <0.1% of values, with the random op order kept
    assert d.max() <= 1 and d.mean() < 0.01


def test_each_colour_op_alone_agrees(photo):
    spec = AugmentSpec(size=24, jitter_p=1.0)
    r = Renderer(photo, spec, "numba")
    base = r.params(0, 48, seed=2)
    for op in range(4):
        order = np.tile(np.array([op, *[o for o in range(4) if o != op]], np.int8), (48, 1))
        f = np.tile(np.array([1.0, 1.0, 1.0, 0.0], np.float32), (48, 1))
        f[:, op] = base.factors[:, op]
        p = dataclasses.replace(base, order=order, factors=f)
        d = np.abs(r.render_nhwc(p).astype(int) - _dali(r, spec, p).astype(int))
        assert d.max() <= 1 and d.mean() < 0.01, op


def test_footprint_crops_cover_every_sample_point(photo):
    spec = AugmentSpec(size=16)
    r = Renderer(photo, spec, "numba")
    p = r.params(0, 64, seed=1)
    hs = [lv.shape[0] for lv in r.pyramid.levels]
    ws = [lv.shape[1] for lv in r.pyramid.levels]
    crops, shifted = footprint_crops(p.level_matrix(), p.level, hs, ws, 16)
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


def test_dali_backend_through_monosource_and_cli(photo, tmp_path, capsys):
    assert resolve_backend("dali", torch.device("cpu")) == "dali"
    src = MonoSource(photo, AugmentSpec(size=16), batch_size=40, epoch_length=100, backend="dali")
    ref = MonoSource(photo, AugmentSpec(size=16), batch_size=40, epoch_length=100, backend="numba")
    for step in range(len(src)):  # the last batch is smaller than the first: the pipeline takes both
        x, y = src.batch(step), ref.batch(step)
        assert x.dtype == torch.uint8 and x.is_contiguous(memory_format=torch.channels_last)
        assert (x.int() - y.int()).abs().max() <= 1
    out = tmp_path / "d.npy"
    assert main(["mono", "export", "--n", "30", "--size", "16", "--backend", "dali", "--out", str(out), "--quiet"]) == 0
    assert np.load(out).shape == (30, 16, 16, 3)

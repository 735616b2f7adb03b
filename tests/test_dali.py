"""The DALI pipeline in its CPU placement (what CI can run) against the Numba kernel."""

import dataclasses

import numpy as np
import pytest
import torch

from fastssl import AugmentSpec, MonoSource
from fastssl.cli import main
from fastssl.mono import Renderer, resolve_backend

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastssl[dali]'; CI installs it)")

from fastssl.kernels.dali_warp import DaliWarp, dense_crops, gather_crops  # noqa: E402
from fastssl.kernels.pyramid import build_atlas  # noqa: E402


def _dali(rend, spec, p):
    return DaliWarp(spec.size, spec.resized, len(p)).run(
        build_atlas(rend.pyramid.levels), p.level_matrix(), p.box, p.level, p.jitter, p.factors, p.order
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


@pytest.mark.slow
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


def test_dense_crops_hold_every_bilinear_tap_with_the_edge_clamped(rng):
    """Each patch's crop (one side for the batch) holds both bilinear neighbours of every sample
    point, as the level gives them with its edge clamped: DALI's clamp at the crop edge is then
    the other backends' clamp at the level edge. Large rotated crops of a small image make the
    sample points leave the image on every side."""
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    spec = AugmentSpec(size=16, initial_crop=None, scale=(0.6, 1.0), rotation=40, shear=20)
    r = Renderer(img, spec, "numba")
    p = r.params(0, 64, seed=1)
    at = build_atlas(r.pyramid.levels)
    xy0, side, shifted = dense_crops(p.level_matrix(), p.level, at.shape, 16)
    assert side % 8 == 0
    crops = gather_crops(at.image, at.origin, at.shape, p.level, xy0, side)
    assert crops.shape == (64, side, side, 3)
    ys, xs = np.mgrid[0:16, 0:16]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(256)])
    outside = 0
    for i in range(64):
        lv = r.pyramid.levels[p.level[i]]
        h, w = lv.shape[:2]
        u, v = shifted[i] @ pts  # crop coordinates of every output pixel
        for du in (0, 1):
            for dv in (0, 1):
                cu, cv = np.floor(u).astype(int) + du, np.floor(v).astype(int) + dv
                assert (cu < side).all() and (cv < side).all()
                # left of / above the crop only where the crop starts at the level's edge
                assert ((cu >= 0) | (xy0[i, 0] == 0)).all() and ((cv >= 0) | (xy0[i, 1] == 0)).all()
                lu, lv_ = cu + xy0[i, 0], cv + xy0[i, 1]
                outside += int(((lu < 0) | (lu >= w) | (lv_ < 0) | (lv_ >= h)).sum())
                got = crops[i][np.clip(cv, 0, side - 1), np.clip(cu, 0, side - 1)]  # DALI's border clamp
                np.testing.assert_array_equal(got, lv[np.clip(lv_, 0, h - 1), np.clip(lu, 0, w - 1)])
    assert outside > 0, "no sample point left the image: the edge case was not exercised"


def test_gather_on_torch_tensors_matches_numpy(photo):
    r = Renderer(photo, AugmentSpec(size=12), "numba")
    p = r.params(0, 16, seed=4)
    at = build_atlas(r.pyramid.levels)
    xy0, side, _ = dense_crops(p.level_matrix(), p.level, at.shape, 12)
    a = gather_crops(at.image, at.origin, at.shape, p.level, xy0, side)
    b = gather_crops(torch.from_numpy(at.image), at.origin, at.shape, p.level, xy0, side)
    np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.slow
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

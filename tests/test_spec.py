import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastssl import AugmentSpec, FastSSLError, sample_params
from fastssl.spec import BLOCK, choose_level, level_matrix, num_levels


def test_defaults_are_the_papers_chain():
    s = AugmentSpec()
    assert s.size == 256 and s.initial_crop == 0.5
    assert s.scale == (1 / 500, 1.0) and s.ratio == (3 / 4, 4 / 3)
    assert s.resized == round(math.sqrt(2) * 256)
    assert (s.rotation, s.shear, s.vflip, s.hflip) == (30.0, 30.0, 0.0, 0.0)
    assert (s.jitter_p, s.brightness, s.contrast, s.saturation, s.hue) == (0.5, 0.4, 0.4, 0.4, 0.1)
    assert s.random_order


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"size": 0}, "size"),
        ({"size": 2.5}, "integer"),
        ({"scale": (0.5, 0.1)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (0.1, 1.5)}, "scale"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"jitter_p": 1.5}, "probability"),
        ({"vflip": -0.1}, "probability"),
        ({"initial_crop": 0.0}, "initial_crop"),
        ({"hue": 0.7}, "hue"),
        ({"shear": 90}, "shear"),
        ({"brightness": -1}, "brightness"),
        ({"scale": (float("nan"), 1.0)}, "scale"),
    ],
)
def test_absurd_values_are_refused_with_the_field_named(kw, words):
    with pytest.raises(FastSSLError, match=words):
        AugmentSpec(**kw)


def test_stream_does_not_depend_on_how_it_is_cut():
    spec = AugmentSpec(size=32)
    whole = sample_params(spec, 480, 640, 0, 3 * BLOCK + 17, seed=7, epoch=2)
    a = sample_params(spec, 480, 640, 0, 300, seed=7, epoch=2)
    b = sample_params(spec, 480, 640, 300, 3 * BLOCK + 17, seed=7, epoch=2)
    for name in ("matrix", "box", "level", "jitter", "factors", "order", "crop"):
        np.testing.assert_array_equal(getattr(whole, name), np.concatenate([getattr(a, name), getattr(b, name)]))


def test_seed_and_epoch_change_the_stream():
    spec = AugmentSpec(size=32)
    base = sample_params(spec, 480, 640, 0, 64, seed=1, epoch=0).matrix
    assert not np.allclose(base, sample_params(spec, 480, 640, 0, 64, seed=2, epoch=0).matrix)
    assert not np.allclose(base, sample_params(spec, 480, 640, 0, 64, seed=1, epoch=1).matrix)
    np.testing.assert_array_equal(base, sample_params(spec, 480, 640, 0, 64, seed=1, epoch=0).matrix)


def _per_call_block(spec, h, w, rng, n):
    """One block drawn the plain way, one numpy Generator call per quantity in the order the
    chain uses them: the oracle for the sampler's one-array, compiled draw."""
    c = int(min(h, w) * spec.initial_crop) if spec.initial_crop else None
    cx = rng.integers(0, w - c + 1, size=n) if c else np.zeros(n, np.int64)
    cy = rng.integers(0, h - c + 1, size=n) if c else np.zeros(n, np.int64)
    rw, rh = (c, c) if c else (w, h)
    bw, bh = np.zeros(n, np.int64), np.zeros(n, np.int64)
    todo = np.arange(n)
    while len(todo):
        area = rw * rh * rng.uniform(*spec.scale, size=len(todo))
        aspect = np.exp(rng.uniform(*np.log(spec.ratio), size=len(todo)))
        bw_, bh_ = (np.round(np.sqrt(area * aspect)).astype(int), np.round(np.sqrt(area / aspect)).astype(int))
        ok = (bw_ > 0) & (bh_ > 0) & (bw_ <= rw) & (bh_ <= rh)
        bw[todo[ok]], bh[todo[ok]] = bw_[ok], bh_[ok]
        todo = todo[~ok]
    x = cx + (rng.random(n) * (rw - bw + 1)).astype(int)
    y = cy + (rng.random(n) * (rh - bh + 1)).astype(int)
    angle = rng.uniform(-spec.rotation, spec.rotation, size=n)
    shear = rng.uniform(-spec.shear, spec.shear, size=n)
    flips = np.stack([rng.random(n) < spec.hflip, rng.random(n) < spec.vflip], axis=1)
    jitter = rng.random(n) < spec.jitter_p
    f = [rng.uniform(max(0, 1 - v), 1 + v, size=n) for v in (spec.brightness, spec.contrast, spec.saturation)]
    factors = np.stack([*f, rng.uniform(-spec.hue, spec.hue, size=n)], axis=1)
    order = np.argsort(rng.random((n, 4)), axis=1) if spec.random_order else np.tile(np.arange(4), (n, 1))
    if spec.grey_p > 0:
        grey = rng.random(n) < spec.grey_p
        factors[grey & ~jitter] = (1, 1, 0, 0)
        factors[grey, 2] = 0
        order[grey] = [[*(o for o in row if o != 2), 2] for row in order[grey]]
        jitter = jitter | grey
    return np.stack([x, y, bw, bh], axis=1).astype(float), angle, shear, flips, jitter, factors, order


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"grey_p": 0.3, "hflip": 0.5, "vflip": 0.5},
        {"random_order": False, "initial_crop": None, "hue": 0.5},
        {"scale": (0.5, 1.0), "ratio": (0.25, 4.0)},  # most tries fail: the draw reads past its first array
    ],
)
def test_the_compiled_draw_gives_the_per_call_draws_of_the_stream(kw):
    from fastssl.spec import _draw_block, _generator

    spec = AugmentSpec(size=64, **kw)
    for block in range(6):
        got = _draw_block(spec, 600, 512, _generator(3, 1, block), BLOCK)
        want = _per_call_block(spec, 600, 512, _generator(3, 1, block), BLOCK)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    assert got[4].any() and not got[4].all() and (got[2] != 0).all()


def test_draws_follow_the_spec_distributions():
    spec = AugmentSpec(size=64)
    H, W = 600, 800
    p = sample_params(spec, H, W, 0, 20000, seed=0)
    c = int(0.5 * min(H, W))
    x, y, w, h = p.crop.T
    assert (w >= 1).all() and (h >= 1).all() and (w <= c).all() and (h <= c).all()
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= W).all() and (y + h <= H).all()
    area = w * h / (c * c)
    assert area.min() >= 1 / 500 * 0.5 and area.max() <= 1.0
    # log-uniform area: the median area fraction sits well below the midpoint of the range
    assert np.median(area) < 0.5
    assert np.abs(p.angle).max() <= 30 and np.abs(p.shear).max() <= 30
    assert np.abs(p.angle).max() > 29  # the whole range is used
    assert 0.47 < p.jitter.mean() < 0.53
    f = p.factors
    assert f[:, 0].min() >= 0.6 and f[:, 0].max() <= 1.4 and np.abs(f[:, 3]).max() <= 0.1
    assert (np.sort(p.order, axis=1) == np.arange(4)).all()
    assert len({tuple(o) for o in p.order}) == 24  # every permutation of the colour ops occurs
    assert not p.flips.any()


def test_matrix_without_rotation_is_the_crop_box_scaled():
    spec = AugmentSpec(size=64, rotation=0, shear=0)
    p = sample_params(spec, 400, 500, 0, 50, seed=3)
    R, S = spec.resized, spec.size
    off = round((R - S) / 2)
    for i in range(len(p)):
        x0, y0, w, h = p.crop[i]
        # output pixel (x, y) is R-space pixel (x + off, y + off); its centre maps into the box
        for x, y in ((0, 0), (S - 1, 5), (17, S - 1)):
            u = x0 + (x + off + 0.5) * w / R - 0.5
            v = y0 + (y + off + 0.5) * h / R - 0.5
            np.testing.assert_allclose(p.matrix[i] @ [x, y, 1], [u, v], atol=1e-9)
            np.testing.assert_allclose(p.box[i] @ [x, y, 1], [(x + off + 0.5) / R, (y + off + 0.5) / R], atol=1e-12)


def test_flips_mirror_the_output():
    spec = AugmentSpec(size=32, hflip=1.0, vflip=1.0)
    plain = sample_params(spec.replace(hflip=0.0, vflip=0.0), 300, 300, 0, 8, seed=5)
    flip = sample_params(spec, 300, 300, 0, 8, seed=5)
    assert flip.flips.all()
    # same draws otherwise: flipped pixel (S-1-x, S-1-y) maps where plain (x, y) maps, mirrored about the R-space centre
    R, S = spec.resized, spec.size
    off = round((R - S) / 2)
    x, y = 3, 7
    xf, yf = (R - 1) - (x + off) - off, (R - 1) - (y + off) - off
    np.testing.assert_allclose(flip.box[:, :, :] @ [xf, yf, 1], plain.box @ [x, y, 1], atol=1e-12)


def test_level_choice_and_level_coordinates():
    m = np.zeros((4, 2, 3))
    for i, s in enumerate((0.5, 1.0, 3.0, 40.0)):
        m[i, 0, 0] = m[i, 1, 1] = s
    lv = choose_level(m, levels=5)
    assert lv.tolist() == [0, 0, 2, 4]  # round(log2(step)), clamped to the pyramid
    assert choose_level(m, levels=5, antialias=False).tolist() == [0, 0, 0, 0]
    # level-l pixel k covers level-0 pixels [2^l k, 2^l (k+1)): its centre is 2^l k + (2^l - 1) / 2
    ident = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (3, 1, 1))
    lm = level_matrix(ident, np.array([0, 1, 3]))
    for l in range(3):
        k = [0, 1, 3][l]
        u0 = 2**k * 5 + (2**k - 1) / 2
        np.testing.assert_allclose(lm[l] @ [u0, u0, 1], [5, 5], atol=1e-12)
    assert num_levels(1920, 2560) == 9 and num_levels(8, 8) == 2 and num_levels(7, 100) == 1


def test_negative_seed_is_refused():
    with pytest.raises(FastSSLError, match="seed"):
        sample_params(AugmentSpec(size=8), 100, 100, 0, 4, seed=-1)


def test_too_small_image_is_refused():
    with pytest.raises(FastSSLError, match="too small"):
        sample_params(AugmentSpec(size=32), 12, 400, 0, 4)
    sample_params(AugmentSpec(size=32, initial_crop=None), 12, 400, 0, 4)  # full image is large enough


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 96),
    lo=st.floats(1e-4, 1.0),
    span=st.floats(0.0, 1.0),
    r_lo=st.floats(0.2, 2.0),
    r_span=st.floats(0.0, 3.0),
    rot=st.floats(0, 180),
    shear=st.floats(0, 79),
    crop=st.one_of(st.none(), st.floats(0.05, 1.0)),
    h=st.integers(16, 300),
    w=st.integers(16, 300),
)
def test_any_valid_spec_gives_finite_params(size, lo, span, r_lo, r_span, rot, shear, crop, h, w):
    spec = AugmentSpec(
        size=size,
        scale=(lo, min(1.0, lo + span)),
        ratio=(r_lo, r_lo + r_span),
        rotation=rot,
        shear=shear,
        initial_crop=crop,
    )
    try:
        p = sample_params(spec, h, w, 0, 40, seed=0)
    except FastSSLError as e:  # only the documented refusals
        assert "too small" in str(e) or "no valid box" in str(e)
        return
    assert np.isfinite(p.matrix).all() and np.isfinite(p.box).all()
    assert (p.level >= 0).all() and (p.level < num_levels(h, w)).all()
    assert (p.crop[:, 2] >= 1).all() and (p.crop[:, 0] + p.crop[:, 2] <= w).all()

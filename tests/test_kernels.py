"""The Numba kernel and the torch backend against each other and against first principles."""

import colorsys
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastssl import AugmentSpec
from fastssl.kernels.pyramid import box_halve, build_pyramid
from fastssl.mono import Renderer


def both(image, spec, params):
    a = Renderer(image, spec, "numba").render_nhwc(params)
    b = Renderer(image, spec, "torch").render_nhwc(params)
    return a, b


@pytest.mark.parametrize("size", [1, 7, 32, 64, 97])
def test_numba_and_torch_agree_pixel_by_pixel(photo, size):
    spec = AugmentSpec(size=size)
    p = Renderer(photo, spec, "numba").params(0, 96, seed=11)
    a, b = both(photo, spec, p)
    assert a.shape == b.shape == (96, size, size, 3) and a.dtype == b.dtype == np.uint8
    d = np.abs(a.astype(int) - b.astype(int))
    # the same float32 formulas: measured at most 1 LSB, on 0.002-0.004% of values (a fused
    # multiply-add here and there)
    assert d.max() <= 1
    assert (d > 0).mean() < 5e-4


def test_agreement_holds_for_every_colour_op_alone_and_for_flips(photo):
    spec = AugmentSpec(size=24, hflip=0.5, vflip=0.5, jitter_p=1.0)
    base = Renderer(photo, spec, "numba").params(0, 64, seed=2)
    for op in range(4):
        order = np.tile(np.array([op, *[o for o in range(4) if o != op]], np.int8), (64, 1))
        f = np.tile(np.array([1.0, 1.0, 1.0, 0.0], np.float32), (64, 1))
        f[:, op] = base.factors[:, op]
        p = dataclasses.replace(base, order=order, factors=f)
        a, b = both(photo, spec, p)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, f"colour op {op}"


def _torch_args(renderer, p):
    import torch

    t = torch.as_tensor
    return (
        renderer.impl.pyramid,
        t(p.level_matrix(), dtype=torch.float64),
        t(p.box, dtype=torch.float64),
        t(p.level, dtype=torch.int64),
        t(p.jitter, dtype=torch.bool),
        t(p.factors, dtype=torch.float32),
        t(p.order, dtype=torch.int64),
        p.size,
    )


def test_fixed_shape_chain_equals_the_grouped_one(photo):
    from fastssl.kernels import torch_warp

    spec = AugmentSpec(size=24, jitter_p=0.7)
    r = Renderer(photo, spec, "torch")
    args = _torch_args(r, r.params(0, 64, seed=5))
    assert torch_warp.run(*args).equal(torch_warp.run_fixed(*args))


@pytest.mark.slow
def test_compiled_torch_backend_is_one_graph_and_agrees_with_numba(photo):
    """The GPU form of the torch backend compiles whole (fullgraph: no data-dependent shape, no
    host synchronisation) and renders what Numba renders (measured on CPU: 0.002-0.004% of
    values off by 1 LSB)."""
    import torch

    from fastssl.kernels import torch_warp

    spec = AugmentSpec(size=20)
    r = Renderer(photo, spec, "torch")
    p = r.params(0, 48, seed=9)
    out = torch.compile(torch_warp.run_fixed, fullgraph=True)(*_torch_args(r, p))
    a = Renderer(photo, spec, "numba").render_nhwc(p).astype(int)
    d = np.abs(a - out.permute(0, 2, 3, 1).numpy().astype(int))
    assert d.max() <= 1 and (d > 0).mean() < 5e-4
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_identity_geometry_copies_the_image_exactly(rng):
    S = 40
    img = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    spec = AugmentSpec(
        size=S, initial_crop=None, scale=(1, 1), ratio=(1, 1), margin=1, rotation=0, shear=0, jitter_p=0.0
    )
    p = Renderer(img, spec, "numba").params(0, 4)
    assert (p.level == 0).all()
    a, b = both(img, spec, p)
    for x in (a, b):
        np.testing.assert_array_equal(x, np.broadcast_to(img, x.shape))


def test_outside_the_crop_box_is_filled_with_zero():
    img = np.full((300, 300, 3), 200, np.uint8)
    spec = AugmentSpec(size=48, rotation=45, shear=60, jitter_p=0.0)
    p = Renderer(img, spec, "numba").params(0, 32, seed=4)
    ys, xs = np.mgrid[0:48, 0:48]
    pts = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3).T
    a, b = both(img, spec, p)
    for i in range(32):
        st = (p.box[i] @ pts).T.reshape(48, 48, 2)
        inside = ((st >= 0) & (st < 1)).all(-1)
        if inside.all():
            continue
        # away from the boundary (float32 vs float64 test of s, t), inside is 200 and outside 0
        margin = 1e-4
        deep_in = ((st >= margin) & (st < 1 - margin)).all(-1)
        deep_out = ~(((st >= -margin) & (st < 1 + margin)).all(-1))
        for x in (a, b):
            assert (x[i][deep_in] == 200).all() and (x[i][deep_out] == 0).all()
    assert any(((p.box[i] @ pts < 0) | (p.box[i] @ pts >= 1)).any() for i in range(32)), "no fill was exercised"


def _constant_patch(colour, op, factor):
    img = np.empty((64, 64, 3), np.uint8)
    img[:] = colour
    spec = AugmentSpec(size=16, rotation=0, shear=0, jitter_p=1.0)
    rend = Renderer(img, spec, "numba")
    p = rend.params(0, 1)
    f = np.array([[1.0, 1.0, 1.0, 0.0]], np.float32)
    f[0, op] = factor
    order = np.array([[op] + [o for o in range(4) if o != op]], np.int8)
    p = dataclasses.replace(p, factors=f, order=order, jitter=np.array([True]))
    a = rend.render_nhwc(p)[0]
    b = Renderer(img, spec, "torch").render_nhwc(p)[0]
    assert (a == a[0, 0]).all()
    return a[0, 0].astype(int), b[0, 0].astype(int)


@pytest.mark.parametrize("colour", [(200, 30, 90), (10, 240, 120), (77, 77, 200), (128, 128, 128)])
def test_colour_ops_follow_torchvision_formulas(colour):
    c = np.array(colour, float)
    grey = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    expect = {
        (0, 1.3): np.clip(c * 1.3, 0, 255),
        (1, 0.7): np.clip(0.7 * c + 0.3 * grey, 0, 255),  # constant image: its mean is its grey
        (2, 1.4): np.clip(1.4 * c - 0.4 * grey, 0, 255),
    }
    for shift in (0.1, -0.07):
        h, s, v = colorsys.rgb_to_hsv(*(c / 255))
        expect[(3, shift)] = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255
    for (op, f), want in expect.items():
        a, b = _constant_patch(colour, op, f)
        assert np.abs(a - np.floor(want + 0.5)).max() <= 1, (op, f, a, want)
        assert np.abs(b - a).max() <= 1


def test_box_pyramid_levels_are_2x2_means(rng):
    img = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    h = box_halve(img)
    assert h.shape == (18, 25, 3)
    want = img[:36, :50].astype(float).reshape(18, 2, 25, 2, 3).mean(axis=(1, 3))
    assert np.abs(h - want).max() <= 0.5
    pyr = build_pyramid(img, 3)
    assert [lv.shape[:2] for lv in pyr.levels] == [(37, 50), (18, 25), (9, 12)]
    np.testing.assert_array_equal(pyr.levels[1], h)
    np.testing.assert_array_equal(pyr.levels[2], box_halve(h))


def test_antialiasing_uses_coarser_levels_for_large_regions(photo):
    spec = AugmentSpec(size=32)
    p = Renderer(photo, spec, "numba").params(0, 256)
    assert p.level.max() >= 2  # a 256 px region shrunk to 45 px reads from level 2 or 3
    # without antialiasing (every patch read from level 0), high-frequency energy rises: the
    # upper half of the spectrum of the same patches gains several dB
    from fastssl.quality import radial_spectrum

    a = Renderer(photo, spec, "numba").render_nhwc(p)
    b = Renderer(photo, spec, "numba").render_nhwc(dataclasses.replace(p, level=np.zeros_like(p.level)))
    sa, sb = radial_spectrum(a), radial_spectrum(b)
    upper = slice(len(sa) // 2, None)
    assert (sb[upper] - sa[upper]).mean() > 3.0  # dB


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(16, 120),
    w=st.integers(16, 120),
    size=st.integers(1, 40),
    rot=st.floats(0, 180),
    shear=st.floats(0, 79),
    jitter=st.floats(0, 1),
    brightness=st.floats(0, 10),
    hue=st.floats(0, 0.5),
    lo=st.floats(1e-4, 1.0),
    seed=st.integers(0, 2**40),
)
def test_kernels_never_crash_and_agree_on_any_spec_and_shape(h, w, size, rot, shear, jitter, brightness, hue, lo, seed):
    img = np.random.default_rng(seed % 1000).integers(0, 256, (h, w, 3), dtype=np.uint8)
    spec = AugmentSpec(
        size=size, rotation=rot, shear=shear, jitter_p=jitter, brightness=brightness, hue=hue, scale=(lo, 1.0)
    )
    p = Renderer(img, spec, "numba").params(0, 8, seed=seed)
    a, b = both(img, spec, p)
    assert a.shape == (8, size, size, 3) and a.dtype == np.uint8
    # extreme contrast/brightness factors amplify float32 rounding; a 1-LSB gap can become 2
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_a_compiler_failure_falls_back_to_eager_with_a_warning(photo):
    spec = AugmentSpec(size=16)
    r = Renderer(photo, spec, "torch")  # CPU: not compiled unless asked
    assert r.impl._compiled is None
    p = r.params(0, 8)
    want = r.render(p)

    def broken(*args):
        raise RuntimeError("inductor could not build")

    r.impl._compiled = broken
    with pytest.warns(UserWarning, match="running eager: RuntimeError: inductor could not build"):
        got = r.render(p)
    assert got.equal(want) and r.impl._compiled is None


def test_texel_pyramid_gives_a_texel_and_its_right_neighbour_in_one_word_inside_a_border(rng):
    import numba as nb

    from fastssl.kernels.numba_warp import _pair
    from fastssl.kernels.pyramid import pack_rgb, pack_texels

    word = nb.njit(lambda t, i: _pair(t, i))  # the kernel's 64-bit tap load
    lv = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = pack_texels([lv, box_halve(lv)])
    assert list(p.widths) == [7, 3] and list(p.strides) == [9, 5] and p.texels.dtype == np.uint32
    flat = pack_rgb(lv).reshape(5, 7)
    for y in (-1, 0, 4, 5):  # rows of the border repeat the edge rows
        for x in (-1, 0, 3, 6):
            e = int(word(p.texels, p.offsets[0] + y * p.strides[0] + x))
            cy, cx, cx1 = min(max(y, 0), 4), min(max(x, 0), 6), min(max(x + 1, 0), 6)
            assert e & 0xFFFFFFFF == flat[cy, cx] and e >> 32 == flat[cy, cx1]
    # the last texel's word ends in the spare texel, inside the buffer
    last = int(p.offsets[1] + 2 * p.strides[1] + 3)  # level 1's bottom-right border texel
    assert last == len(p.texels) - 2 and int(word(p.texels, last)) >> 32 == 0


def test_tap_pass_gives_each_pixel_its_two_words_and_writes_nothing_past_the_row(rng):
    # four pixels' words go out as one vector store, the rest one by one: every row length
    # modulo 4, and the buffers' entries past the row keep what they held
    from fastssl.kernels.numba_warp import _taps

    texels = rng.integers(0, 2**24, 200, dtype=np.uint32)
    stride = 20
    words = texels[:-1].astype(np.uint64) | (texels[1:].astype(np.uint64) << np.uint64(32))
    for n in (0, 1, 3, 4, 5, 8, 11):
        idx = rng.integers(0, len(texels) - stride - 1, 12).astype(np.uint32)
        top = np.full(12, 7, np.uint64)
        bot = np.full(12, 9, np.uint64)
        _taps(texels, stride, n, idx, top, bot)
        assert np.array_equal(top[:n], words[idx[:n]]) and np.array_equal(bot[:n], words[idx[:n] + stride])
        assert (top[n:] == 7).all() and (bot[n:] == 9).all()


def test_patches_without_jitter_match_the_colour_path_with_identity_ops(photo):
    # without jitter the blend rounds and stores a row itself; with jitter the row goes through
    # float buffers, the colour ops and a separate store: identity ops must give the same bytes
    spec = AugmentSpec(size=40, jitter_p=0.0)
    r = Renderer(photo, spec, "numba")
    p = r.params(0, 48, seed=3)
    plain = r.render_nhwc(p)
    ident = dataclasses.replace(
        p, jitter=np.ones(48, bool), factors=np.tile(np.array([1.0, 1.0, 1.0, 0.0], np.float32), (48, 1))
    )
    d = np.abs(plain.astype(int) - r.render_nhwc(ident).astype(int))
    assert d.max() <= 1 and (d > 0).mean() < 1e-3  # hue by 0 may move a value by float rounding
    assert (plain == 0).any() and (plain > 0).any()


def test_row_prefetch_is_a_hint_that_never_changes_a_pixel(photo):
    from fastssl.kernels import numba_warp as nw

    r = Renderer(photo, AugmentSpec(size=48), "numba")
    p = r.params(0, 32, seed=5)
    assert p.jitter.any() and not p.jitter.all()  # both paths of the kernel
    args = nw.prepare(p.level_matrix(), p.box, p.level, p.jitter, p.factors, p.order)
    on = nw.run(r.impl.pyramid, args, np.empty((32, 48, 48, 3), np.uint8), prefetch=True)
    off = nw.run(r.impl.pyramid, args, np.zeros((32, 48, 48, 3), np.uint8), prefetch=False)
    assert np.array_equal(on, off) and on.any()


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_pyramid_beyond_32_bit_texel_indices_is_refused(monkeypatch, photo, backend):
    from fastssl.errors import FastSSLError
    from fastssl.kernels import pyramid
    from fastssl.kernels.pyramid import build_pyramid, pack_texels, texel_count

    levels = build_pyramid(photo[:90, :70], 3).levels
    assert texel_count(levels) == len(pack_texels(levels).texels)
    monkeypatch.setattr(pyramid, "texel_count", lambda levels: 2**31)  # counted, never allocated
    with pytest.raises(FastSSLError, match=f"too large for the {backend} backend"):
        Renderer(photo, AugmentSpec(size=8), backend)


def test_grey_p_turns_patches_grey_after_their_jitter_and_leaves_the_rest(photo):
    spec = AugmentSpec(size=24, jitter_p=0.5)
    grey = spec.replace(grey_p=0.5)
    a = Renderer(photo, spec, "numba").params(0, 200, seed=4)
    g = Renderer(photo, grey, "numba").params(0, 200, seed=4)
    np.testing.assert_array_equal(a.matrix, g.matrix)  # the same geometry: grey's draw comes last
    turned = (g.factors[:, 2] == 0) & (g.order[:, 3] == 2)  # saturation 0, applied last
    assert 60 < turned.sum() < 140 and g.jitter[turned].all()
    kept = ~turned
    np.testing.assert_array_equal(a.factors[kept], g.factors[kept])
    np.testing.assert_array_equal(a.order[kept], g.order[kept])
    np.testing.assert_array_equal(a.jitter[kept], g.jitter[kept])
    # a patch that was not jittered is only made grey; a jittered one keeps its other factors
    plain = turned & ~a.jitter
    np.testing.assert_array_equal(g.factors[plain], np.tile([1.0, 1.0, 0.0, 0.0], (plain.sum(), 1)))
    both_ = turned & a.jitter
    np.testing.assert_array_equal(g.factors[both_][:, [0, 1, 3]], a.factors[both_][:, [0, 1, 3]])
    for backend in ("numba", "torch"):
        out = Renderer(photo, grey, backend).render_nhwc(g).astype(int)
        spread = out.max(-1) - out.min(-1)  # R = G = B up to rounding on the grey patches
        assert spread[turned].max() <= 1 and spread[kept].max() > 20, backend
    assert np.abs(np.subtract(*both(photo, grey, g), dtype=int)).max() <= 1

"""Antialiasing: the fused kernels against the paper's PIL chain (fastssl.quality).

Bounds come from `fastssl bench agreement` on ameyoko.jpg (README, "Agreement with the PIL
chain"): at S=32/64 the upper-half-band spectrum difference was -0.01 / +0.19 dB (seed-to-seed
noise of the estimate: 0.03 / 0.19 dB), without the pyramid +8.4 / +8.0 dB; mean PSNR 29-30 dB
with the pyramid, 17-19 dB without. The test holds |hf_db| <= 1.5 dB (several times the noise,
far below the +8 dB of aliasing) and PSNR >= 26 dB, and checks that switching the pyramid off
breaks both bounds, so the test can tell aliasing from agreement.
"""

import numpy as np
import pytest

from fastssl.quality import agreement, psnr, radial_spectrum


def _check(r):
    assert abs(r["hf_db"]) <= 1.5, r
    assert r["psnr_geometry"] >= 26.0, r
    assert r["psnr_full_chain"] >= 24.0, r
    # the controls: no pyramid aliases and disagrees; the noise floor is small
    assert r["hf_db_no_antialias"] >= 4.0, r
    assert r["psnr_geometry_no_antialias"] < r["psnr_geometry"] - 3, r
    assert abs(r["hf_db_seed_noise"]) < 1.0, r


def test_agreement_with_the_pil_chain_on_the_default_photo(photo):
    _check(agreement(photo, size=32, n=192, seed=0))


def test_agreement_at_64_px_on_the_default_photo(photo):
    # the S=64 case without the data folder: the built-in photo (512 x 600) ships with matplotlib
    _check(agreement(photo, size=64, n=128, seed=0))


def test_agreement_with_the_pil_chain_on_ameyoko(ameyoko):
    _check(agreement(ameyoko, size=64, n=128, seed=0))


def test_psnr_and_spectrum_basics(rng):
    a = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    assert (psnr(a, a) == 99).all()
    b = a.copy()
    b[..., 0] ^= 1
    assert 45 < psnr(a, b).mean() < 60
    # white noise has a flat spectrum; a blurred copy loses its high frequencies
    noise = rng.integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)
    s = radial_spectrum(noise)
    assert np.ptp(s[2:-2]) < 2.0
    blur = (noise[:, :-1, :-1].astype(int) + noise[:, 1:, :-1] + noise[:, :-1, 1:] + noise[:, 1:, 1:]) // 4
    sb = radial_spectrum(np.pad(blur, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge").astype(np.uint8))
    assert sb[-1] < s[-1] - 6


@pytest.mark.parametrize("backend", ["torch"])
def test_torch_backend_agrees_too(photo, backend):
    r = agreement(photo, size=32, n=64, seed=1, backend=backend)
    assert abs(r["hf_db"]) <= 1.5 and r["psnr_geometry"] >= 26.0

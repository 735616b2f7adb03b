"""Agreement of the fused kernels with the paper's PIL chain: PSNR and power spectra.

``agreement()`` renders the same sampled parameters through a fastssl backend and through the
PIL chain (:mod:`fastssl.reference`) and reports

- mean PSNR over patches (geometry only, and with colour jitter), and
- the radially averaged power spectrum of the grey patches of both sets, in dB, per frequency
  band; ``hf_db`` is the mean difference over the upper half of the frequencies, where
  aliasing shows up (positive: fastssl has more high-frequency energy than PIL).

Two controls make the figures readable: the same comparison with antialiasing off (what
aliasing looks like) and the PIL chain against itself with another seed (the noise floor of a
spectrum estimated from that many patches).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from .kernels.backend import GREY
from .mono import Renderer
from .reference import pil_batch
from .spec import AugmentSpec, sample_params

BANDS = 16


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-patch PSNR in dB of two (n, S, S, 3) uint8 sets (capped at 99 dB when equal)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return np.minimum(10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 99.0)


def radial_spectrum(x: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """Mean radially averaged power spectrum (dB) of the grey levels of (n, S, S, 3) patches.

    A Hann window avoids the patch border leaking into every frequency. Band k covers radii
    [k, k+1) * (S/2) / bands of the centred 2-D spectrum (up to the Nyquist radius).
    """
    g = x.astype(np.float64) @ np.array(GREY)
    S = g.shape[1]
    bands = max(1, min(bands, S // 2))  # at least one pixel of radius per band
    win = np.outer(np.hanning(S), np.hanning(S))
    g = (g - g.mean(axis=(1, 2), keepdims=True)) * win
    p = (np.abs(np.fft.fftshift(np.fft.fft2(g), axes=(1, 2))) ** 2).mean(axis=0)
    yy, xx = np.indices((S, S)) - S // 2
    r = np.hypot(yy, xx) / (S / 2)
    idx = np.floor(r * bands).astype(int)
    out = np.empty(bands)
    for k in range(bands):
        out[k] = p[idx == k].mean()
    return 10 * np.log10(out)


def agreement(image: np.ndarray, size: int = 64, n: int = 256, seed: int = 0, backend: str = "numba") -> dict:
    pim = Image.fromarray(image)
    out: dict = {"size": size, "n": n, "backend": backend}
    geo = AugmentSpec(size=size, jitter_p=0.0)
    full = AugmentSpec(size=size)
    # one renderer (one pyramid) serves both specs: it only applies the parameters it is given
    rend = Renderer(image, geo, backend, "cpu")
    p = rend.params(0, n, seed=seed)
    ref = pil_batch(pim, geo, p)
    ours = rend.render_nhwc(p)
    noaa = rend.render_nhwc(dataclasses.replace(p, level=np.zeros_like(p.level)))
    ref2 = pil_batch(pim, geo, rend.params(0, n, seed=seed + 1))
    pf = sample_params(full, image.shape[0], image.shape[1], 0, n, seed=seed)
    out["psnr_geometry"] = float(psnr(ours, ref).mean())
    out["psnr_geometry_no_antialias"] = float(psnr(noaa, ref).mean())
    out["psnr_full_chain"] = float(psnr(rend.render_nhwc(pf), pil_batch(pim, full, pf)).mean())
    s_ref, s_ours, s_noaa, s_ref2 = (radial_spectrum(x) for x in (ref, ours, noaa, ref2))
    half = slice(len(s_ref) // 2, None)
    out["spectrum_db"] = {
        "pil": s_ref.round(2).tolist(),
        "fastssl": s_ours.round(2).tolist(),
        "fastssl_no_antialias": s_noaa.round(2).tolist(),
        "pil_other_seed": s_ref2.round(2).tolist(),
    }
    out["hf_db"] = float((s_ours - s_ref)[half].mean())
    out["hf_db_no_antialias"] = float((s_noaa - s_ref)[half].mean())
    out["hf_db_seed_noise"] = float((s_ref2 - s_ref)[half].mean())
    out["max_band_db"] = float(np.abs(s_ours - s_ref).max())
    return out


def plot_spectra(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = result["spectrum_db"]
    nb = len(sp["pil"])
    f = (np.arange(nb) + 0.5) / nb * 0.5
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("pil", "k-"), ("pil_other_seed", "k:"), ("fastssl", "C0-"), ("fastssl_no_antialias", "C3--")):
        ax.plot(f, sp[key], style, label=key)
    ax.set_xlabel("spatial frequency (cycles/pixel)")
    ax.set_ylabel("power (dB)")
    ax.set_title(f"radially averaged power spectrum, S={result['size']}, n={result['n']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""conv1's filters, as numbers and as a picture (the paper shows the conv1 filters each method
learns from one image beside ImageNet's).

A filter's weights over R, G and B split into a grey part (their mean, the same in every
channel) and a colour part (what differs between the channels); the two are orthogonal, so a
filter's energy (sum of squared weights) is the sum of theirs. ``colour_share`` is the colour
part's fraction: 0 for a filter that sees luminance only, 1 for one that sees only differences
between channels (a colour-opponent blob).
"""

from __future__ import annotations

import math
import os

import numpy as np

from .atomic import PNG, atomic_output
from .models import AlexNet


def conv1_weights(trunk: AlexNet) -> np.ndarray:
    """(filters, in_channels, k, k) float64."""
    return trunk.convs[0].weight.detach().cpu().double().numpy()


def colour_shares(w: np.ndarray) -> np.ndarray | None:
    """Per filter, the colour part's share of its energy; None for an input that is not RGB
    (the Sobel networks see two gradient channels of the grey image)."""
    if w.shape[1] != 3:
        return None
    grey = w.mean(1, keepdims=True)
    e_colour = ((w - grey) ** 2).sum((1, 2, 3))
    e_grey = 3.0 * (grey**2).sum((1, 2, 3))
    return e_colour / np.maximum(e_colour + e_grey, 1e-30)


def conv1_stats(trunk: AlexNet) -> dict:
    w = conv1_weights(trunk)
    share = colour_shares(w)
    out = {"filters": int(w.shape[0]), "in_channels": int(w.shape[1]), "kernel": int(w.shape[2])}
    if share is None:
        out.update(colour_share_median=None, colour_filters=None)
    else:
        out.update(colour_share_median=round(float(np.median(share)), 3), colour_filters=int((share > 0.5).sum()))
    return out


def _tiles(w: np.ndarray) -> np.ndarray:
    """The filters as one image: each scaled to [0, 1] on its own (its sign and shape, not its
    norm, as such figures show them), RGB or the first input channel in grey, one texel apart."""
    n, c, k, _ = w.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (k + 1) - 1, cols * (k + 1) - 1, 3))
    for i in range(n):
        f = w[i] if c == 3 else np.repeat(w[i, :1], 3, 0)
        lo, hi = f.min(), f.max()
        f = (f - lo) / (hi - lo) if hi > lo else np.full_like(f, 0.5)
        r, q = divmod(i, cols)
        grid[r * (k + 1) : r * (k + 1) + k, q * (k + 1) : q * (k + 1) + k] = f.transpose(1, 2, 0)
    return grid


def filter_figure(trunks: list[tuple[str, AlexNet]], path: str | os.PathLike) -> None:
    """One panel of conv1 filters per (name, network), titled with the name and colour share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(trunks)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    for ax, (name, trunk) in zip(axes[0], trunks, strict=True):
        w = conv1_weights(trunk)
        share = colour_shares(w)
        ax.imshow(_tiles(w), interpolation="nearest")
        sub = "" if share is None else f"\ncolour share {np.median(share):.2f}"
        ax.set_title(f"{name}{sub}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    with atomic_output(path, replace=PNG) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

"""Results as files: JSON (atomic), a Markdown table and a grouped-bar figure of probe accuracy."""

from __future__ import annotations

import json
import os

from .atomic import PNG, atomic_output
from .models.alexnet import LAYERS


def write_json(path: str | os.PathLike, obj, **kw) -> None:
    """``obj`` as JSON through a temporary file (``kw``: :func:`~fastssl.atomic.atomic_output`'s)."""
    with atomic_output(path, **kw) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def markdown_table(rows: dict[str, dict[str, float]], title: str = "probe top-1 %") -> str:
    lines = [f"| {title} | " + " | ".join(LAYERS) + " |", "| --- |" + " --- |" * len(LAYERS)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in LAYERS) + " |")
    return "\n".join(lines) + "\n"


def bar_figure(rows: dict[str, dict[str, float]], path: str | os.PathLike, title: str = "") -> None:
    """Grouped bars per layer; the y axis starts a little below the lowest bar (where the rows
    differ, not at 0) and the legend sits to the right of the axes, off the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8.5, 4))
    n = len(rows)
    w = 0.8 / max(n, 1)
    x = np.arange(len(LAYERS))
    values = [r[k] for r in rows.values() for k in LAYERS]
    for i, (name, r) in enumerate(rows.items()):
        ax.bar(x + (i - (n - 1) / 2) * w, [r[k] for k in LAYERS], w, label=name)
    if values:
        lo, hi = min(values), max(values)
        pad = max(1.0, 0.08 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
    ax.set_xticks(x, LAYERS)
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_output(path, replace=PNG) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)

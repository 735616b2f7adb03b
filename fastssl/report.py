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


def markdown_table(
    rows: dict,
    std: dict | None = None,
    n: int = 1,
    title: str = "probe top-1 %",
    counts: dict | None = None,
    smoke: bool = False,
) -> str:
    """One line per row; with ``std`` and ``n`` > 1 each cell is ``mean ± std``. A row that
    ``counts`` (seeds per row) gives fewer seeds shows its plain mean and says over how many.
    ``smoke``: a line above the table says the numbers come from a few steps."""
    head = title if n <= 1 else f"{title}, mean ± std over {n} seeds"
    lines = [f"| {head} | " + " | ".join(LAYERS) + " |", "| --- |" + " --- |" * len(LAYERS)]
    if smoke:
        lines.insert(0, "**SMOKE RUN**: every stage ran a few steps only; these numbers are not results.\n")
    for name, r in rows.items():
        have = (counts or {}).get(name, n)
        label = name if have >= n else f"{name} ({have} seed{'s' if have > 1 else ''})"
        if std is not None and n > 1 and have > 1:
            cells = [f"{r[k]:.1f} ± {std[name][k]:.1f}" for k in LAYERS]
        else:
            cells = [f"{r[k]:.1f}" for k in LAYERS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_figure(
    rows: dict, path: str | os.PathLike, title: str = "", std: dict | None = None, atomic: bool = True
) -> None:
    """Grouped bars per layer (error bars: ``std``); the y axis starts a little below the lowest
    bar (where the rows differ, not at 0) and the legend sits to the right, off the bars.
    ``atomic=False``: ``path`` is already a temporary the caller renames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8.5, 4))
    n = len(rows)
    w = 0.8 / max(n, 1)
    x = np.arange(len(LAYERS))
    values = [r[k] - (std[name][k] if std else 0) for name, r in rows.items() for k in LAYERS]
    values += [r[k] + (std[name][k] if std else 0) for name, r in rows.items() for k in LAYERS]
    for i, (name, r) in enumerate(rows.items()):
        err = [std[name][k] for k in LAYERS] if std else None
        ax.bar(x + (i - (n - 1) / 2) * w, [r[k] for k in LAYERS], w, label=name, yerr=err, capsize=2 if err else 0)
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
    try:
        if atomic:
            with atomic_output(path, replace=PNG) as tmp:
                _save_figure(fig, tmp)
        else:
            _save_figure(fig, path)
    finally:
        plt.close(fig)


def _save_figure(fig, path) -> None:
    fig.savefig(path, dpi=100, format="png")

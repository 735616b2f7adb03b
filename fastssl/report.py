"""Results as files: JSON (atomic), a Markdown table and a grouped-bar figure of probe accuracy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import JSON, PNG, atomic_output
from .errors import FastSSLError
from .methods import pretext_methods
from .models.alexnet import LAYERS

SMOKE_LINE = "**SMOKE RUN**: every stage ran a few steps only; these numbers are not results.\n"


def seeds_in(out: Path) -> list[int]:
    """The seeds of a repro folder: its ``seed-S`` subfolders."""
    return sorted(int(p.name[5:]) for p in Path(out).glob("seed-*") if p.name[5:].isdigit())


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
        lines.insert(0, SMOKE_LINE)
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


def bar_chart(values: dict, std: dict, path, title: str = "", ylabel: str = "top-1 (%)") -> None:
    """One bar per row with its std; ``path`` is a temporary the caller renames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(values), 3.6))
    names = list(values)
    ax.bar(range(len(names)), [values[n] for n in names], yerr=[std[n] for n in names], capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        _save_figure(fig, path)
    finally:
        plt.close(fig)


def _save_figure(fig, path) -> None:
    fig.savefig(path, dpi=100, format="png")


# -------------------------------------------------------- the summary
def report(out, seeds=None, **info) -> dict:
    """(Re)write ``OUT/probes.json``, ``table.md`` and ``probes.png`` from the probe results of
    ``seeds`` (default: every ``seed-*`` folder) in ``out``; returns the summary. The three
    files are replaced together or not at all. A smoke run's outputs say so."""

    out = Path(out)
    if seeds is None:
        seeds = seeds_in(out)
    result = summary(out, seeds)
    if not result["rows"]:
        raise FastSSLError(f"no probe results in {out} for seeds {seeds}")
    smoke = bool(info.pop("smoke", False)) or was_smoke(out)
    result.update(info)
    if smoke:
        result["smoke"] = True
    table = markdown_table(result["rows"], result["std"], n=len(seeds), counts=result["n"], smoke=smoke)
    title = ("SMOKE RUN (a few steps, not results): " if smoke else "") + "linear probes"
    title += f", preset {info['preset']}" if info.get("preset") else ""
    if len(seeds) > 1:
        title += f", mean +/- std over {len(seeds)} seeds"
    std = result["std"] if len(seeds) > 1 else None
    draw = lambda tmp: bar_figure(result["rows"], tmp, title=title, std=std, atomic=False)  # noqa: E731
    write_summary(out, ("probes.json", "table.md", "probes.png"), result, table, draw)
    return result


def write_summary(out: Path, names: tuple[str, str, str], result: dict, table: str, draw) -> None:
    """A summary's JSON, Markdown table and figure (``draw(path)``) under ``out``, replaced
    together or not at all; the table printed."""
    with (
        atomic_output(out / names[0], replace=JSON) as tj,
        atomic_output(out / names[1]) as tt,
        atomic_output(out / names[2], replace=PNG) as tp,
    ):
        tj.write_text(json.dumps(result, indent=1))
        tt.write_text(table)
        draw(tp)
    print(table)


def was_smoke(out: Path) -> bool:
    try:
        return bool(json.loads((out / "config.json").read_text())["recipe"].get("smoke"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def summary(out: Path, seeds: list[int]) -> dict:
    """Every finished probe row under ``out`` for ``seeds``: mean and std (over the seeds that
    have the row) of each cell, the per-seed values and the seed count per row."""

    per_seed = scores_per_seed(out, seeds, "probes")
    rows, std, count = {}, {}, {}
    for name in row_order(per_seed):
        mean, sd = mean_std([[v[k] for k in LAYERS] for v in per_seed[name].values()])
        rows[name] = dict(zip(LAYERS, mean, strict=True))
        std[name] = dict(zip(LAYERS, sd, strict=True))
        count[name] = len(per_seed[name])
    return {"rows": rows, "std": std, "seeds": seeds, "n": count, "per_seed": {r: per_seed[r] for r in rows}}


def scores_per_seed(out: Path, seeds, folder: str) -> dict[str, dict]:
    """``{row: {seed: top1}}`` from every ``OUT/seed-S/FOLDER/<row>.json`` of ``seeds``."""
    per_seed: dict[str, dict] = {}
    for seed in seeds:
        for rp in sorted((Path(out) / f"seed-{seed}" / folder).glob("*.json")):
            per_seed.setdefault(rp.stem, {})[str(seed)] = json.loads(rp.read_text())["top1"]
    return per_seed


def mean_std(values) -> tuple[list[float], list[float]]:
    """The mean and sample std (0 for one seed) over the first axis of ``values`` (one entry
    per seed, each a list of cells), rounded to 0.01."""
    a = np.asarray(values, dtype=float)
    sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:])
    return [round(float(x), 2) for x in a.mean(0)], [round(float(x), 2) for x in sd]


def row_order(names) -> list[str]:
    """random first (then ``random-<change>``), supervised last; between them by method
    (registry order), then by images (one, ten, a thousand, N, the full split), then the
    ablation variant, then the photo of a ``ROW@PHOTO`` row."""

    rank = {m: i for i, m in enumerate(pretext_methods())}

    def key(name: str):
        if name == "random" or name.startswith("random-"):  # random, then random-<change>
            return (0, 0 if name == "random" else 1, name)
        if name == "supervised":
            return (2, 0, "")
        row, _, photo = name.partition("@")
        prefix, _, rest = row.partition("-")  # mono / deka / kilo / n<N> / full, then method[-variant]
        method, _, variant = rest.partition("-")
        images = int(prefix[1:]) if prefix[:1] == "n" and prefix[1:].isdigit() else 0
        return (
            1,
            rank.get(method, len(rank)),
            {"mono": 0, "deka": 1, "kilo": 2, "full": 9}.get(prefix, 5),
            images,
            variant,
            photo,
        )

    return sorted(names, key=key)

"""Recipes: TOML files (stdlib tomllib) that hold only what differs from the defaults.

A recipe's sections and their defaults:

- top level: :class:`RunConfig` (resolution, held-out split, seed, loader workers, device);
- ``[model]``: :class:`~fastssl.models.alexnet.ModelConfig`;
- ``[mono]``: the :class:`~fastssl.spec.AugmentSpec` fields and ``epoch_length``;
- ``[train]``: the :class:`~fastssl.train.TrainConfig` every method starts from;
- ``[<method>]`` (one per registered method): what that method changes of ``[train]``,
  ``[<method>.settings]``: the method's own settings (its ``Settings`` dataclass), and
  ``[<method>.model]``: what that method's network changes of ``[model]`` (e.g. DeepCluster's
  Sobel input);
- ``[probe]``: :class:`~fastssl.probe.ProbeConfig`.

:func:`load` reads a preset or a file, applies ``--set section.key=value`` overrides (any key
of the schema, typed from its default), expands it to every key and validates every value
with the key named, before anything runs.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import tomllib

from .checks import as_dict, bad, check_device, method_model, to_dataclass
from .errors import FastSSLError
from .methods import METHODS, build_method, get_method
from .models.alexnet import ModelConfig
from .probe import ProbeConfig
from .spec import PAPER_EPOCH, AugmentSpec
from .train import TrainConfig

RECIPES = Path(__file__).parent / "recipes"
LOADERS = ("auto", "ffcv", "pytorch")


@dataclass
class RunConfig:
    """Run-wide settings (the recipe's top level)."""

    res: int = 224  # side of the labelled images for training and probes
    val_per_class: int = 50  # held-out validation images per class when no --eval-data is given
    seed: int = 0
    workers: int | None = None  # loader workers (0: in the main process; none: one per core, at most 8)
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    loader: str = "auto"  # auto (FFCV when installed), ffcv, pytorch
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range (labelled data)

    def check(self, where: str = "") -> None:
        if self.res < 8:
            bad(f"{where}res", "must be >= 8 pixels", self.res)
        if self.val_per_class < 1:
            bad(f"{where}val_per_class", "must be >= 1", self.val_per_class)
        if self.seed < 0:
            bad(f"{where}seed", "must be >= 0", self.seed)
        if self.workers is not None and self.workers < 0:
            bad(f"{where}workers", "must be >= 0", self.workers)
        check_device(f"{where}device", self.device)
        if self.loader not in LOADERS:
            bad(f"{where}loader", f"must be one of {', '.join(LOADERS)}", self.loader)
        lo, hi = self.rrc_scale
        if not 0 < lo <= hi <= 1:
            bad(f"{where}rrc_scale", "must be [low, high] with 0 < low <= high <= 1", list(self.rrc_scale))


def loader_workers(rc: dict) -> int:
    """The recipe's loader workers: ``workers``, or one per core (at most 8) when unset."""
    w = rc.get("workers")
    return min(8, len(os.sched_getaffinity(0))) if w is None else int(w)


# ---------------------------------------------------------------- recipes
RUN_WIDE = ("seed", "device", "resume", "progress")  # TrainConfig fields that come from the run, not a section
PROBE_RUN_WIDE = ("device", "progress")


def defaults() -> dict:
    """Every recipe key with its default value."""

    d = as_dict(RunConfig())
    d["model"] = as_dict(ModelConfig())
    d["mono"] = {**as_dict(AugmentSpec()), "epoch_length": PAPER_EPOCH}
    d["mono"]["size"] = d["res"]  # one image size in a recipe (checked by check_sizes)
    d["train"] = {k: v for k, v in as_dict(TrainConfig()).items() if k not in RUN_WIDE}
    for name, cls in METHODS.items():
        d[name] = {**d["train"], "model": dict(d["model"])}
        if cls.Settings is not None:
            d[name]["settings"] = as_dict(cls.Settings())
    d["probe"] = {k: v for k, v in as_dict(ProbeConfig()).items() if k not in PROBE_RUN_WIDE}
    return d


def _merge(base: dict, top: dict, where: str) -> dict:
    out = dict(base)
    for k, v in top.items():
        if k not in base:
            raise FastSSLError(f"unknown recipe key {where}{k} (keys: {', '.join(base)})")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                bad(where + k, "must be a section", v)
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


def expand(recipe: dict) -> dict:
    """The recipe with every key: defaults, then ``[train]``, then each method's own section."""

    full = defaults()
    top = {k: v for k, v in recipe.items() if k not in METHODS}
    out = _merge(full, top, "")
    train = out["train"]
    for name in METHODS:
        base = _merge(full[name], train, f"{name}.")
        base["model"] = dict(out["model"])  # the run's network, unless the method changes it
        out[name] = _merge(base, recipe.get(name, {}), f"{name}.")
    return out


def model_changes(rc: dict, method: str) -> dict:
    """The keys of ``[model]`` that ``method``'s own ``[<method>.model]`` sets differently."""
    return {k: v for k, v in method_model(rc, method).items() if rc["model"].get(k) != v}


def _recipe_path(name_or_path: str, near: Path | None = None) -> Path:
    p = Path(name_or_path)
    if not p.suffix:
        return RECIPES / f"{name_or_path}.toml"
    if near is not None and not p.is_absolute():
        return near / p
    return p


def _overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_recipe(name_or_path: str, _near: Path | None = None, _seen: tuple = ()) -> dict:
    """The recipe file as written (only what differs from the defaults). A recipe may start
    from another with ``base = "<preset or path>"`` (a path relative to the recipe's folder):
    the base's values, then its own on top."""
    p = _recipe_path(name_or_path, _near)
    if not p.is_file():
        names = ", ".join(sorted(x.stem for x in RECIPES.glob("*.toml")))
        raise FastSSLError(f"unknown preset {name_or_path!r}: choose one of {names}, or give a .toml path")
    if p.resolve() in _seen:
        raise FastSSLError(f"recipe {p} is its own base (base = ... goes round in a circle)")
    try:
        recipe = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FastSSLError(f"recipe {p} is not valid TOML: {e}") from None
    except RecursionError:
        raise FastSSLError(f"recipe {p} is nested too deeply to be a recipe") from None
    base = recipe.pop("base", None)
    if base is None:
        return recipe
    if not isinstance(base, str) or not base:
        bad("base", "must be the name of a preset or a .toml path", base)
    return _overlay(read_recipe(base, p.parent, (*_seen, p.resolve())), recipe)


def parse_value(item: str, raw: str, old):
    """``raw`` typed like ``old``: JSON (numbers, true/false, lists) or a plain string; ``none``
    or ``null`` is None; for a list, ``a,b`` is the same as ``[a, b]``. The one syntax of both
    ``--set`` and ``--spec``."""
    if raw.strip().lower() in ("none", "null"):
        return None
    if isinstance(old, (list, tuple)) and not raw.strip().startswith("["):
        raw = "[" + raw + "]"
    try:
        val = json.loads(raw)
    except ValueError:
        val = raw
    except RecursionError:
        raise FastSSLError(f"bad override {item[:40]!r}...: the value is nested too deeply") from None
    if old is None or isinstance(old, str):
        return val if old is None else raw
    if isinstance(old, bool):
        ok = isinstance(val, bool)
    elif isinstance(old, int):
        ok = isinstance(val, int) and not isinstance(val, bool)
    elif isinstance(old, float):
        ok = isinstance(val, (int, float)) and not isinstance(val, bool)
        val = float(val) if ok else val
    elif isinstance(old, list):
        ok = isinstance(val, list)
    else:
        ok = True
    if not ok:
        raise FastSSLError(f"bad override {item!r}: {item.partition('=')[0]} takes a value like {json.dumps(old)}")
    return val


def apply_overrides(recipe: dict, items: list[str] | None) -> dict:
    """``a.b.c=value`` for any key of the schema (``--set``); the recipe as written, changed."""
    if not items:
        return recipe
    for item in items:
        schema = expand(recipe)
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FastSSLError(f"bad override {item!r}: expected section.key=value")
        parts = key.strip().split(".")
        node, file_node = schema, recipe
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise FastSSLError(f"bad override {item!r}: no section {p!r} (sections: {', '.join(_sections(node))})")
            node = node[p]
            file_node = file_node.setdefault(p, {})
        leaf = parts[-1]
        if leaf not in node or isinstance(node[leaf], dict):
            raise FastSSLError(f"bad override {item!r}: no key {leaf!r} (keys: {', '.join(node)})")
        file_node[leaf] = parse_value(item, raw, node[leaf])
    return recipe


def _sections(node: dict) -> list[str]:
    return [k for k, v in node.items() if isinstance(v, dict)]


def validate(rc: dict) -> None:
    """Every value of an expanded recipe typed and in range, or one error naming it."""

    top = {k: v for k, v in rc.items() if not isinstance(v, dict)}
    to_dataclass(RunConfig, top)
    to_dataclass(ModelConfig, rc["model"], "model.")
    mono = dict(rc["mono"])
    n = mono.pop("epoch_length")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        bad("mono.epoch_length", "must be an integer >= 1", n)
    try:
        to_dataclass(AugmentSpec, mono, "mono.")
    except FastSSLError as e:
        raise FastSSLError(f"[mono]: {e}") from None
    for name, cls in METHODS.items():
        sec = dict(rc[name])
        settings = sec.pop("settings", None)
        to_dataclass(ModelConfig, sec.pop("model", rc["model"]), f"{name}.model.")
        to_dataclass(TrainConfig, sec, f"{name}.")
        if cls.Settings is not None:
            to_dataclass(cls.Settings, settings, f"{name}.settings.")
    to_dataclass(ProbeConfig, rc["probe"], "probe.")
    check_sizes(rc)


def check_sizes(rc: dict) -> None:
    """One image size: the labelled images' ``res``, the patches' ``mono.size`` and every
    network's ``input_res`` (the head is sized from it) must be the same number."""
    sizes = {"res": rc["res"], "mono.size": rc["mono"]["size"], "model.input_res": rc["model"]["input_res"]}
    for name in METHODS:
        sizes.setdefault(f"{name}.model.input_res", method_model(rc, name)["input_res"])
    if len(set(sizes.values())) > 1:
        said = ", ".join(f"{k} {v}" for k, v in sizes.items() if k.count(".") < 2 or v != sizes["model.input_res"])
        raise FastSSLError(f"image sizes disagree ({said}): set res, mono.size and model.input_res together")


def check_shadowed(rc: dict, overrides: list[str] | None, methods=()) -> None:
    """An override of ``[train]`` that a method's own section sets otherwise changes nothing for
    that method: one line naming the key to set instead (for any of the methods that will run;
    when none is named, only an override that changes nothing for every method)."""

    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if not key.startswith("train."):
            continue
        path = key.split(".")[1:]
        want = rc["train"]
        for part in path:
            want = want[part]
        shadowed = []
        for m in methods or METHODS:
            have = rc[m]
            for part in path:
                have = have[part]
            if have != want:
                shadowed.append(m)
        if shadowed and (methods or len(shadowed) == len(METHODS)):
            rest = ".".join(path)
            raise FastSSLError(
                f"--set {key} changes nothing for {', '.join(shadowed)}: "
                f"{'its' if len(shadowed) == 1 else 'their'} own section sets {rest} "
                f"(use --set {shadowed[0]}.{rest}=...)"
            )


def load(name_or_path: str, overrides: list[str] | None = None, methods=()) -> dict:
    """The expanded, validated recipe (a dict of sections) of a preset or file with overrides;
    ``methods``: those that will run, each checks that it can (e.g. BiGAN's resolution)."""

    rc = expand(apply_overrides(read_recipe(name_or_path), overrides))
    validate(rc)
    check_shadowed(rc, overrides, methods)
    for m in methods:
        get_method(m).check_recipe(rc)
    return rc


# ------------------------------------------------------------- building
def train_config(rc: dict, method_name: str, progress: bool, resume: bool):
    """The recipe's TrainConfig for a method (its section, ``settings`` left out) with the
    run-wide settings."""

    kw = {k: v for k, v in rc[method_name].items() if k not in ("settings", "model")}
    cfg = to_dataclass(TrainConfig, kw, f"{method_name}.")
    cfg.seed, cfg.device, cfg.progress, cfg.resume = int(rc["seed"]), rc["device"], progress, resume
    return cfg


def run_recipe(rc: dict, method_name: str, spec: dict | None = None, source: str | None = None) -> dict:
    """What a training run records of the recipe (compared on resume): the run-wide values,
    the method's section (with the files it names, by content: ``inputs``) and, for a run on
    source images (``source``: their digest, see :func:`fastssl.mono.images_digest`), the
    [mono] stream with ``spec`` and ``source_sha256``."""
    rec = {k: v for k, v in rc.items() if not isinstance(v, dict) and k != "smoke"}
    rec[method_name] = rc[method_name]
    inputs = METHODS[method_name].recipe_inputs(rc[method_name].get("settings"))
    if inputs:
        rec[method_name] = {**rec[method_name], "inputs": inputs}
    if source is not None:
        rec["mono"] = {**rc["mono"], **(spec or {}), "source_sha256": source}
    return copy.deepcopy(rec)


def build_for(rc: dict, method_name: str, num_classes=None):
    model = dict(method_model(rc, method_name))
    return build_method(method_name, model, num_classes, rc[method_name].get("settings"), seed=int(rc["seed"]))

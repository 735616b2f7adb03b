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

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import tomllib

from .errors import FastSSLError

RECIPES = Path(__file__).parent / "recipes"
DEVICES = ("auto", "cpu", "cuda")
LOADERS = ("auto", "ffcv", "pytorch")


def bad(key: str, msg: str, value) -> typing.NoReturn:
    raise FastSSLError(f"recipe value {key} {msg}, got {value!r}")


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


def check_device(key: str, device: str) -> None:
    head, _, index = device.partition(":")
    if head not in DEVICES or (index and (head != "cuda" or not index.isdigit())):
        bad(key, "must be auto, cpu, cuda or cuda:N", device)


def check_range(key: str, value: float, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    """``lo <= value <= hi`` (``lo < value`` / ``value < hi`` where open), finite."""
    ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        bad(key, f"must be in {lb}{lo:g}, {hi:g}{rb}", value)


def check_milestones(key: str, ms: list) -> None:
    if any(m < 0 for m in ms) or list(ms) != sorted(ms):
        bad(key, "must be epochs >= 0 in increasing order", ms)


def check_sgd(where: str, cfg) -> None:
    """The SGD fields shared by a training recipe and the probes' (lr, momentum, weight decay,
    step schedule)."""
    check_range(f"{where}lr", cfg.lr, 0, 1e3, lo_open=True)
    check_range(f"{where}momentum", cfg.momentum, 0, 1, hi_open=True)
    check_range(f"{where}weight_decay", cfg.weight_decay, 0, 1)
    check_milestones(f"{where}milestones", cfg.milestones)
    check_range(f"{where}gamma", cfg.gamma, 0, 1, lo_open=True)


# ------------------------------------------------------------------ typing
def _typed(key: str, value, hint):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _typed(key, value, a)
                except FastSSLError:
                    pass
        bad(key, f"must be {' or '.join(_name(a) for a in args)}", value)
    if hint is bool:
        if not isinstance(value, bool):
            bad(key, "must be true or false", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad(key, "must be an integer", value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad(key, "must be a number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            bad(key, "must be a string", value)
        return value
    if hint is list or origin is list:
        if not isinstance(value, (list, tuple)):
            bad(key, "must be a list", value)
        (item,) = typing.get_args(hint) or (typing.Any,)
        return [v if item is typing.Any else _typed(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            bad(key, f"must be a list of {len(args)} values", value)
        return tuple(_typed(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    return value


def _name(t) -> str:
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


def to_dataclass(cls, data: dict, where: str = ""):
    """Build ``cls`` from a dict: unknown keys, wrong types and (through the class's ``check``)
    out-of-range values are one error naming the key (``where`` + field name)."""
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise FastSSLError(f"unknown recipe key(s) {', '.join(where + k for k in unknown)} (keys: {', '.join(names)})")
    kw = {}
    for k, v in data.items():
        f = names[k]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            if not isinstance(v, dict):
                bad(where + k, "must be a section", v)
            kw[k] = to_dataclass(type(default), v, f"{where}{k}.")
        else:
            kw[k] = _typed(where + k, v, hints[k])
    obj = cls(**kw)
    if hasattr(obj, "check"):
        obj.check(where)
    return obj


def as_dict(obj) -> dict:
    """A dataclass as recipe values (tuples as lists, nested dataclasses as sections)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


# ---------------------------------------------------------------- recipes
RUN_WIDE = ("seed", "device", "resume", "progress")  # TrainConfig fields that come from the run, not a section
PROBE_RUN_WIDE = ("device", "progress")


def defaults() -> dict:
    """Every recipe key with its default value."""
    from .methods import METHODS
    from .models.alexnet import ModelConfig
    from .probe import ProbeConfig
    from .spec import PAPER_EPOCH, AugmentSpec
    from .train import TrainConfig

    d = as_dict(RunConfig())
    d["model"] = as_dict(ModelConfig())
    d["mono"] = {**as_dict(AugmentSpec()), "epoch_length": PAPER_EPOCH}
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
    from .methods import METHODS

    full = defaults()
    top = {k: v for k, v in recipe.items() if k not in METHODS}
    out = _merge(full, top, "")
    train = out["train"]
    for name in METHODS:
        base = _merge(full[name], train, f"{name}.")
        base["model"] = dict(out["model"])  # the run's network, unless the method changes it
        out[name] = _merge(base, recipe.get(name, {}), f"{name}.")
    return out


def method_model(rc: dict, method: str) -> dict:
    """``method``'s network: ``[model]`` with its own ``[<method>.model]`` changes."""
    return rc[method].get("model", rc["model"])


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
    from .methods import METHODS
    from .models.alexnet import ModelConfig
    from .probe import ProbeConfig
    from .spec import AugmentSpec
    from .train import TrainConfig

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


def check_shadowed(rc: dict, overrides: list[str] | None, methods=()) -> None:
    """An override of ``[train]`` that a method's own section sets otherwise changes nothing for
    that method: one line naming the key to set instead (for any of the methods that will run;
    when none is named, only an override that changes nothing for every method)."""
    from .methods import METHODS

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
    from .methods import get_method

    rc = expand(apply_overrides(read_recipe(name_or_path), overrides))
    validate(rc)
    check_shadowed(rc, overrides, methods)
    for m in methods:
        get_method(m).check_recipe(rc)
    return rc

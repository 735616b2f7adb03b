"""Checks and typed values for settings, importing nothing of fastssl but its error type.

Every component validates its own settings dataclass with these helpers (``check(where)``
methods call :func:`bad`, :func:`check_range` ...), and :func:`to_dataclass` builds a
dataclass from plain values with every unknown key, wrong type or out-of-range value one
error naming the key. Recipes (:mod:`fastssl.config`) sit above the components and use the
same helpers; nothing here knows a section, a method or a model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing

from .errors import FastSSLError

DEVICES = ("auto", "cpu", "cuda")


def bad(key: str, msg: str, value) -> typing.NoReturn:
    raise FastSSLError(f"recipe value {key} {msg}, got {value!r}")


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


def method_model(rc: dict, method: str) -> dict:
    """``method``'s network: ``[model]`` with its own ``[<method>.model]`` changes."""
    return rc[method].get("model", rc["model"])

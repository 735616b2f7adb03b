"""Recipes: TOML files (stdlib tomllib) loaded into plain dicts and dataclasses, with
``--set section.key=value`` overrides typed from the recipe's own values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import tomllib

from .errors import FastSSLError

RECIPES = Path(__file__).parent / "recipes"


def load_recipe(name_or_path: str) -> dict:
    p = Path(name_or_path)
    if not p.suffix:
        p = RECIPES / f"{name_or_path}.toml"
    if not p.is_file():
        names = ", ".join(sorted(x.stem for x in RECIPES.glob("*.toml")))
        raise FastSSLError(f"unknown preset {name_or_path!r}: choose one of {names}, or give a .toml path")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise FastSSLError(f"recipe {p} is not valid TOML: {e}") from None


def apply_overrides(recipe: dict, items: list[str] | None) -> dict:
    """``a.b.c=value``: the value is read as JSON (numbers, true/false, lists) or taken as a string."""
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FastSSLError(f"bad --set {item!r}: expected section.key=value")
        parts = key.strip().split(".")
        node = recipe
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise FastSSLError(f"bad --set {item!r}: no section {p!r} in the recipe")
            node = node[p]
        if parts[-1] not in node:
            raise FastSSLError(f"bad --set {item!r}: no key {parts[-1]!r} (keys: {', '.join(node)})")
        try:
            val = json.loads(raw)
        except ValueError:
            val = raw
        old = node[parts[-1]]
        if isinstance(old, bool) != isinstance(val, bool) or (
            isinstance(old, (int, float)) and not isinstance(val, (int, float))
        ):
            raise FastSSLError(f"bad --set {item!r}: {parts[-1]} takes a value like {old!r}")
        node[parts[-1]] = float(val) if isinstance(old, float) and isinstance(val, int) else val
    return recipe


def to_dataclass(cls, data: dict):
    """Build ``cls`` from a dict, recursing into dataclass fields; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise FastSSLError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
    kw = {}
    for k, v in data.items():
        ftype = names[k].type
        default = names[k].default_factory() if names[k].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(v, dict):
            kw[k] = to_dataclass(type(default), v)
        else:
            kw[k] = v
        del ftype
    return cls(**kw)

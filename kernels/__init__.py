"""Warp + colour kernels: pure array code (numpy, numba, torch, DALI), never importing the engine.

Shipped as ``fastssl.kernels`` (setuptools maps this folder there), so it never collides with
the unrelated PyPI package called ``kernels``.

:data:`BACKENDS` names every renderer (a :class:`~fastssl.kernels.backend.Backend`); a class is
imported only when used, so a missing optional library costs nothing until asked for.
"""

from __future__ import annotations

import importlib

# name -> "module:Class"; adding a backend is its own file and one line here
BACKENDS: dict[str, str] = {
    "numba": "fastssl.kernels.numba_warp:NumbaBackend",
    "torch": "fastssl.kernels.torch_warp:TorchBackend",
    "dali": "fastssl.kernels.dali_warp:DaliBackend",
}


def backend_class(name: str):
    """The Backend subclass registered as ``name`` (KeyError for an unknown name; ImportError
    when its module cannot be imported)."""
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def unavailable(name: str, device_type: str) -> str | None:
    """None when backend ``name`` can render on ``device_type``, else the reason it cannot."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"
    try:
        cls = backend_class(name)
    except ImportError as e:
        return f"it cannot be imported ({e})"
    return cls.unavailable(device_type)

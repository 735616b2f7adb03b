"""fastssl: self-supervised learning from a single image, fast.

Reproduces Asano, Rupprecht & Vedaldi, *A critical analysis of self-supervision, or what we can
learn from a single image* (ICLR 2020) as practical software.
"""

from .errors import FastSSLError

# the rest loads on first use (PEP 562), so that ``import fastssl.cli`` is quick and the
# command line takes Ctrl-C from its first moment, before torch and numba load
_LAZY = {
    "MonoSource": "mono",
    "export": "mono",
    "preview": "mono",
    "AugmentSpec": "spec",
    "PatchParams": "spec",
    "sample_params": "spec",
    "load_pretrained": "pretrained",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AugmentSpec",
    "FastSSLError",
    "MonoSource",
    "PatchParams",
    "export",
    "load_pretrained",
    "preview",
    "sample_params",
]
__version__ = "0.1.0"

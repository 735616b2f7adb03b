"""fastssl: self-supervised learning from a single image, fast.

Reproduces Asano, Rupprecht & Vedaldi, *A critical analysis of self-supervision, or what we can
learn from a single image* (ICLR 2020) as practical software.
"""

from .errors import FastSSLError
from .mono import MonoSource, export, preview
from .spec import AugmentSpec, PatchParams, sample_params

__all__ = ["AugmentSpec", "FastSSLError", "MonoSource", "PatchParams", "export", "preview", "sample_params"]
__version__ = "0.1.0"

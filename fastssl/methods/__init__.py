"""Self-supervised (and supervised) methods: how a batch becomes a loss.

A method knows nothing about where batches come from or how training runs. It owns its
networks (``nets``: name -> module; the trainer moves, wraps in DDP and compiles them) and
says which parameters each optimiser updates (``param_groups``: optimiser name -> params).
``train_step(batch, ctx)`` computes its losses and calls ``ctx.step(loss, name)`` once per
optimiser, in the order it needs: RotNet and supervised use one optimiser; BiGAN calls it for
the discriminator, then for generator + encoder. ``on_epoch_start(epoch, ctx)`` runs between
epochs (DeepCluster re-clusters the data there and re-initialises its head; long work there
calls ``ctx.check_stop()`` now and then, so that a stop signal is taken within a batch). ``trunk()``
returns the AlexNet whose conv layers the linear probes read.

A batch is ``(images, labels)``: uint8 channels-last images on the device and int64 labels,
or ``None`` for unlabelled sources.
"""

from __future__ import annotations

from ..checks import to_dataclass
from ..errors import FastSSLError
from .base import Method, flip_half
from .bigan import BiGAN
from .deepcluster import DeepCluster
from .distill import Distill
from .rotnet import RotNet
from .supervised import Supervised

# name -> class: adding a method is its own file and one line here (and, optionally, a recipe section)
METHODS: dict[str, type[Method]] = {
    "rotnet": RotNet,
    "deepcluster": DeepCluster,
    "bigan": BiGAN,
    "supervised": Supervised,
    "distill": Distill,
}

__all__ = ["METHODS", "Method", "build_method", "flip_half", "pretext_methods"]


def pretext_methods() -> list[str]:
    return [n for n, c in METHODS.items() if c.pretext]


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise FastSSLError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(
    name: str, model_kw: dict, num_classes: int | None = None, method_kw: dict | None = None, seed: int = 0
) -> Method:
    """An instance of the registered method ``name``: ``model_kw`` the AlexNet's keywords,
    ``method_kw`` its own settings (checked against its ``Settings``)."""

    cls = get_method(name)
    if cls.needs_labels and not num_classes:
        raise FastSSLError(f"{name} training needs a labelled source")
    settings = None
    if cls.Settings is not None:
        settings = to_dataclass(cls.Settings, dict(method_kw or {}), f"{name}.settings.")
    elif method_kw:
        raise FastSSLError(f"{name} takes no settings, got {', '.join(method_kw)}")
    return cls(dict(model_kw), settings, num_classes=num_classes, seed=seed)

"""Self-supervised (and supervised) methods: how a batch becomes a loss.

A method knows nothing about where batches come from or how training runs. It owns its
networks (``nets``: name -> module; the trainer moves, wraps in DDP and compiles them) and
says which parameters each optimiser updates (``param_groups``: optimiser name -> params).
``train_step(batch, ctx)`` computes its losses and calls ``ctx.step(loss, name)`` once per
optimiser, in the order it needs: RotNet and supervised use one optimiser; BiGAN calls it for
the discriminator, then for generator + encoder. ``on_epoch_start(epoch, ctx)`` runs between
epochs (DeepCluster re-clusters the data there and re-initialises its head). ``trunk()``
returns the AlexNet whose conv layers the linear probes read.

A batch is ``(images, labels)``: uint8 channels-last images on the device and int64 labels,
or ``None`` for unlabelled sources.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FastSSLError


class Method:
    name = "method"
    needs_labels = False

    def __init__(self):
        self.nets: dict[str, nn.Module] = {}

    def param_groups(self) -> dict[str, list]:
        return {"main": [p for n in self.nets.values() for p in n.parameters()]}

    def trunk(self) -> nn.Module:
        net = self.nets["model"]
        return getattr(net, "module", net)  # unwrap DDP

    def on_epoch_start(self, epoch: int, ctx) -> None:
        pass

    def state_dict(self) -> dict:
        """What the method needs, beyond its networks, to resume mid-epoch (tensors only)."""
        return {}

    def load_state_dict(self, state: dict, ctx) -> None:
        pass

    def train_step(self, batch, ctx) -> dict:
        raise NotImplementedError

    def arch(self) -> dict:
        return self.trunk().config


def flip_half(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Mirror a random half of the batch horizontally (on the device)."""
    m = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(m.view(-1, 1, 1, 1), x.flip(3), x)


def build_method(name: str, model_kw: dict, num_classes: int | None = None, method_kw: dict | None = None) -> Method:
    """``method_kw``: the method's own settings (DeepCluster: k, pca_dim, iters, seed; BiGAN:
    z_dim, g_width, d_width)."""
    from .bigan import BiGAN
    from .deepcluster import DeepCluster
    from .rotnet import RotNet
    from .supervised import Supervised

    if name == "deepcluster":
        return DeepCluster(model_kw, **(method_kw or {}))
    if name == "bigan":
        return BiGAN(model_kw, **(method_kw or {}))
    if name == "rotnet":
        return RotNet(model_kw)
    if name == "supervised":
        if not num_classes:
            raise FastSSLError("supervised training needs a labelled source")
        return Supervised(model_kw, num_classes)
    raise FastSSLError(f"unknown method {name!r}; choose rotnet, deepcluster, bigan or supervised")

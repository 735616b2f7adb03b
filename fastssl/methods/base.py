"""The method interface (see :mod:`fastssl.methods`)."""

from __future__ import annotations

import torch
from torch import nn


class Method:
    """What a method declares (read by ``train``, ``repro`` and the recipes) and does."""

    name = "method"
    needs_labels = False  # trains on labels (only on a labelled source)
    fixed_dataset = False  # needs index access to a fixed dataset (TensorData), not a stream
    pretext = True  # a self-supervised method: ``repro`` trains its one-image and full-data rows
    Settings = None  # dataclass of the method's own settings, the recipe's [<name>.settings]

    @classmethod
    def check_recipe(cls, rc: dict) -> None:
        """Refuse, with one line naming the key, a recipe this method cannot run (e.g. a
        resolution it does not support)."""

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

"""RotNet (Gidaris et al. 2018): predict which of 0/90/180/270 degrees an image was rotated by,
with all four rotations of every image in the batch, made on the device."""

from __future__ import annotations

import torch

from ..models import AlexNet
from .base import Method, flip_half


def four_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (4B, C, H, W) rotated by 0, 90, 180, 270 degrees, and labels 0..3."""
    rots = [x, torch.rot90(x, 1, (2, 3)), torch.rot90(x, 2, (2, 3)), torch.rot90(x, 3, (2, 3))]
    y = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return torch.cat(rots).contiguous(memory_format=torch.channels_last), y


class RotNet(Method):
    name = "rotnet"

    def __init__(self, model_kw: dict, settings=None, *, num_classes=None, seed: int = 0):
        super().__init__()
        self.nets["model"] = AlexNet(4, **model_kw)

    def train_step(self, batch, ctx) -> dict:
        x, _ = batch
        x, y = four_rotations(flip_half(x))
        return self.classify_step(x, y, ctx)

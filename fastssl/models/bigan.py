"""BiGAN's generator and joint discriminator (DCGAN-style, as in Donahue et al., ICLR 2017); the encoder is
the AlexNet (its head outputs the latent code), so the probes read the encoder.

Images cross these modules on the batch contract's scale (0..255, float here): the generator
ends in ``tanh`` mapped to 0..255, the discriminator maps its input to [-1, 1] first.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _stages(res: int) -> int:
    n = int(round(math.log2(res / 4)))
    if res < 8 or 4 * 2**n != res:
        raise ValueError(f"BiGAN's generator and discriminator need a power-of-two resolution >= 8, got {res}")
    return n


class Generator(nn.Module):
    """z (B, z_dim) -> (B, 3, res, res) images on 0..255: a 4x4 seed, then stride-2 transposed
    convolutions with BatchNorm and ReLU, halving the channels each time."""

    def __init__(self, z_dim: int, res: int, width: int = 64):
        super().__init__()
        n = _stages(res)
        c = width * 2 ** (n - 1)
        layers = [nn.ConvTranspose2d(z_dim, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.net(z[:, :, None, None]) + 1.0) * 127.5


class JointDiscriminator(nn.Module):
    """A logit for each (image, code) pair: a strided conv branch for the image, an MLP for the
    code, and an MLP on both (LeakyReLU 0.2). ``norm``: BatchNorm after every conv but the first,
    as DCGAN; without it the discriminator is ALI's (Dumoulin et al., ICLR 2017), which relies
    on dropout instead. ``dropout`` after every hidden layer, ``input_dropout`` on the image and
    the code as they come in: both keep the discriminator from winning outright.

    ``inject``: the code also enters every convolution of the image branch but the first, as a
    per-channel bias computed from the code's hidden layer and added before the normalisation
    (as BiGAN's reference discriminator conditions its layers), so the pair is compared at
    every scale rather than only in the last MLP."""

    def __init__(
        self,
        z_dim: int,
        res: int,
        width: int = 64,
        hidden: int = 512,
        dropout: float = 0.0,
        norm: bool = True,
        input_dropout: float = 0.0,
        inject: bool = False,
    ):
        super().__init__()
        n = _stages(res)
        self.input_dropout = nn.Dropout(input_dropout)
        layers, c_in, c, channels = [], 3, width, []
        for i in range(n):
            channels.append(c)
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=i == 0 or not norm))
            if i and norm:
                layers.append(nn.BatchNorm2d(c))
            layers += [nn.LeakyReLU(0.2, True), nn.Dropout(dropout)]
            c_in, c = c, c * 2
        self.image = nn.Sequential(*layers, nn.Flatten())
        self.code = nn.Sequential(nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2, True), nn.Dropout(dropout))
        self.joint = nn.Sequential(
            nn.Linear(c_in * 16 + hidden, hidden), nn.LeakyReLU(0.2, True), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )
        # a bias per channel from the code, for each convolution after the first (None: off);
        # made last, so that the other layers draw the same initial weights with it or without
        self.inject = nn.ModuleList(nn.Linear(hidden, ch) for ch in channels[1:]) if inject else None

    def forward(self, x: torch.Tensor, z: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """``groups``: the batch is that many equal groups (real pairs, then generated ones), each
        normalised by its own BatchNorm statistics, as if it came through the discriminator
        alone (DCGAN's practice; one forward pass, as DDP wants). Normalised together, the two
        groups let the discriminator compare real and generated images within the batch."""
        h = self.input_dropout(x.float() / 127.5 - 1.0)
        # the code's dropout masks are drawn after the image branch's when nothing is injected,
        # as before the option (same random draws); injected, the code is needed first
        code = self.code(self.input_dropout(z)) if self.inject is not None else None
        convs = 0
        for layer in self.image:
            if isinstance(layer, nn.BatchNorm2d) and groups > 1 and self.training:
                h = torch.cat([layer(g) for g in h.chunk(groups)])
            else:
                h = layer(h)
            if isinstance(layer, nn.Conv2d):
                if self.inject is not None and convs:
                    h = h + self.inject[convs - 1](code)[:, :, None, None].to(h.dtype)
                convs += 1
        if code is None:
            code = self.code(self.input_dropout(z))
        return self.joint(torch.cat([h, code], 1)).squeeze(1)

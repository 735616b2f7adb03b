"""BiGAN (Donahue et al. 2017): a generator z -> image, an encoder image -> z (the AlexNet, the
network the probes read) and a discriminator on (image, code) pairs.

Two optimisers per step, through the method interface: ``ctx.step(loss_d, "d")`` for the
discriminator on (real image, its code) against (generated image, its z), then
``ctx.step(loss_ge, "ge")`` for generator + encoder with the labels swapped. Real and generated
pairs go through the discriminator as one batch (one forward per backward, as DDP wants), with
BatchNorm statistics per group (real, generated), as two separate passes would have them:
normalised together, the discriminator told the groups apart from batch statistics within a
few dozen steps and the generator collapsed to one image for every z.
Latent codes are uniform in [-1, 1]; horizontal flips of the real images on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import bad, check_range, method_model
from ..errors import FastSSLError
from ..models import AlexNet
from ..models.bigan import Generator, JointDiscriminator
from .base import Method, flip_half

CODES = ("linear", "tanh", "uniform")


@dataclass
class BiGANSettings:
    z_dim: int = 64  # latent code size (uniform in [-1, 1])
    g_width: int = 64  # generator width (channels of its last hidden layer)
    d_width: int = 64  # discriminator width
    d_dropout: float = 0.0  # dropout after every hidden layer of the discriminator
    d_input_dropout: float = 0.0  # dropout on the discriminator's inputs (image and code)
    d_norm: bool = True  # BatchNorm in the discriminator's image branch (DCGAN); false: ALI's, dropout only
    d_skip_above: float = 1.0  # the discriminator sits out its step while its batch accuracy is above this
    d_inject_z: bool = False  # the code also biases every discriminator convolution but the first
    # the encoder's code: tanh (standardised over the batch, then tanh: bounded like the prior, as
    # the reference bounds its encoder's output), uniform (standardised, then through the normal
    # CDF to [-1, 1]: the prior's marginals) or linear (the head's output, unbounded)
    code: str = "tanh"

    def check(self, where: str = "") -> None:
        for name in ("z_dim", "g_width", "d_width"):
            if getattr(self, name) < 1:
                bad(f"{where}{name}", "must be >= 1", getattr(self, name))
        check_range(f"{where}d_dropout", self.d_dropout, 0, 1, hi_open=True)
        check_range(f"{where}d_input_dropout", self.d_input_dropout, 0, 1, hi_open=True)
        check_range(f"{where}d_skip_above", self.d_skip_above, -1, 1)
        if self.code not in CODES:
            bad(f"{where}code", f"must be one of {', '.join(CODES)}", self.code)


class BiGAN(Method):
    name = "bigan"

    Settings = BiGANSettings

    @classmethod
    def check_recipe(cls, rc: dict) -> None:
        res = method_model(rc, cls.name)["input_res"]
        if res < 8 or res & (res - 1):
            bad(
                "model.input_res",
                "must be a power of two >= 8 for BiGAN's generator (e.g. --set res=64 --set model.input_res=64 "
                "--set mono.size=64)",
                res,
            )

    def __init__(self, model_kw: dict, settings: BiGANSettings | None = None, *, num_classes=None, seed: int = 0):
        super().__init__()
        st = settings or BiGANSettings()
        z_dim, g_width, d_width, d_dropout, d_skip_above = (
            st.z_dim,
            st.g_width,
            st.d_width,
            st.d_dropout,
            st.d_skip_above,
        )
        res = int(model_kw.get("input_res", 224))
        self.z_dim = int(z_dim)
        # the discriminator skips its step while its accuracy on the batch is above this (1: never;
        # a host read per step when set)
        self.d_skip_above = float(d_skip_above)
        # tanh: each code dimension standardised over the batch, then squashed into (-1, 1), so the
        # encoder's codes have the spread of the U(-1, 1) prior from the first step
        self.code = st.code
        self.nets["model"] = AlexNet(self.z_dim, **model_kw)  # the encoder
        try:
            self.nets["generator"] = Generator(self.z_dim, res, g_width)
            self.nets["discriminator"] = JointDiscriminator(
                self.z_dim,
                res,
                d_width,
                dropout=d_dropout,
                norm=st.d_norm,
                input_dropout=st.d_input_dropout,
                inject=st.d_inject_z,
            )
        except ValueError as e:
            raise FastSSLError(
                f"{e}: BiGAN runs at low resolution, e.g. --set res=64 --set model.input_res=64 --set mono.size=64"
            ) from None

    def param_groups(self) -> dict[str, list]:
        return {
            "d": list(self.nets["discriminator"].parameters()),
            "ge": list(self.nets["generator"].parameters()) + list(self.nets["model"].parameters()),
        }

    def train_step(self, batch, ctx) -> dict:
        x, _ = batch
        x = flip_half(x).float()
        n = x.shape[0]
        E, G, D = self.nets["model"], self.nets["generator"], self.nets["discriminator"]
        z = torch.rand(n, self.z_dim, device=x.device) * 2 - 1
        real = torch.cat([torch.ones(n, device=x.device), torch.zeros(n, device=x.device)])
        with ctx.autocast():
            z_hat = E(x)
            if self.code != "linear":
                z_hat = z_hat.float()
                z_hat = (z_hat - z_hat.mean(0)) / (z_hat.std(0) + 1e-5)
                z_hat = torch.tanh(z_hat) if self.code == "tanh" else torch.erf(z_hat / math.sqrt(2.0))
            x_hat = G(z)
            d = D(torch.cat([x, x_hat.detach()]), torch.cat([z_hat.detach(), z]), groups=2)
            loss_d = F.binary_cross_entropy_with_logits(d.float(), real)
        skip = self.d_skip_above < 1.0 and float(((d.detach() > 0).float() == real).float().mean()) > self.d_skip_above
        if not skip:
            ctx.step(loss_d, "d")
        with ctx.autocast():
            d = D(torch.cat([x, x_hat]), torch.cat([z_hat, z]), groups=2)
            loss_ge = F.binary_cross_entropy_with_logits(d.float(), 1.0 - real)
        ctx.step(loss_ge, "ge")
        acc = ((d.detach() > 0).float() == real).float().mean()  # the discriminator's, after its step
        return {"loss_d": loss_d.detach(), "loss_ge": loss_ge.detach(), "d_acc": acc, "d_skipped": float(skip)}

"""The method interface (see :mod:`fastssl.methods`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import as_dict
from ..models import model_key


class Method:
    """What a method declares (read by ``train``, ``repro`` and the recipes) and does."""

    name = "method"
    needs_labels = False  # trains on labels (only on a labelled source)
    fixed_dataset = False  # needs index access to a fixed dataset (FixedData: TensorData, IndexedPatches)
    pretext = True  # a self-supervised method: ``repro`` trains its one-image and full-data rows
    Settings = None  # dataclass of the method's own settings, the recipe's [<name>.settings]
    epoch_start_name = "epoch start"  # what on_epoch_start does, in ``plan``'s stage names

    @classmethod
    def check_recipe(cls, rc: dict) -> None:
        """Refuse, with one line naming the key, a recipe this method cannot run (e.g. a
        resolution it does not support)."""

    @classmethod
    def min_items(cls, settings: dict | None) -> int:
        """The fewest items its fixed dataset may hold with these settings (0: any)."""
        return 0

    @classmethod
    def settings_for_items(cls, settings: dict | None, n_items: int) -> dict | None:
        """``settings`` adapted to a fixed dataset of only ``n_items`` (a smoke run's)."""
        return settings

    @classmethod
    def recipe_inputs(cls, settings: dict | None) -> dict:
        """What a run records of the files its ``settings`` name, by content (e.g. a digest),
        so that a resume is refused when one changed and taken when one merely moved."""
        return {}

    @classmethod
    def recipe_defaults(cls) -> dict:
        """The method's settings at their defaults, nested as a recipe records them (a setting
        added in a later version, at its default, does not stop an older run's resume)."""
        return {} if cls.Settings is None else {cls.name: {"settings": as_dict(cls.Settings())}}

    def batch_labels(self) -> int:
        """How many distinct labels its batches carry (0: it reads no labels)."""
        return 0

    def epoch_start_seconds(self, ctx, n_items: int, res: int) -> float:
        """An estimate of :meth:`on_epoch_start`'s cost on ``n_items`` of ``res`` px (``plan``)."""
        return 0.0

    def __init__(self):
        self.nets: dict[str, nn.Module] = {}

    def param_groups(self) -> dict[str, list]:
        return {"main": [p for n in self.nets.values() for p in n.parameters()]}

    def trunk(self) -> nn.Module:
        net = self.nets["model"]
        return getattr(net, "module", net)  # unwrap DDP

    def on_epoch_start(self, epoch: int, ctx) -> None:
        pass

    def compile_extra(self, compile_fn) -> None:
        """Compile, with ``compile_fn``, what the step runs beyond ``nets`` (which the trainer
        compiles itself): e.g. the probes' frozen trunk."""

    def state_dict(self) -> dict:
        """What the method needs, beyond its networks, to resume mid-epoch (tensors only)."""
        return {}

    def load_state_dict(self, state: dict, ctx) -> None:
        pass

    def train_step(self, batch, ctx) -> dict:
        raise NotImplementedError

    def arch(self) -> dict:
        """The trained network's config, as checkpoints record it (``model``: its class in
        :data:`~fastssl.models.MODELS`, left out for AlexNet)."""
        net = self.trunk()
        key = model_key(net)
        return dict(net.config) if key == "alexnet" else {"model": key, **net.config}

    def classify_step(self, x: torch.Tensor, y: torch.Tensor, ctx) -> dict:
        """The step of a method that classifies (RotNet's rotations, DeepCluster's clusters,
        supervised's classes): cross-entropy of ``nets["model"]`` under autocast, one optimiser
        step, the loss and the batch accuracy (left on the device)."""
        with ctx.autocast():
            logits = self.nets["model"](x)
            loss = nn.functional.cross_entropy(logits, y)
        ctx.step(loss, "main")
        return {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean()}


def flip_half(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Mirror a random half of the batch horizontally (on the device)."""
    m = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(m.view(-1, 1, 1, 1), x.flip(3), x)


def random_resized_crop(
    x: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3), generator=None
) -> torch.Tensor:
    """A random crop of each image of the batch, resized back to the batch's size (bilinear, on
    the device): area a fraction of the image drawn from ``scale``, aspect ratio log-uniform in
    ``ratio``, position uniform (torchvision's RandomResizedCrop, without its retries: a crop
    that would not fit is clipped to the image). Float 0..255 out."""
    n, dev = x.shape[0], x.device
    u = torch.rand(n, 4, device=dev, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(lo + (hi - lo) * u[:, 1])
    w = torch.sqrt(area * r).clamp(max=1.0)  # fractions of the side
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)  # centre in [-1, 1] coordinates
    cy = (1 - h) * (2 * u[:, 3] - 1)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)

"""Distillation from any patch source (Asano & Saeed, ICLR 2023: a student learns a teacher's
classifier from augmented patches of one image).

A frozen teacher (a training checkpoint of any registered network, e.g. ``fastssl train
--method supervised --model wrn-40-4``) labels each batch with its softmax at temperature
``T``; the student (``model``, a named network) learns to match it: ``KL(teacher || student)``
of the tempered softmaxes, times ``T**2``. Labels of a labelled source are never read. On the
device, per batch: pad-and-random-crop (``pad`` pixels of zeros), horizontal flips, and with
probability ``cutmix`` one CutMix box (Yun et al., ICCV 2019) pasted from a shuffled partner
image; the teacher labels the mixed images themselves, so targets and images always agree.
The teacher runs in eval mode under the trainer's autocast and layout, and compiled with the
student when the run compiles. The student is scored as a classifier (``fastssl score``).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import bad, check_range
from ..errors import FastSSLError
from ..models import NAMED, classifier
from .base import Method, flip_half


@dataclass
class DistillSettings:
    teacher: str = ""  # the teacher's training checkpoint (required; `train --teacher`)
    model: str = "wrn-16-4"  # the student: a named network (`train --model`), or the recipe's AlexNet
    temperature: float = 8.0  # of both softmaxes
    cutmix: float = 1.0  # probability that a batch gets a CutMix box
    cutmix_alpha: float = 1.0  # the kept area is Beta(alpha, alpha)
    pad: int = 4  # pad-and-random-crop by this many pixels (0: off)
    flip: bool = True  # mirror a random half of each batch

    def check(self, where: str = "") -> None:
        if self.model != "alexnet" and self.model not in NAMED:
            bad(f"{where}model", f"must be alexnet or one of {', '.join(NAMED)}", self.model)
        if not self.temperature > 0:
            bad(f"{where}temperature", "must be > 0", self.temperature)
        check_range(f"{where}cutmix", self.cutmix, 0, 1)
        if not self.cutmix_alpha > 0:
            bad(f"{where}cutmix_alpha", "must be > 0", self.cutmix_alpha)
        if self.pad < 0:
            bad(f"{where}pad", "must be >= 0", self.pad)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T**2``, the mean over the batch
    (exactly 0 for identical logits)."""
    t = temperature
    log_s = F.log_softmax(student.float() / t, dim=1)
    log_t = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


def pad_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image shifted by up to ``pad`` pixels each way, zeros filling in (a random crop of
    the zero-padded image at the original size)."""
    if pad == 0:
        return x
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (b, 2)).to(x.device)
    rows = off[:, 0, None] + torch.arange(h, device=x.device)  # (b, h)
    cols = off[:, 1, None] + torch.arange(w, device=x.device)  # (b, w)
    idx = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # (b, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def cutmix_box(h: int, w: int, alpha: float) -> tuple[int, int, int, int]:
    """A box (top, bottom, left, right) of about ``1 - lam`` of an ``h`` x ``w`` image, lam ~
    Beta(alpha, alpha), centred uniformly and clipped to the image (torch's global RNG: the
    trainer seeds it and keeps it in checkpoints)."""
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    side = math.sqrt(1.0 - lam)
    bh, bw = int(h * side), int(w * side)
    cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
    top, left = max(cy - bh // 2, 0), max(cx - bw // 2, 0)
    return top, min(cy + bh - bh // 2, h), left, min(cx + bw - bw // 2, w)


def cutmix(x: torch.Tensor, alpha: float = 1.0):
    """(mixed images, partner index, box): every image gets the same box cut from a shuffled
    partner image of the batch; the batch keeps its shape and layout."""
    b, _, h, w = x.shape
    perm = torch.randperm(b).to(x.device)
    top, bottom, left, right = cutmix_box(h, w, alpha)
    out = x.clone(memory_format=torch.channels_last)
    out[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    return out, perm, (top, bottom, left, right)


class Distill(Method):
    name = "distill"
    pretext = False
    Settings = DistillSettings

    def __init__(self, model_kw: dict, settings: DistillSettings | None = None, *, num_classes=None, seed: int = 0):
        from ..pretrained import load_network  # the teacher: any registered network of a checkpoint

        super().__init__()
        st = settings or DistillSettings()
        if not st.teacher:
            raise FastSSLError("distill needs a teacher: a training checkpoint (fastssl train --teacher CKPT)")
        self.settings = st
        teacher = load_network(st.teacher).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = self._teacher_fwd = teacher
        self.num_classes = int(teacher.config["num_classes"])
        if num_classes and int(num_classes) != self.num_classes:
            raise FastSSLError(
                f"the teacher {st.teacher} has {self.num_classes} classes, the labelled source {num_classes}"
            )
        self.nets["model"] = classifier(st.model, self.num_classes, model_kw)
        self._placed = None

    @classmethod
    def recipe_inputs(cls, settings: dict | None) -> dict:
        """The teacher by the SHA-256 of its checkpoint file: the student's resume needs the
        same teacher, wherever its file now lies."""
        path = (settings or {}).get("teacher")
        if not path or not os.path.isfile(path):
            return {}  # no teacher, or none there: building the method says so
        with open(path, "rb") as f:
            return {"teacher_sha256": hashlib.file_digest(f, "sha256").hexdigest()}

    def compile_extra(self, compile_fn) -> None:
        self._teacher_fwd = compile_fn(self.teacher)

    def _place(self, x: torch.Tensor) -> None:
        where = (x.device, x.is_contiguous(memory_format=torch.channels_last))
        if self._placed != where:
            self.teacher.to(x.device)
            if where[1]:
                self.teacher.to(memory_format=torch.channels_last)
            self._placed = where

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        st = self.settings
        x = pad_crop(x, st.pad)
        if st.flip:
            x = flip_half(x)
        if st.cutmix > 0 and float(torch.rand(())) < st.cutmix:
            x = cutmix(x, st.cutmix_alpha)[0]
        return x

    @torch.no_grad()
    def targets(self, x: torch.Tensor, ctx) -> torch.Tensor:
        """The teacher's logits for ``x`` (the images the student sees)."""
        self._place(x)
        with ctx.autocast():
            return self._teacher_fwd(x).float()

    def train_step(self, batch, ctx) -> dict:
        x, _ = batch  # a labelled source's labels are never read
        x = self.augment(x)
        t = self.targets(x, ctx)
        with ctx.autocast():
            s = self.nets["model"](x)
        loss = distill_loss(s, t, self.settings.temperature)
        ctx.step(loss, "main")
        return {"loss": loss.detach(), "agree": (s.argmax(1) == t.argmax(1)).float().mean()}

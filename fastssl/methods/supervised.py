"""Full supervision: cross-entropy on the labels of a labelled source (the paper's upper row,
and the teachers of distillation: ``model`` picks the network, AlexNet by default)."""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import bad
from ..errors import FastSSLError
from ..models import NAMED, classifier
from .base import Method


@dataclass
class SupervisedSettings:
    model: str = "alexnet"  # the recipe's AlexNet ([model]), or a named network (`train --model`)

    def check(self, where: str = "") -> None:
        if self.model != "alexnet" and self.model not in NAMED:
            bad(f"{where}model", f"must be alexnet or one of {', '.join(NAMED)}", self.model)


class Supervised(Method):
    name = "supervised"
    needs_labels = True
    Settings = SupervisedSettings

    pretext = False

    def __init__(self, model_kw: dict, settings: SupervisedSettings | None = None, *, num_classes: int, seed: int = 0):
        super().__init__()
        self.nets["model"] = classifier((settings or SupervisedSettings()).model, num_classes, model_kw)
        self.num_classes = int(num_classes)

    def batch_labels(self) -> int:
        return self.num_classes

    def train_step(self, batch, ctx) -> dict:
        x, y = batch
        if y is None:
            raise FastSSLError("supervised training got a batch without labels; use a labelled source")
        return self.classify_step(x, y, ctx)

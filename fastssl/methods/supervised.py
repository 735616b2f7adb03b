"""Full supervision: cross-entropy on the labels of a labelled source (the paper's upper row)."""

from __future__ import annotations

from ..errors import FastSSLError
from ..models import AlexNet
from .base import Method


class Supervised(Method):
    name = "supervised"
    needs_labels = True

    pretext = False

    def __init__(self, model_kw: dict, settings=None, *, num_classes: int, seed: int = 0):
        super().__init__()
        self.nets["model"] = AlexNet(num_classes, **model_kw)
        self.num_classes = int(num_classes)

    def batch_labels(self) -> int:
        return self.num_classes

    def train_step(self, batch, ctx) -> dict:
        x, y = batch
        if y is None:
            raise FastSSLError("supervised training got a batch without labels; use a labelled source")
        return self.classify_step(x, y, ctx)

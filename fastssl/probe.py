"""Linear probes on a frozen trunk, the paper's evaluation (Asano et al., ICLR 2020).

One probe per layer on the post-ReLU output of conv1..conv5: max-pool to about ``target``
features, BatchNorm without affine, linear classifier. All five train together (sum of their
losses) from one forward pass of the frozen, BN-folded trunk per batch. Default recipe: SGD
momentum 0.9, weight decay 1e-5, batch 192, 36 epochs, lr 0.01 dropped 10x at epochs 10, 20,
30; evaluation on centre crops, or ten crops averaged (``ten_crop``).

Pools: at the paper's 224 px geometry the paper's own max-pools are used (6/6/3, 4/4/0,
3/3/1, 3/3/1, 2/2/0: 9600, 9216, 9600, 9600, 9216 features). For other inputs each layer is
max-pooled adaptively to the grid ``s x s`` whose ``C * s * s`` is closest to ``target``
(at most the layer's own size), so every layer keeps a comparable feature count: the
CIFAR-scale rescaling (an adaptation of the paper's protocol to small inputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checks import bad, check_sgd
from .data.adapters import LoaderData
from .distributed import resolve_device
from .errors import FastSSLError
from .methods.base import Method
from .models import AlexNet, fold_bn
from .models.alexnet import LAYERS
from .report import write_json
from .train import OptimConfig, TrainConfig, Trainer

PAPER_POOLS = ((6, 6, 3), (4, 4, 0), (3, 3, 1), (3, 3, 1), (2, 2, 0))


@dataclass
class ProbeConfig:
    epochs: int = 36
    batch_size: int = 192
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    milestones: list[int] = field(default_factory=lambda: [10, 20, 30])
    gamma: float = 0.1
    target: int = 9216  # features per layer, approximately
    ten_crop: bool = False
    steps_per_epoch: int = 0  # 0: whole epochs
    device: str = "auto"
    progress: bool = True

    def check(self, where: str = "") -> None:
        for name in ("epochs", "batch_size", "target"):
            if getattr(self, name) < 1:
                bad(f"{where}{name}", "must be >= 1", getattr(self, name))
        if self.steps_per_epoch < 0:
            bad(f"{where}steps_per_epoch", "must be >= 0 (0: whole epochs)", self.steps_per_epoch)
        check_sgd(where, self)


def _grid(c: int, h: int, target: int) -> int:
    return max(1, min(h, int(round(math.sqrt(target / c)))))


class LinearProbes(nn.Module):
    def __init__(self, tap_shapes: list[tuple[int, int, int]], num_classes: int, target: int, paper_pools: bool):
        super().__init__()
        self.pools = nn.ModuleList()
        self.bns = nn.ModuleList()
        self.fcs = nn.ModuleList()
        self.features = []
        for k, (c, h, w) in enumerate(tap_shapes):
            if paper_pools:
                ks, st, pd = PAPER_POOLS[k]
                pool = nn.MaxPool2d(ks, st, pd)
                s = (h + 2 * pd - ks) // st + 1
                n = c * s * ((w + 2 * pd - ks) // st + 1)
            else:
                s = _grid(c, h, target)
                pool = nn.AdaptiveMaxPool2d(s)
                n = c * s * s
            self.pools.append(pool)
            self.bns.append(nn.BatchNorm1d(n, affine=False))
            self.fcs.append(nn.Linear(n, num_classes))
            self.features.append(n)
        for fc in self.fcs:
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            fc(bn(torch.flatten(pool(t), 1)))
            for t, pool, bn, fc in zip(taps, self.pools, self.bns, self.fcs, strict=True)
        ]


class ProbeMethod(Method):
    """The five probes as a method of the trainer: the frozen, BN-folded trunk gives the taps
    (outside ``nets``: neither trained nor checkpointed), the probes are the one network."""

    name = "probe"
    needs_labels = True
    pretext = False

    def __init__(self, frozen: AlexNet, probes: LinearProbes, trunk_digest: str = ""):
        super().__init__()
        self.frozen = frozen
        self.nets["probes"] = probes
        self.trunk_digest = trunk_digest
        self._taps = frozen.taps

    def compile_extra(self, compile_fn) -> None:
        self._taps = compile_fn(self.frozen.taps)

    def trunk(self) -> AlexNet:
        return self.frozen

    def arch(self) -> dict:
        # the trunk's weights belong to the run: probes of one checkpoint never resume (or
        # stand in for) those of another
        return {**self.frozen.config, "probe_features": list(self.nets["probes"].features), "trunk": self.trunk_digest}

    def train_step(self, batch, ctx) -> dict:
        x, y = batch
        with torch.no_grad(), ctx.autocast():
            taps = self._taps(x)
        with ctx.autocast():
            outs = self.nets["probes"](taps)
        loss = sum(nn.functional.cross_entropy(o.float(), y) for o in outs)
        ctx.step(loss, "main")
        return {"loss": loss.detach() / len(outs)}


def weights_digest(net: torch.nn.Module) -> str:
    """SHA-256 of a network's state (names, shapes and bytes), the same for the same weights."""

    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def probe_method(trunk: AlexNet, num_classes: int, cfg: ProbeConfig, dev) -> ProbeMethod:
    """The five probes on the frozen, BN-folded copy of ``trunk`` on ``dev``: the paper's pools
    at its 224 px geometry, adaptive ones elsewhere."""
    frozen = fold_bn(trunk).to(dev).to(memory_format=torch.channels_last).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    res = frozen.config["input_res"]
    with torch.no_grad():
        shapes = [tuple(t.shape[1:]) for t in frozen.taps(torch.zeros(1, 3, res, res, device=dev))]
    paper = (not frozen.config["small"]) and res == 224
    return ProbeMethod(frozen, LinearProbes(shapes, num_classes, cfg.target, paper), weights_digest(trunk))


def probe_train_config(cfg: ProbeConfig, dev, steps_per_epoch: int):
    """The trainer's settings for the probes: SGD with the probe recipe's schedule, a
    checkpoint at every epoch end, resumed when one exists."""

    return TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optim=OptimConfig("sgd", cfg.lr, cfg.momentum, False, cfg.weight_decay, list(cfg.milestones), cfg.gamma),
        device=str(dev),
        compile="off",
        log_every=max(1, min(50, steps_per_epoch)),
        ckpt_every=10**9,  # at every epoch end only
        steps_per_epoch=cfg.steps_per_epoch,
        resume=True,
        progress=cfg.progress,
    )


def train_probes(trunk: AlexNet, train, val, num_classes: int, cfg: ProbeConfig, out_dir=None) -> dict:
    """Train the five probes on ``train`` and score top-1 (%) on ``val``; both yield the batch
    contract. Training runs through :class:`~fastssl.train.Trainer` (AMP, channels-last,
    checkpoints and exact resume in ``out_dir``, Ctrl-C, NaN checks, progress); without
    ``out_dir`` its checkpoints go to a temporary folder."""

    dev = resolve_device(cfg.device)
    method = probe_method(trunk, num_classes, cfg, dev)
    probes = method.nets["probes"]
    n_steps = len(train) if not cfg.steps_per_epoch else min(len(train), cfg.steps_per_epoch)
    tcfg = probe_train_config(cfg, dev, n_steps)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() if out_dir is None else contextlib.nullcontext(out_dir) as folder:
        if Trainer(method, LoaderData(train), tcfg, Path(folder)).fit() == "interrupted":
            raise KeyboardInterrupt
    top1 = evaluate(method.frozen, probes, val, cfg.ten_crop)
    result = {
        "top1": top1,
        "features": dict(zip(LAYERS, probes.features, strict=True)),
        "epochs": cfg.epochs,
        "seconds": round(time.perf_counter() - t0, 1),
        "network": {k: v for k, v in trunk.config.items() if k != "num_classes"},  # the trunk probed
        "probe": {"lr": cfg.lr, "milestones": list(cfg.milestones), "batch_size": cfg.batch_size, "target": cfg.target},
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "probes.json", result)
    return result


@torch.no_grad()
def evaluate(frozen: AlexNet, probes: LinearProbes, val, ten_crop: bool) -> dict:
    probes.eval()
    correct = torch.zeros(5)
    total = 0
    for x, y in val:
        outs = probes(frozen.taps(x))
        for k, o in enumerate(outs):
            if ten_crop:
                o = o.softmax(1).view(y.shape[0], 10, -1).mean(1)
            correct[k] += (o.argmax(1) == y).sum().item()
        total += y.shape[0]
    if total == 0:
        raise FastSSLError("the validation data is empty")
    return {name: round(100.0 * correct[k].item() / total, 2) for k, name in enumerate(LAYERS)}

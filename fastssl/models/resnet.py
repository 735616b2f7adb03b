"""Residual networks for classifiers beyond AlexNet: teachers and students of distillation.

- :class:`WideResNet` (Zagoruyko & Komodakis, BMVC 2016), the CIFAR family: a 3x3 stem of 16
  filters, three groups of ``(depth - 4) / 6`` pre-activation basic blocks of ``16 k``, ``32 k``
  and ``64 k`` filters (strides 1, 2, 2), BN-ReLU, global average pool, one linear layer.
  ``wrn-16-4`` (2.7M parameters) and ``wrn-40-4`` (8.9M) are the distillation paper's student
  and teacher.
- :class:`ResNet` (He et al., CVPR 2016): basic blocks (ResNet-18) or bottlenecks (ResNet-50)
  after the 224 px stem (7x7 stride 2 and a max-pool), or, with ``small=True``, after a 3x3
  stride-1 stem for 32 px input. ``resnet-small`` (three stages of 16/32/64 filters, three
  basic blocks each, ResNet-20 of the paper's CIFAR section, 0.27M parameters) is sized for two
  CPU cores.

Both take the batch contract (uint8 or float 0..255, channels-last) and normalise on the device
with the dataset statistics of ``norm`` (``imagenet`` or ``cifar``). ``config`` holds every
constructor keyword, so ``type(net)(**net.config)`` rebuilds it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FastSSLError

NORMS = {  # per-channel mean and std of 0..1 images
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class _Normalised(nn.Module):
    """Input handling shared by the residual networks."""

    def _set_norm(self, norm: str) -> None:
        if norm not in NORMS:
            raise FastSSLError(f"model norm {norm!r}: choose {' or '.join(NORMS)}")
        mean, std = NORMS[norm]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.short = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        a = torch.relu(self.bn1(x))
        skip = x if self.short is None else self.short(a)
        h = self.conv1(a)
        h = self.conv2(self.drop(torch.relu(self.bn2(h))))
        return h + skip


class WideResNet(_Normalised):
    def __init__(
        self, num_classes: int = 10, depth: int = 16, widen: int = 4, dropout: float = 0.0, norm: str = "cifar"
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise FastSSLError(f"wide-ResNet depth must be 6 n + 4 >= 10, got {depth}")
        if widen < 1:
            raise FastSSLError(f"wide-ResNet widen must be >= 1, got {widen}")
        self.config = dict(num_classes=num_classes, depth=depth, widen=widen, dropout=dropout, norm=norm)
        self._set_norm(norm)
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for g, stride in zip(range(3), (1, 2, 2), strict=True):
            for b in range(n):
                blocks.append(_PreActBlock(cin, widths[g + 1], stride if b == 0 else 1, dropout))
                cin = widths[g + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        h = self.blocks(self.stem(self.normalise(x)))
        h = torch.relu(self.bn(h))
        return self.fc(h.mean((2, 3)))


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = _shortcut(cin, cout, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.short is None else self.short(x)))


class _Bottleneck(_Basic):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        nn.Module.__init__(self)
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = _shortcut(cin, cout, stride)


def _shortcut(cin: int, cout: int, stride: int):
    if cin == cout and stride == 1:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(_Normalised):
    def __init__(
        self,
        num_classes: int = 1000,
        layers: tuple | list = (2, 2, 2, 2),
        bottleneck: bool = False,
        widths: tuple | list = (64, 128, 256, 512),
        small: bool = False,
        norm: str = "imagenet",
    ):
        super().__init__()
        if len(layers) != len(widths) or not layers or min(layers) < 1:
            raise FastSSLError(f"ResNet layers {list(layers)} must give >= 1 block for each of widths {list(widths)}")
        self.config = dict(
            num_classes=num_classes,
            layers=list(layers),
            bottleneck=bottleneck,
            widths=list(widths),
            small=small,
            norm=norm,
        )
        self._set_norm(norm)
        w0 = widths[0]
        if small:
            self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, w0, 7, 2, 3, bias=False),
                nn.BatchNorm2d(w0),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        block = _Bottleneck if bottleneck else _Basic
        stages, cin = [], w0
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            for b in range(n):
                stages.append(block(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w * block.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        h = self.stages(self.stem(self.normalise(x)))
        return self.fc(h.mean((2, 3)))


def _init(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# the named networks: name -> (class name in MODELS, its keywords)
NAMED = {
    "wrn-16-4": ("wrn", {"depth": 16, "widen": 4}),
    "wrn-40-4": ("wrn", {"depth": 40, "widen": 4}),
    "resnet-small": ("resnet", {"layers": [3, 3, 3], "widths": [16, 32, 64], "small": True, "norm": "cifar"}),
    "resnet18": ("resnet", {"layers": [2, 2, 2, 2]}),
    "resnet50": ("resnet", {"layers": [3, 4, 6, 3], "bottleneck": True}),
}

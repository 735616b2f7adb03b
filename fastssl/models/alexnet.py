"""AlexNet as in DeepCluster's code (Caron et al., ECCV 2018) and the paper, BatchNorm after every conv, with taps.

``AlexNet(num_classes)`` is the paper network for 224 px input: conv1 96x11x11 stride 4 pad 2,
conv2 256x5x5 pad 2, conv3 384, conv4 384, conv5 256 (3x3 pad 1), max-pool 3/2 after conv1,
conv2 and conv5, then dropout, FC 4096, ReLU, dropout, FC 4096, ReLU, FC to the task.

Small-input variant (``small=True``, for 32 or 64 px CIFAR-scale runs): conv1 becomes 5x5,
stride ``input_res // 32``, pad 2, so a 32 px input keeps 32x32 after conv1, 15x15 after the
first pool, 7x7 after the second (conv3..conv5 still see a 7x7 grid) and 3x3 after the last:
all five conv stages stay spatial and meaningful. ``width`` scales every conv's filter count
(``conv1_width`` overrides conv1 alone) and the FC widths, for CPU-sized runs.
``conv1_kernel`` / ``conv1_stride`` change conv1's geometry (padding ``kernel // 2``): with few
filters over a large kernel (48 over 11x11x3 values) a random conv1 keeps little of its input
and a learned one much more, the regime of the paper's conv1 (96 filters over 11x11x3).

Input is the batch contract (uint8, channels-last); normalisation happens here, on the device:
``x / 255``, minus the ImageNet mean, over its std, or, with ``sobel=True``, greyscale then the
two fixed Sobel filters (as DeepCluster).

``forward(x)`` gives logits; ``taps(x)`` the post-ReLU outputs of conv1..conv5 (before each
layer's pooling), what the linear probes read.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..checks import bad, check_range
from ..kernels.backend import GREY

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
BASE = (96, 256, 384, 384, 256)
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")  # the probed taps


@dataclass
class ModelConfig:
    """The AlexNet keyword arguments a recipe's ``[model]`` section sets."""

    small: bool = False  # the small-input variant (5x5 conv1) for 32 / 64 px inputs
    input_res: int = 224
    width: float = 1.0  # scales every conv's filter count and the FC widths
    conv1_width: int | None = None  # conv1 filters, overriding width for conv1 alone
    conv1_kernel: int | None = None  # conv1's kernel side (default: 11, small variant 5), padding kernel // 2
    conv1_stride: int | None = None  # conv1's stride (default: 4, small variant input_res // 32)
    fc_width: int | None = None
    sobel: bool = False  # greyscale + Sobel input instead of RGB (as DeepCluster)
    dropout: float = 0.5

    def check(self, where: str = "") -> None:
        check_range(f"{where}width", self.width, 0, 16, lo_open=True)
        check_range(f"{where}dropout", self.dropout, 0, 1, hi_open=True)
        for name in ("conv1_width", "fc_width"):
            v = getattr(self, name)
            if v is not None and not 1 <= v <= 65536:
                bad(f"{where}{name}", "must be in [1, 65536] (or absent)", v)
        for name in ("conv1_kernel", "conv1_stride"):
            v = getattr(self, name)
            if v is not None and not 1 <= v <= 64:
                bad(f"{where}{name}", "must be in [1, 64] (or absent)", v)
        if trunk_side(self.small, self.input_res, self.conv1_kernel, self.conv1_stride) < 1:
            bad(
                f"{where}input_res",
                f"is too small for the {'small' if self.small else 'paper'} AlexNet",
                self.input_res,
            )


def conv1_geometry(small: bool, input_res: int, kernel: int | None = None, stride: int | None = None):
    """conv1's (kernel, stride, padding): the paper's 11 / 4 / 2, the small variant's 5 /
    ``input_res // 32`` / 2, or the kernel and stride given, padded by ``kernel // 2``."""
    k, s, p = (5, max(1, input_res // 32), 2) if small else (11, 4, 2)
    if kernel is not None:
        k, p = kernel, kernel // 2
    return k, stride or s, p


def trunk_side(small: bool, input_res: int, conv1_kernel: int | None = None, conv1_stride: int | None = None) -> int:
    """Side of conv5's pooled output for a square input (< 1: the input is too small)."""
    k, s, p = conv1_geometry(small, input_res, conv1_kernel, conv1_stride)
    x = (input_res + 2 * p - k) // s + 1
    for _ in range(3):  # max-pools 3/2 after conv1, conv2 and conv5 (3x3 and 5x5 convs keep the side)
        x = (x - 3) // 2 + 1 if x >= 3 else 0
    return x


class StridedConv(nn.Conv2d):
    """A strided convolution computed, on the CPU, as the stride-1 convolution of its input's
    space-to-depth rearrangement (each ``s x s`` block of pixels becomes ``s * s`` channels;
    the kernel, zero-padded to a multiple of ``s``, is rearranged alike): the same sums over the
    same products, but a form oneDNN runs well. conv1 is the case: 3 input channels under an
    11x11 kernel at stride 2, whose weight gradient oneDNN computes several times slower than
    its forward; rearranged, 12 channels under 6x6 at stride 1. Taken under bf16 autocast only,
    where it was measured faster (the bf16 RotNet step on a CPU with AMX; in fp32 it was
    slower). Same parameters and checkpoints as ``nn.Conv2d``; CUDA runs the
    plain convolution, and so does the CPU with ``StridedConv.space_to_depth = False`` (the
    bench's baseline)."""

    space_to_depth = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        cpu_bf16 = self.space_to_depth and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if not cpu_bf16 or s == 1 or self.stride[1] != s or self.dilation != (1, 1) or self.groups != 1:
            return super().forward(x)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        n, c, h, w = x.shape
        h, w = h + 2 * ph, w + 2 * pw  # padded sides
        hs, ws = -(-h // s), -(-w // s)  # blocks along each side
        xs = nn.functional.pad(x, (pw, pw + ws * s - w, ph, ph + hs * s - h))
        xs = xs.permute(0, 2, 3, 1).reshape(n, hs, s, ws, s, c).permute(0, 1, 3, 2, 4, 5)
        xs = xs.reshape(n, hs, ws, s * s * c).permute(0, 3, 1, 2)  # channels-last (n, s*s*c, hs, ws)
        o, kbh, kbw = self.out_channels, -(-kh // s), -(-kw // s)
        k = nn.functional.pad(self.weight, (0, kbw * s - kw, 0, kbh * s - kh))
        k = k.view(o, c, kbh, s, kbw, s).permute(0, 3, 5, 1, 2, 4).reshape(o, s * s * c, kbh, kbw)
        out = nn.functional.conv2d(xs, k.contiguous(memory_format=torch.channels_last), self.bias)
        return out[:, :, : (h - kh) // s + 1, : (w - kw) // s + 1]


class AlexNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        *,
        small: bool = False,
        input_res: int = 224,
        width: float = 1.0,
        conv1_width: int | None = None,
        conv1_kernel: int | None = None,
        conv1_stride: int | None = None,
        fc_width: int | None = None,
        sobel: bool = False,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.config = {
            "num_classes": num_classes,
            "small": small,
            "input_res": input_res,
            "width": width,
            "conv1_width": conv1_width,
            "conv1_kernel": conv1_kernel,
            "conv1_stride": conv1_stride,
            "fc_width": fc_width,
            "sobel": sobel,
            "dropout": dropout,
        }
        ch = [max(8, int(round(c * width))) for c in BASE]
        if conv1_width:
            ch[0] = int(conv1_width)
        cin = 2 if sobel else 3
        k1, s1, p1 = conv1_geometry(small, input_res, conv1_kernel, conv1_stride)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        specs = [
            (cin, ch[0], k1, s1, p1),
            (ch[0], ch[1], 5, 1, 2),
            (ch[1], ch[2], 3, 1, 1),
            (ch[2], ch[3], 3, 1, 1),
            (ch[3], ch[4], 3, 1, 1),
        ]
        for i, o, k, s, p in specs:
            self.convs.append(StridedConv(i, o, k, s, p) if s > 1 else nn.Conv2d(i, o, k, s, p))
            self.bns.append(nn.BatchNorm2d(o))
        self.pool_after = (0, 1, 4)
        self.pool = nn.MaxPool2d(3, 2)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255, persistent=False)
        if sobel:
            gx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
            self.register_buffer("sobel_w", torch.stack([gx, gx.t()]).unsqueeze(1), persistent=False)
        with torch.no_grad():
            n = self._trunk(torch.zeros(1, cin, input_res, input_res)).numel()
        fc = fc_width or max(64, int(round(4096 * width)))
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(n, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, num_classes),
        )
        self.channels = ch
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0..255) images -> normalised float input."""
        x = x.float()
        if self.config["sobel"]:
            wr, wg, wb = GREY
            grey = (wr * x[:, 0:1] + wg * x[:, 1:2] + wb * x[:, 2:3]) / 255.0
            return nn.functional.conv2d(grey, self.sobel_w, padding=1)
        return (x - self.mean) / self.std

    def _trunk(self, x, taps: list | None = None):
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = torch.relu(bn(conv(x)))
            if taps is not None:
                taps.append(x)
            if i in self.pool_after:
                x = self.pool(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """conv5's pooled output for a batch (the head's input), flattened: (B, C * s * s)."""
        return torch.flatten(self._trunk(self.prepare(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._trunk(self.prepare(x))
        return self.head(torch.flatten(x, 1))

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        self._trunk(self.prepare(x), out)
        return out


def fold_bn(model: AlexNet) -> AlexNet:
    """A copy for evaluation with each BatchNorm folded into the conv before it (an identity in
    its place)."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(m.convs, m.bns, strict=True)):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
            m.bns[i] = nn.Identity()  # not an eps-0 BatchNorm: cuDNN refuses eps 0
    return m

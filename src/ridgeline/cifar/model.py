"""Page's ResNet-9 (DAWNBench, "How to train your ResNet" part 4), with a width multiplier.

prep conv 64 → layer1 conv 128 + pool + residual(2 convs) → layer2 conv 256 + pool
→ layer3 conv 512 + pool + residual(2 convs) → global max-pool → linear (no bias) → ×0.125.
Every conv is 3×3, bias-free and followed by BatchNorm and ReLU, which makes its weights
scale-invariant: the property the paper's flat directions rest on.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval


class ConvBN(nn.Sequential):
    """3×3 conv → BatchNorm → ReLU, optionally → 2×2 max-pool.

    Trick "ReLU after the pool": a pooled block runs conv → BN → pool → ReLU. The function is
    Page's (ReLU is monotone, so max∘relu = relu∘max, gradients included), but the ReLU and its
    backward touch 4× fewer elements: steps 1-2 % faster on a 2-core EPYC, and bf16 training
    is bit-identical (test_model.py, docs/throughput.md). State_dict keys are Page's order's.
    """

    def __init__(self, c_in: int, c_out: int, pool: bool = False):
        layers = [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            *([nn.MaxPool2d(2)] if pool else []),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class Residual(nn.Module):
    """x + f(x), with f two ConvBN blocks of the same width."""

    def __init__(self, c: int):
        super().__init__()
        self.res1 = ConvBN(c, c)
        self.res2 = ConvBN(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class ResNet9(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10, logit_scale: float = 0.125):
        super().__init__()
        c = [max(1, round(k * width)) for k in (64, 128, 256, 512)]
        self.prep = ConvBN(3, c[0])
        self.layer1 = nn.Sequential(ConvBN(c[0], c[1], pool=True), Residual(c[1]))
        self.layer2 = ConvBN(c[1], c[2], pool=True)
        self.layer3 = nn.Sequential(ConvBN(c[2], c[3], pool=True), Residual(c[3]))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = nn.Linear(c[3], num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.linear(self.pool(x).flatten(1)) * self.logit_scale


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each BatchNorm folded into the conv before it.

    Trick "conv-BN folded for evaluation": in eval mode BN is a per-channel affine map, so it
    can be merged into the conv's weights and a bias (torch.nn.utils.fuse_conv_bn_eval); the
    test pass then skips 8 BN ops a batch. The copy is in eval mode; ``model`` is untouched.
    """
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, ConvBN):
            cl = m[0].weight.is_contiguous(memory_format=torch.channels_last)
            conv = fuse_conv_bn_eval(m[0], m[1])  # keep the layout the model was given:
            conv.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            m[0], m[1] = conv, nn.Identity()
    return folded


def scale_invariant_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The convs whose output goes straight into BatchNorm: their loss is invariant to ‖w‖."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(width: float = 1.0) -> float:
    """Forward multiply-adds ×2 of the convs and the linear layer (BN/ReLU/pool ignored)."""
    c = [max(1, round(k * width)) for k in (64, 128, 256, 512)]
    convs = [  # (c_in, c_out, output spatial side)
        (3, c[0], 32), (c[0], c[1], 32), (c[1], c[1], 16), (c[1], c[1], 16),
        (c[1], c[2], 16), (c[2], c[3], 8), (c[3], c[3], 4), (c[3], c[3], 4),
    ]
    macs = sum(ci * co * 9 * s * s for ci, co, s in convs) + c[3] * 10
    return 2.0 * macs

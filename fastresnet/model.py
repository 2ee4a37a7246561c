"""The custom ResNet of the recipe: 8 convolutions, two residual blocks, 6.57 M parameters.

Convolutions carry no bias because every one is followed by BatchNorm, whose shift makes a
conv bias redundant. The network ends in raw logits: softmax lives in the loss
(`CrossEntropyLossFlat` applies it at predict time), so it is never applied twice.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["conv_bn", "Residual", "CustomResNet", "custom_resnet"]


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    "Conv 3x3 (stride 1, pad 1) → [MaxPool 2] → BN → ReLU: the one building block of the net."
    layers = [nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False)]
    if pool: layers.append(nn.MaxPool2d(2))  # pooling before BN, as the spec orders it
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    "out = x + R(x), where R is two conv-BN-ReLU blocks that keep the channel count."
    def __init__(self, c: int):
        super().__init__()
        self.res = nn.Sequential(conv_bn(c, c), conv_bn(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res(x)


class CustomResNet(nn.Sequential):
    """PrepLayer → Layer1 (+R1) → Layer2 → Layer3 (+R2) → MaxPool 4 → avg-pool → FC.

    `logit_scale` multiplies the logits (1.0 is the plain spec); a value below 1 keeps early
    logits small so the softmax does not saturate while BN statistics settle.
    `width` multiplies every channel count (1.0 is the spec; 0.25 or 0.5 make cheap proxies whose
    arithmetic scales with width²).
    `zero_init_residual` starts the last BatchNorm weight of each residual branch at 0, so both
    residual blocks begin as identities and the signal first flows through the 4-conv main path.
    """
    def __init__(self, n_out: int = 10, c_in: int = 3, logit_scale: float = 1.0, zero_init_residual: bool = False,
                 width: float = 1.0):
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))  # width 1: the spec
        super().__init__(
            conv_bn(c_in, c1),                                  # prep: 32x32
            nn.Sequential(conv_bn(c1, c2, pool=True), Residual(c2)),     # layer1: → 16x16
            conv_bn(c2, c3, pool=True),                         # layer2: → 8x8
            nn.Sequential(conv_bn(c3, c4, pool=True), Residual(c4)),     # layer3: → 4x4
            nn.MaxPool2d(4),                                    # → 1x1
            nn.AdaptiveAvgPool2d(1),                            # global average pool (spec)
            nn.Flatten(),
            nn.Linear(c4, n_out),
        )
        self.logit_scale, self.width = logit_scale, width
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Residual): nn.init.zeros_(m.res[-1][1].weight)  # res[-1] = (conv, BN, ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self[0][0].in_channels:
            raise ValueError(f"CustomResNet expects a batch of shape (N, {self[0][0].in_channels}, H, W); "
                             f"got {tuple(x.shape)}")
        out = super().forward(x)
        return out * self.logit_scale if self.logit_scale != 1.0 else out


def custom_resnet(n_out: int = 10, logit_scale: float = 1.0, zero_init_residual: bool = False,
                  width: float = 1.0) -> CustomResNet:
    "The recipe's model; a function so Learner-building code can pass it around by name."
    return CustomResNet(n_out=n_out, logit_scale=logit_scale, zero_init_residual=zero_init_residual, width=width)

"""The custom ResNet of the recipe: 8 convolutions, two residual blocks, 6.57 M parameters, with
named layers (`prep`, `layer1`, `layer2`, `layer3`, `pool`, `gap`, `flatten`, `fc`) as in the spec.

Convolutions carry no bias because every one is followed by BatchNorm, whose shift makes a
conv bias redundant. The network ends in raw logits: softmax lives in the loss (fastai's
`LabelSmoothingCrossEntropyFlat` or `CrossEntropyLossFlat`, whose activation `predict` applies), never twice.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from . import compat

__all__ = ["conv_bn", "Residual", "CustomResNet", "resnet_split"]


def conv_bn(c_in: int, c_out: int, pool: bool = False, bn_momentum: float = 0.1) -> nn.Sequential:
    "Conv 3x3 (stride 1, pad 1) → [MaxPool 2] → BN → ReLU: the one building block of the net."
    layers = [("conv", nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False))]
    if pool:
        layers.append(("pool", nn.MaxPool2d(2)))  # pooling before BN, as the spec orders it
    layers += [("bn", nn.BatchNorm2d(c_out, momentum=bn_momentum)), ("relu", nn.ReLU(inplace=True))]
    return nn.Sequential(OrderedDict(layers))


class Residual(nn.Module):
    "out = x + R(x), where R is two conv-BN-ReLU blocks that keep the channel count."
    def __init__(self, c: int, bn_momentum: float = 0.1):
        super().__init__()
        self.branch = nn.Sequential(OrderedDict(a=conv_bn(c, c, bn_momentum=bn_momentum),
                                                b=conv_bn(c, c, bn_momentum=bn_momentum)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _layer(c_in: int, c_out: int, bn_momentum: float) -> nn.Sequential:
    "X = conv_bn with pooling; out = X + R(X)."
    return nn.Sequential(OrderedDict(conv=conv_bn(c_in, c_out, pool=True, bn_momentum=bn_momentum),
                                     res=Residual(c_out, bn_momentum)))


class CustomResNet(nn.Sequential):
    """PrepLayer → Layer1 (+R1) → Layer2 → Layer3 (+R2) → MaxPool 4 → global average pool → FC.
    `width` multiplies every channel count (1.0: the spec); `bn_momentum` is torch's BatchNorm `momentum`."""
    def __init__(self, n_out: int = 10, c_in: int = 3, width: float = 1.0, bn_momentum: float = 0.1):
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))  # width 1: the spec
        m = bn_momentum
        super().__init__(OrderedDict(
            prep=conv_bn(c_in, c1, bn_momentum=m),              # 32x32
            layer1=_layer(c1, c2, m),                           # → 16x16
            layer2=conv_bn(c2, c3, pool=True, bn_momentum=m),   # → 8x8
            layer3=_layer(c3, c4, m),                           # → 4x4
            pool=nn.MaxPool2d(4),                               # → 1x1
            gap=nn.AdaptiveAvgPool2d(1),                        # the spec's global average pool: a no-op at 1x1,
                                                                # kept so the net ends in (N, c4) on larger inputs
            flatten=nn.Flatten(),
            fc=nn.Linear(c4, n_out),
        ))
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.prep.conv.in_channels:
            raise ValueError(f"CustomResNet expects a batch of shape (N, {self.prep.conv.in_channels}, H, W); "
                             f"got {tuple(x.shape)}")
        # No cast of fastai's TensorImage here (every operation on one goes through Python, ~0.1 ms each): a Learner's
        # batches reach the model as plain tensors already (fastai's CastToTensor), and torch.export traces this.
        return super().forward(x)

    def __setstate__(self, state):
        super().__setstate__(state)
        compat.check_named(self._modules, "This learner")  # a learner exported by 0.1
        compat.drop_retired({k: self.__dict__.pop(k) for k in ("logit_scale",) if k in self.__dict__}, "This learner")


def resnet_split(m: CustomResNet) -> list[list[nn.Parameter]]:
    "fastai's `splitter`: two layer groups, the body and the `fc` head (`freeze` trains the head alone)."
    return [[p for n, p in m.named_parameters() if not n.startswith("fc.")], list(m.fc.parameters())]

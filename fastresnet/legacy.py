"""Files from before CustomResNet's layers had names (positional children `0`..`7`): mapped onto the
named layout, weights unchanged. History kept out of the model class."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["name_positional_layers", "named_state_dict"]

_BLOCK_NAMES = {nn.Conv2d: "conv", nn.MaxPool2d: "pool", nn.BatchNorm2d: "bn", nn.ReLU: "relu"}


def name_positional_layers(model: nn.Module) -> None:
    "An unpickled positional CustomResNet renamed in place: `0` → `prep`, `1.1.res.0` → `layer1.res.branch.a`..."
    def name_block(seq: nn.Sequential):
        seq._modules = OrderedDict((_BLOCK_NAMES[type(m)], m) for m in seq._modules.values())
    model._modules = OrderedDict(zip(["prep", "layer1", "layer2", "layer3", "pool", "gap", "flatten", "fc"],
                                     model._modules.values()))
    name_block(model.prep)
    name_block(model.layer2)
    for layer in (model.layer1, model.layer3):
        conv, res = layer._modules.values()
        layer._modules = OrderedDict(conv=conv, res=res)
        name_block(conv)
        res._modules = OrderedDict(branch=res._modules.pop("res"))
        a, b = res.branch._modules.values()
        res.branch._modules = OrderedDict(a=a, b=b)
        for block in (a, b): name_block(block)
    model.__dict__.setdefault("width", model.fc.in_features / 512)
    model.__dict__.setdefault("logit_scale", 1.0)


def named_state_dict(state_dict: dict, model: nn.Module) -> dict:
    "Weights saved with positional keys (`1.1.res.0.0.weight`) under `model`'s named keys, by position."
    keys = list(state_dict)
    if not keys or not keys[0][:1].isdigit(): return state_dict
    own = model.state_dict()
    if len(own) != len(keys) or any(own[k].shape != state_dict[o].shape for k, o in zip(own, keys)):
        raise RuntimeError("These weights have positional keys (an older fastresnet) that do not line up "
                           "with this CustomResNet's layers: a different width or number of classes?")
    return OrderedDict((k, state_dict[o]) for k, o in zip(own, keys))

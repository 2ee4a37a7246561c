"""Adam for the recipe: torch's fused (or multi-tensor) kernels behind fastai's `OptimWrapper`, or fastai's own.

fastai's `Adam` runs a few Python-dispatched tensor operations per parameter and step (62 parameter
tensors here: about 21 ms a step on this CPU); torch's fused AdamW updates every parameter in one kernel
(about 3 ms; `benchmarks/bench_optimizer.py`). fastai's schedulers still drive it: `OptimWrapper` maps
fastai's `lr`, `mom` (beta1), `sqr_mom` (beta2) and `wd` onto torch's parameter-group keys, and its
`state_dict` is torch's, so a checkpoint resumes exactly. The arithmetic is the same as fastai's Adam
with `decouple_wd`: decay by `lr*wd`, bias-corrected moments, `eps` added to the root of the second moment.
"""
from __future__ import annotations

import torch
from fastai.optimizer import OptimWrapper
from fastai.torch_core import norm_bias_params

__all__ = ["TorchAdam", "decay_groups"]


def decay_groups(model: torch.nn.Module) -> list[list[torch.Tensor]]:
    """A fastai splitter: [decayed parameters, BatchNorm parameters and biases]. fastai marks the second kind
    `do_wd=False` per parameter when `wd_bn_bias` is off; a torch optimizer needs them in a group of their own."""
    skip = set(norm_bias_params(model, with_bias=True))
    ps = [p for p in model.parameters() if p.requires_grad]
    return [[p for p in ps if p not in skip], [p for p in ps if p in skip]]


class TorchAdam(OptimWrapper):
    """torch's `AdamW` (decoupled decay) or `Adam` (L2 in the gradient) as a fastai optimizer, with `fused` or
    `foreach` kernels. Parameter groups listed in `no_wd` keep zero weight decay whatever `wd` fastai sets."""
    def __init__(self, params, lr: float, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5,
                 wd: float = 0.0, decouple_wd: bool = True, impl: str = "fused", no_wd: tuple[int, ...] = ()):
        if impl not in ("fused", "foreach"): raise ValueError(f"impl must be 'fused' or 'foreach', got {impl!r}")
        opt = torch.optim.AdamW if decouple_wd else torch.optim.Adam
        super().__init__(params, opt=opt, lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=wd, **{impl: True})
        self.no_wd = tuple(no_wd)
        self.set_hyper("wd", wd)

    def _set_hyper(self, k, v):
        if k == "wd": v = [0.0 if i in self.no_wd else x for i, x in enumerate(v)]
        super()._set_hyper(k, v)

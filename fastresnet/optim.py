"""Adam through torch's fused (or foreach) AdamW kernels behind fastai's `OptimWrapper`; SGD the same way.

fastai's `Adam` runs a few Python-dispatched tensor operations per parameter and step (26 parameter tensors
here: about 21 ms a step on a 2-core CPU); torch's fused AdamW updates them all in one kernel (about 3 ms;
`benchmarks/bench_optimizer.py`). fastai's schedulers still drive it through fastai's hyper-parameter names
(`lr`, `mom`, `sqr_mom`, `wd`), and its state_dict is torch's, so a checkpoint resumes exactly. The arithmetic
is fastai's Adam: decay by `lr*wd` (or L2 in the gradient), bias-corrected moments, `eps` added to the root of
the second moment. `TorchSGD` is torch's SGD with (Nesterov) momentum and L2 decay, for the published SGD
baseline (the `page-sgd` recipe).

"""
from __future__ import annotations

import torch
from fastai.optimizer import OptimWrapper

__all__ = ["TorchAdam", "TorchSGD"]


def _two_groups(params) -> list[dict]:
    "Each fastai layer group as two torch groups: weights (`ndim > 1`), then BatchNorm parameters and biases."
    params = list(params)
    groups = [params] if isinstance(params[0], torch.Tensor) else [list(g) for g in params]
    return [{"params": [p for p in g if (p.ndim > 1) == decayed]} for g in groups for decayed in (1, 0)]


class _TorchOptim(OptimWrapper):
    """A torch optimizer as a fastai optimizer whose layer groups are two torch groups each (`_two_groups`).

    fastai sees its layer groups (the Learner's `splitter`: `freeze`, `fine_tune` and `slice` LRs work as
    usual). torch's kernels take one weight decay per parameter group, so the second group of each layer group
    gets `wd` only where fastai's `wd_bn_bias` left its parameters `do_wd`."""

    @property
    def hypers(self):
        return super().hypers[::2]          # one per layer group, as fastai expects

    @property
    def param_lists(self):
        pgs = self.opt.param_groups
        return [pgs[i]["params"] + pgs[i + 1]["params"] for i in range(0, len(pgs), 2)]

    def _set_hyper(self, k, v):
        both = [x for x in v for _ in (0, 1)]                 # layer group i → torch groups 2i and 2i+1
        if k == "wd":                                        # the 1-D group decays only if fastai says so
            both = [x if i % 2 == 0 or self._do_wd(i) else 0.0 for i, x in enumerate(both)]
        super()._set_hyper(k, both)

    def _do_wd(self, i: int) -> bool:
        ps = self.opt.param_groups[i]["params"]
        return all(self.state[p].get("do_wd", True) for p in ps)


class TorchAdam(_TorchOptim):
    "torch's `AdamW` (decoupled decay) or `Adam` (L2) with `fused` or `foreach` kernels, as a fastai optimizer."
    def __init__(self, params, lr: float, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5,
                 wd: float = 0.0, decouple_wd: bool = True, impl: str = "fused"):
        opt = torch.optim.AdamW if decouple_wd else torch.optim.Adam
        super().__init__(opt=opt(_two_groups(params), lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=wd,
                                 **{impl: True}))


class TorchSGD(_TorchOptim):
    """torch's `SGD` with momentum `mom` (fastai's name; torch's `momentum`), Nesterov's by default, and L2 decay
    `wd` added to the gradient (torch's SGD has no decoupled form), as a fastai optimizer."""
    def __init__(self, params, lr: float, mom: float = 0.9, wd: float = 0.0, nesterov: bool = True):
        super().__init__(opt=torch.optim.SGD(_two_groups(params), lr=lr, momentum=mom, weight_decay=wd,
                                             nesterov=nesterov, foreach=True))

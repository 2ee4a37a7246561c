"""Adam through torch's fused (or foreach) AdamW kernels behind fastai's `OptimWrapper`.

fastai's `Adam` runs a few Python-dispatched tensor operations per parameter and step (26 parameter
tensors here: about 21 ms a step on a 2-core CPU); torch's fused AdamW updates them all in one kernel
(about 3 ms; `benchmarks/bench_optimizer.py`). fastai's schedulers still drive it through fastai's
hyper-parameter names (`lr`, `mom`, `sqr_mom`, `wd`), and its state_dict is torch's, so a checkpoint
resumes exactly. The arithmetic is fastai's Adam: decay by `lr*wd` (or L2 in the gradient), bias-corrected
moments, `eps` added to the root of the second moment.
"""
from __future__ import annotations

import torch
from fastai.optimizer import OptimWrapper

__all__ = ["TorchAdam"]


class TorchAdam(OptimWrapper):
    """torch's `AdamW` (decoupled decay) or `Adam` (L2) with `fused` or `foreach` kernels, as a fastai optimizer.

    fastai sees its layer groups (the Learner's `splitter`: `freeze`, `fine_tune` and `slice` LRs work as
    usual). torch's kernels take one weight decay per parameter group, so each layer group is held as two
    torch groups, weights (`ndim > 1`) and BatchNorm parameters and biases (`ndim <= 1`); the second gets
    `wd` only where fastai's `wd_bn_bias` left them `do_wd`."""
    def __init__(self, params, lr: float, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5,
                 wd: float = 0.0, decouple_wd: bool = True, impl: str = "fused"):
        params = list(params)
        groups = [params] if isinstance(params[0], torch.Tensor) else [list(g) for g in params]
        torch_groups = [{"params": [p for p in g if (p.ndim > 1) == decayed]} for g in groups for decayed in (1, 0)]
        opt = torch.optim.AdamW if decouple_wd else torch.optim.Adam
        super().__init__(opt=opt(torch_groups, lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=wd, **{impl: True}))

    @property
    def hypers(self): return super().hypers[::2]          # one per layer group, as fastai expects

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

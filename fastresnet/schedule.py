"""The recipe's one-cycle variant and the rule that turns an LR range test into LRMIN/LRMAX.

fastai's `fit_one_cycle` warms up over `pct_start` and then anneals to `lr_max/div_final`, far
below its start. The recipe instead climbs from LRMIN to LRMAX by the end of epoch `peak_epoch`
and returns to exactly LRMIN at the last step: no annihilation phase.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from fastai.callback.schedule import ParamScheduler, SchedCos, SchedLin, SuggestionMethod, combine_scheds
from fastai.learner import Learner
from fastcore.basics import patch, store_attr
from fastcore.foundation import L

__all__ = ["PeakScheduler", "peak_scheds", "fit_one_cycle_peak", "LRBounds", "lr_bounds_from_finder",
           "run_lr_find", "min_loss", "RULES"]

RULES = ("min_loss", "minimum", "valley", "steep", "slide")  # lr_find points LRMAX can derive from


def min_loss(lrs, losses, num_it):
    "The LR of the lowest smoothed loss, as a fastai suggestion function (fastai's `minimum` is this / 10)."
    i = int(losses.argmin())
    return float(lrs[i]), (float(lrs[i]), float(losses[i]))


def _suggestion_func(name: str):
    return min_loss if name == "min_loss" else getattr(SuggestionMethod, name.capitalize())


class PeakScheduler(ParamScheduler):
    """fastai's `ParamScheduler`, positioned by optimizer step: step `peak_epoch * n_iter` is the peak
    and the last step sits exactly at the end (fastai's `pct_train` stops one step short). Sized in
    `before_fit`, after fastai's distributed callback (order 11) has wrapped the loaders."""
    def __init__(self, lr_min: float, lr_max: float, peak_epoch: int, shape: str = "linear",
                 moms: tuple[float, float, float] | None = None):
        store_attr()
        super().__init__(peak_scheds(lr_min, lr_max, 0.5, shape, moms))  # the keys now, the peak once steps are known

    def before_fit(self):
        n_iter = len(self.dls.train)
        self.n_steps = self.n_epoch * n_iter
        self.scheds = peak_scheds(self.lr_min, self.lr_max, self.peak_epoch * n_iter / max(self.n_steps - 1, 1),
                                  self.shape, self.moms)
        super().before_fit()

    def before_batch(self):
        step = round(self.pct_train * self.n_steps)  # pct_train is exact after a resume; train_iter is not
        self._update_val(step / max(self.n_steps - 1, 1))


def peak_scheds(lr_min: float, lr_max: float, peak_frac: float, shape: str = "linear",
                moms: tuple[float, float, float] | None = None) -> dict:
    "Schedules over [0, 1]: LR up from `lr_min` to `lr_max` at `peak_frac`, then back; beta1 moves the other way."
    sched = {"linear": SchedLin, "cos": SchedCos}[shape]
    pcts = [peak_frac, 1 - peak_frac]
    out = {"lr": combine_scheds(pcts, [sched(lr_min, lr_max), sched(lr_max, lr_min)])}
    if moms is not None and moms[0] != moms[1]:
        out["mom"] = combine_scheds(pcts, [sched(moms[0], moms[1]), sched(moms[1], moms[2])])
    return out


@patch
def fit_one_cycle_peak(self: Learner, n_epoch: int, lr_min: float, lr_max: float, peak_epoch: int = 5,
                       shape: str = "linear", moms: tuple[float, float, float] | None = None,
                       wd: float | None = None, cbs=None, start_epoch: int = 0) -> None:
    """One cycle that peaks at the end of epoch `peak_epoch` and ends at `lr_min` (no annihilation).
    `moms` (Adam's beta1 at start, peak, end) defaults to the Learner's, as in `fit_one_cycle`.
    `start_epoch` continues a run: the schedule is positioned as if epochs before it had run."""
    if not 0 < peak_epoch < n_epoch: raise ValueError(f"peak_epoch must be in 1..{n_epoch - 1}, got {peak_epoch}")
    if not 0 < lr_min < lr_max: raise ValueError(f"need 0 < lr_min < lr_max, got {lr_min}, {lr_max}")
    if self.opt is None: self.create_opt()
    sched = PeakScheduler(lr_min, lr_max, peak_epoch, shape, moms if moms is not None else self.moms)
    self.fit(n_epoch, lr=lr_min, wd=wd, cbs=L(sched) + L(cbs), start_epoch=start_epoch)


class LRBounds(NamedTuple):
    lr_min: float
    lr_max: float
    suggestion: float  # the lr_find point LRMAX was derived from
    rule: str

    @classmethod
    def given(cls, lr_max: float, lr_min: float | None = None, min_div: float = 100.0) -> "LRBounds":
        "Bounds passed in rather than found: LRMIN defaults to LRMAX / `min_div`."
        return cls(lr_min or lr_max / min_div, lr_max, lr_max, "given")

    def describe(self) -> str:
        return (f"LRMAX = {self.lr_max:.3g} ({self.rule} suggestion {self.suggestion:.3g} / "
                f"{self.suggestion / self.lr_max:.3g}), LRMIN = {self.lr_min:.3g}")


def lr_bounds_from_finder(suggestion: float, rule: str, max_div: float, min_div: float) -> LRBounds:
    "The documented rule: LRMAX = suggestion / max_div, LRMIN = LRMAX / min_div."
    if not np.isfinite(suggestion) or suggestion <= 0:
        raise ValueError(f"The LR range test gave no usable {rule!r} point ({suggestion}).")
    lr_max = suggestion / max_div
    return LRBounds(lr_max / min_div, lr_max, suggestion, rule)


def run_lr_find(learn: Learner, rule: str = "min_loss", max_div: float = 10.0, min_div: float = 100.0,
                num_it: int = 100, start_lr: float = 1e-6, end_lr: float = 10.0) -> tuple[LRBounds, dict]:
    """`learn.lr_find()` on the training pipeline, asked for every point the rule may use, then the
    bounds rule. fastai's finder saves and reloads the model and optimizer, so training starts from
    the same weights afterwards. Returns the bounds and every point (for the plot and the record);
    a point fastai cannot compute (too few batches) is NaN."""
    funcs = [_safe(_suggestion_func(n), n) for n in RULES]
    found = learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it, show_plot=False, suggest_funcs=funcs)
    found = {n: float(v) for n, v in found._asdict().items()}
    return lr_bounds_from_finder(found[rule], rule, max_div, min_div), found


def _safe(func, name: str):
    "A suggestion function that gives NaN instead of failing on a curve too short for it."
    def suggest(lrs, losses, num_it):
        try: return func(lrs, losses, num_it)
        except Exception: return float("nan"), (float("nan"), float("nan"))
    suggest.__name__ = name
    return suggest

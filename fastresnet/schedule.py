"""The recipe's one-cycle variant and the rule that turns an LR range test into LRMIN/LRMAX.

fastai's `fit_one_cycle` warms up over `pct_start` and then anneals to `lr_max/div_final`, far
below its start. The recipe instead climbs from LRMIN to LRMAX by the end of epoch `peak_epoch`
and returns to exactly LRMIN at the last step: no annihilation phase.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from fastai.callback.schedule import ParamScheduler, SchedCos, SchedLin, SuggestionMethod, combine_scheds
from fastai.learner import Learner
from fastcore.basics import patch
from fastcore.foundation import L

__all__ = ["PeakScheduler", "peak_scheds", "fit_one_cycle_peak", "LRBounds", "lr_bounds_from_finder",
           "run_lr_find", "suggestions", "SUGGESTIONS"]

SUGGESTIONS = {"minimum": SuggestionMethod.Minimum, "valley": SuggestionMethod.Valley,
               "steep": SuggestionMethod.Steep, "slide": SuggestionMethod.Slide}


class PeakScheduler(ParamScheduler):
    """fastai's `ParamScheduler`, positioned by optimizer step: step `peak_epoch * n_iter` is the peak
    and the last step sits exactly at the end (fastai's `pct_train` stops one step short). Steps
    per epoch are read from the running loader, which under a distributed launch is the wrapped one."""
    def __init__(self, lr_min: float, lr_max: float, peak_epoch: int, shape: str = "linear",
                 moms: tuple[float, float, float] | None = None):
        self.spec, self.n_steps = (lr_min, lr_max, peak_epoch, shape, moms), None
        super().__init__(peak_scheds(lr_min, lr_max, 0.5, shape, moms))  # keys now, the peak once steps are known

    def before_batch(self):
        n_steps = self.n_epoch * self.n_iter
        if n_steps != self.n_steps:
            lr_min, lr_max, peak_epoch, shape, moms = self.spec
            self.n_steps = n_steps
            self.scheds = peak_scheds(lr_min, lr_max, peak_epoch * self.n_iter / max(n_steps - 1, 1), shape, moms)
        step = round(self.pct_train * n_steps)  # pct_train is exact after a resume; train_iter is not
        self._update_val(step / max(n_steps - 1, 1))


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
                       shape: str = "linear", moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95),
                       wd: float | None = None, cbs=None, start_epoch: int = 0) -> None:
    """One cycle that peaks at the end of epoch `peak_epoch` and ends at `lr_min` (no annihilation).
    `start_epoch` continues a run: the schedule is positioned as if epochs before it had run."""
    if not 0 < peak_epoch < n_epoch: raise ValueError(f"peak_epoch must be in 1..{n_epoch - 1}, got {peak_epoch}")
    if not 0 < lr_min < lr_max: raise ValueError(f"need 0 < lr_min < lr_max, got {lr_min}, {lr_max}")
    if self.opt is None: self.create_opt()
    sched = PeakScheduler(lr_min, lr_max, peak_epoch, shape, moms)
    self.fit(n_epoch, lr=lr_min, wd=wd, cbs=L(sched) + L(cbs), start_epoch=start_epoch)


class LRBounds(NamedTuple):
    lr_min: float
    lr_max: float
    suggestion: float  # the lr_find suggestion LRMAX was derived from
    rule: str

    def describe(self) -> str:
        return (f"LRMAX = {self.lr_max:.3g} ({self.rule} suggestion {self.suggestion:.3g} / "
                f"{self.suggestion / self.lr_max:.3g}), LRMIN = {self.lr_min:.3g}")


def lr_bounds_from_finder(suggestion: float, rule: str, max_div: float, min_div: float) -> LRBounds:
    "The documented rule: LRMAX = suggestion / max_div, LRMIN = LRMAX / min_div."
    if not np.isfinite(suggestion) or suggestion <= 0:
        raise ValueError(f"The LR range test gave no usable {rule!r} point ({suggestion}); pass --lr-max.")
    lr_max = suggestion / max_div
    return LRBounds(lr_max / min_div, lr_max, suggestion, rule)


def run_lr_find(learn: Learner, rule: str = "min_loss", max_div: float = 10.0, min_div: float = 100.0,
                num_it: int = 100, start_lr: float = 1e-6, end_lr: float = 10.0) -> tuple[LRBounds, dict]:
    """`learn.lr_find()` on the training pipeline, then the bounds rule. fastai's finder saves and
    reloads the model and optimizer, so training starts from the same weights afterwards.
    Returns the bounds and every suggestion (for the plot and the run record)."""
    learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it, show_plot=False, suggest_funcs=None)
    found = suggestions(learn.recorder.lrs, learn.recorder.losses, num_it)
    return lr_bounds_from_finder(found[rule], rule, max_div, min_div), found


def suggestions(lrs, losses, num_it: int) -> dict[str, float]:
    """The LR of the lowest smoothed loss (`min_loss`) and fastai's four suggestions, computed as
    `lr_find` does (first 10% and last 5 points dropped, cut at the first NaN); NaN where one
    cannot be computed. fastai's `minimum` is `min_loss / 10`."""
    lrs, losses = torch.tensor(lrs[num_it // 10:-5]), torch.tensor([float(x) for x in losses[num_it // 10:-5]])
    bad = torch.nonzero(~torch.isfinite(losses)).flatten()
    if len(bad): lrs, losses = lrs[:bad[0]], losses[:bad[0]]
    out = {"min_loss": float(lrs[losses.argmin()]) if len(losses) else float("nan")}  # the bottom of the curve
    for name, func in SUGGESTIONS.items():
        try: out[name] = float(func(lrs, losses, num_it)[0])
        except Exception: out[name] = float("nan")  # too few points for this method
    return out

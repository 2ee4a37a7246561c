"""The recipe's one cycle, and LRMIN/LRMAX from fastai's LR range test.

fastai's `fit_one_cycle` warms up over `pct_start` and then anneals to `lr_max/div_final`, far below
its start. The recipe climbs from LRMIN to LRMAX by the end of epoch `peak_epoch` and comes back to
exactly LRMIN at the last step: no annihilation. As data, cifar10-fast style:
`lr(step) = interp(step, [0, peak_epoch * n_iter, n_epoch * n_iter - 1], [LRMIN, LRMAX, LRMIN])`.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import fields
from typing import NamedTuple

import numpy as np
from fastai.callback import schedule as fastai_schedule
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastcore.basics import patch, store_attr
from fastcore.foundation import L

from .config import Recipe, check_cycle

__all__ = ["piecewise", "OneCyclePeak", "fit_one_cycle_peak", "fine_tune_from", "LRBounds", "range_test_batches",
           "find_bounds", "lr_bounds"]


def piecewise(step: float, knots: list[float], values: list[float]) -> float:
    "`values` joined by straight lines between `knots` (cifar10-fast's `PiecewiseLinear`)."
    return float(np.interp(step, knots, values))


class OneCyclePeak(Callback):
    """Set Adam's LR (and beta1, against it) every training step from the step number alone, so a resumed fit
    lands on the same values; `hps` records this fit's as applied, as fastai's `ParamScheduler` does."""
    order = 60  # where fastai's ParamScheduler sits: after a distributed wrapper has sized the loaders
    def __init__(self, lr_min: float, lr_max: float, peak_epoch: int,
                 moms: tuple[float, float, float] | None = None, lr_end: float | None = None):
        store_attr(but="lr_end")
        self.lr_end = lr_min if lr_end is None else lr_end    # the spec ends where it began

    def before_fit(self):
        self.hps = {"lr": [], "mom": []}

    def before_batch(self):
        if not self.training:
            return
        n = self.n_iter                                    # training batches an epoch
        knots, step = [0, self.peak_epoch * n, self.n_epoch * n - 1], self.epoch * n + self.iter
        hp = {"lr": piecewise(step, knots, [self.lr_min, self.lr_max, self.lr_end])}
        if self.moms is not None:
            hp["mom"] = piecewise(step, knots, self.moms)
        self.opt.set_hypers(**hp)
        for k in self.hps:
            self.hps[k].append(self.opt.hypers[-1][k])  # as applied: beta1 too where the cycle leaves it alone

    def after_fit(self):
        self.recorder.hps = self.hps      # where fastai's `plot_sched` looks


@patch
def fit_one_cycle_peak(self: Learner, n_epoch: int, lr_min: float, lr_max: float, peak_epoch: int = 5, cbs=None,
                       start_epoch: int = 0, lr_end: float | None = None) -> None:
    """One cycle: `lr_min` → `lr_max` at the end of epoch `peak_epoch` → `lr_min` (or `lr_end`), beta1 by the
    Learner's `moms` as in `fit_one_cycle`; `start_epoch` continues an interrupted fit."""
    check_cycle(n_epoch, peak_epoch, lr_min, lr_max, lr_end)
    moms = tuple(self.moms)
    sched = OneCyclePeak(lr_min, lr_max, peak_epoch, moms if moms[0] != moms[1] else None, lr_end)
    self.fit(n_epoch, lr=lr_min, cbs=L(sched) + L(cbs), start_epoch=start_epoch)


@patch
def fine_tune_from(self: Learner, epochs: int, base_lr: float, freeze_epochs: int = 1, start_epoch: int = 0,
                   cbs=None, **kwargs) -> None:
    """fastai's `fine_tune`, with its defaults, begun at `start_epoch` of its two fits together (the resume
    fastai's lacks); `epoch_offset` and `epoch_total` tell the run's callbacks where they are."""
    d = {k: p.default for k, p in inspect.signature(Learner.fine_tune).parameters.items()}  # fastai's own defaults
    lr_mult, pct_start, div = d["lr_mult"], d["pct_start"], d["div"]
    try:
        self.epoch_total = freeze_epochs + epochs
        if start_epoch < freeze_epochs:
            self.epoch_offset = 0
            if start_epoch == 0:
                self.freeze()  # fastai's freeze also clears the optimizer state ...
            else:
                self.opt.freeze_to(-1)         # ... which a resume mid-phase has just restored: keep it
            self.fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99, cbs=cbs, start_epoch=start_epoch,
                               **kwargs)
        self.epoch_offset = freeze_epochs
        if start_epoch <= freeze_epochs:
            self.unfreeze()
        else:
            self.opt.freeze_to(0)
        self.fit_one_cycle(epochs, slice(base_lr / 2 / lr_mult, base_lr / 2), pct_start=pct_start, div=div, cbs=cbs,
                           start_epoch=max(0, start_epoch - freeze_epochs), **kwargs)
    finally:
        for k in ("epoch_offset", "epoch_total"):
            self.__dict__.pop(k, None)


class LRBounds(NamedTuple):
    lr_min: float
    lr_max: float
    rule: str  # the lr_find suggestion LRMAX is, or "given"

    def describe(self) -> str:
        return f"LRMAX = {self.lr_max:.3g} ({self.rule}), LRMIN = {self.lr_min:.3g}"


RULES = next(f for f in fields(Recipe) if f.name == "lr_rule").metadata["choices"]  # fastai's suggestion functions


MIN_RANGE_TEST = 30  # batches: enough for every suggestion and for the turn-up check's 20 points after fastai's cut


def range_test_batches(r: Recipe, batches_per_epoch: int) -> int:
    "The range test's length: `lr_find_iters` batches, cut to `lr_find_passes` passes over the data (30 at least)."
    passes = math.ceil(r.lr_find_passes * batches_per_epoch)
    return min(r.lr_find_iters, max(MIN_RANGE_TEST, passes))


def find_bounds(learn: Learner, r: Recipe, show_plot: bool = False) -> tuple[LRBounds, dict]:
    """`learn.lr_find()` on the training pipeline: LRMAX = fastai's `lr_rule` suggestion, LRMIN = LRMAX /
    `lr_min_div`. Also returns every suggestion (NaN where the curve is too short for one). fastai's finder
    restores the model and optimizer afterwards, so training starts from the same weights."""
    num_it = range_test_batches(r, len(learn.dls.train))
    suggest = [_suggestion(n, refuse_still_falling=n == r.lr_rule == "minimum") for n in RULES]
    try:
        found = learn.lr_find(r.lr_find_start, r.lr_find_end, num_it, show_plot=show_plot, suggest_funcs=suggest)
    finally:
        with contextlib.suppress(OSError):
            (learn.path / learn.model_dir).rmdir()  # the finder's, if it left it empty
    found = {n: float(v) for n, v in found._asdict().items()}
    lr_max = found[r.lr_rule]
    if not np.isfinite(lr_max) or lr_max <= 0:
        raise ValueError(f"The LR range test gave no usable {r.lr_rule!r} point ({lr_max}).")
    return LRBounds(lr_max / r.lr_min_div, lr_max, r.lr_rule), found


@patch
def lr_bounds(self: Learner, show_plot: bool = True) -> LRBounds:
    """The recipe's range test in a notebook, as `fastresnet train` runs it, with fastai's plot.

        b = learn.lr_bounds()
        learn.fit_one_cycle_peak(24, b.lr_min, b.lr_max, peak_epoch=5)"""
    r = getattr(self, "recipe", None) or Recipe()  # a Learner of recipe_learner's carries its settings
    return find_bounds(self, r, show_plot)[0]


def _suggestion(name: str, refuse_still_falling: bool = False):
    """fastai's suggestion function `name`, giving NaN where the curve is too short for it. With
    `refuse_still_falling` (the `minimum` rule), a curve whose loss has not turned up is an error instead."""
    func = getattr(fastai_schedule, name)
    def suggest(lrs, losses, num_it):  # the points fastai reads: its cut of the first tenth, the last 5 and any NaN
        if refuse_still_falling:
            _check_turned_up(lrs, losses)
        try:
            return func(lrs, losses, num_it)
        except Exception:
            return float("nan"), (float("nan"), float("nan"))
    suggest.__name__ = name
    return suggest


def _check_turned_up(lrs, losses) -> None:
    """The `minimum` rule needs the loss to turn up before the test's end: its lowest point before the last tenth
    (of at least 20 points). A curve still falling gives an LRMAX far too high (seen once at the width-0.25 proxy:
    LRMAX 0.2, and training stuck at 16-27% accuracy)."""
    if len(losses) < 20:
        return  # too short a test to tell (the default's 100 batches keep 85 points)
    low = int(np.argmin(losses))
    if low >= len(losses) - len(losses) // 10:
        lr = float(lrs[low])
        raise ValueError(f"The LR range test's loss was still falling near its end (lowest at LR {lr:.3g}, "
                         f"in the last tenth of the test), so the 'minimum' rule would give an LRMAX far too high "
                         f"({lr / 10:.3g}). Run the test again with another seed, or another rule (lr_rule).")

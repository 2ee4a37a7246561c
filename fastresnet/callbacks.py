"""The recipe's callbacks beside fastai's: a head that must fit the data, the plain test loss beside a smoothed
training loss, an average of the weights, a test pass every N epochs, a loud stop on divergence, and one line an
epoch where the output is not a terminal."""
from __future__ import annotations

import contextlib
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelValidException
from fastai.learner import Learner

from .config import UserError
from .device import SYNC_EVERY, unwrap
from .folder import CHECKPOINT

__all__ = ["HeadFitsData", "PlainTestLoss", "EMA", "ValidEvery", "StopOnNaN", "plain_output",
           "RangeTestLines"]


class HeadFitsData(Callback):
    """Refuse to train a head on data of another class count: `load_learner(pkl)` with new `dls` of other classes
    keeps the old head (fastai swaps no head), which would train or fail in confusing ways."""
    def before_fit(self):
        fc, n_cls = getattr(unwrap(self.model), "fc", None), len(self.dls.vocab)  # CustomResNet's head, if it is one
        n_out = getattr(fc, "out_features", n_cls)
        if n_out != n_cls:
            raise UserError(f"The model's head has {n_out} outputs but the data has {n_cls} classes. To train on "
                            "new classes, start from the model with a new head: recipe_learner(data, init=MODEL) "
                            "in Python, or fastresnet train --data DATA --init MODEL.")


class PlainTestLoss(Callback):
    """The test loss as plain cross-entropy while the Learner's `loss_func` (the training loss) is smoothed:
    smoothed losses cannot fall below ~0.5 nats and do not compare across smoothing settings. Covers the
    Recorder's `valid_loss` and `get_preds(with_loss=True)` (top losses)."""
    order = -1  # before the Recorder (50) and GatherPredsCallback (0) read `learn.loss`
    def after_loss(self):
        if self.training or not self.yb:
            return          # no labels (test_dl, predict): no loss
        reduction = getattr(self.loss_func, "reduction", "mean")  # fastai's get_preds asks for 'none'
        self.learn.loss = F.cross_entropy(self.pred.float(), self.y.long(), reduction=reduction)


class EMA(Callback):
    """An exponential moving average of the weights and BatchNorm statistics: torch's `AveragedModel` with
    `get_ema_multi_avg_fn(decay)` and `use_buffers=True` (torch's advice for BatchNorm), updated after every
    step from epoch `warmup` on. After the fit the model takes the average, so the test, the export and the
    weights file use it; `state` (a checkpoint's) continues an interrupted fit."""
    order = 55  # before RunCheckpoint (60), which saves `avg` with each epoch
    def __init__(self, decay: float, warmup: int = 1, state: dict | None = None):
        self.decay, self.warmup, self.state = decay, warmup, state

    def before_fit(self):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        self.avg = AveragedModel(unwrap(self.model), multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        if self.state is not None:
            self.avg.load_state_dict(self.state)

    def after_step(self):
        if self.epoch >= self.warmup:
            self.avg.update_parameters(unwrap(self.model))

    def after_fit(self):
        if self.avg.n_averaged > 0:
            unwrap(self.model).load_state_dict(self.avg.module.state_dict())


class ValidEvery(Callback):
    "Skip the test-set pass except every `n` epochs and after the last (n=0: the last only): for CPU proxies."
    order = 0  # fastai's default: cancelling a validation needs no other callback's work first
    def __init__(self, n: int):
        self.n = n

    def before_validate(self):
        last = self.epoch == self.n_epoch - 1
        if not last and (self.n == 0 or (self.epoch + 1) % self.n):
            raise CancelValidException()


class StopOnNaN(Callback):
    """Stop within SYNC_EVERY batches of the first non-finite training loss, and always before the epoch's
    checkpoint, with an error naming the epoch, batch and LR. The check is a flag on the device, read
    every SYNC_EVERY batches and after each epoch's training, so the host never waits on it per batch."""
    order = -5  # first: a non-finite loss stops the fit before any callback records or saves the step
    def before_fit(self):
        self.first, self.start = None, None  # the first bad step (-1 while none); the first step
    def after_batch(self):
        if not self.training:
            return
        step = self.epoch * self.n_iter + self.iter
        if self.start is None:
            self.start = step  # a resumed fit starts past 0; the Recorder's `lrs` start here
        bad = torch.where(torch.isfinite(self.loss.detach()), -1, step)
        self.first = bad if self.first is None else torch.where(self.first >= 0, self.first, bad)
        if (self.iter + 1) % SYNC_EVERY == 0:
            self._check()
    def after_train(self):
        self._check()

    def _check(self):
        step = int(self.first) if self.first is not None else -1
        if step < 0:
            return
        lrs = self.recorder.lrs  # fastai's record of each trained step's LR; the Recorder (order 50) logs after us
        lr = lrs[step - self.start] if step - self.start < len(lrs) else self.opt.hypers[-1]["lr"]
        kept = ("The checkpoint of the last completed epoch is kept." if (Path(self.path) / CHECKPOINT).is_file()
                else "No epoch had completed, so there is no checkpoint yet.")
        raise UserError(f"Training diverged: the loss became non-finite in epoch {step // self.n_iter + 1} "
                        f"(batch {step % self.n_iter + 1}) at LR {lr:.4g}. {kept} Try a smaller LRMAX, for "
                        f"example {lr / 3:.3g}.", hint=f"(--lr-max {lr / 3:.3g})")


@contextlib.contextmanager
def plain_output(learn: Learner):
    """Progress bars on a terminal; when the output goes to a file or a pipe, no bars (their carriage
    returns make a log unreadable) and one line per epoch instead."""
    if sys.stdout.isatty():
        yield
        return
    old, learn.logger = learn.logger, partial(_epoch_line, learn)
    try:
        with learn.no_bar(), learn.added_cbs(RangeTestLines()):
            yield
    finally:
        learn.logger = old


class RangeTestLines(Callback):
    "The LR range test's progress as a line a quarter of the way, where no bar is drawn: minutes on a CPU."
    order = 51  # after the Recorder: the batch's smoothed loss is in
    def after_batch(self):
        finder = getattr(self.learn, "lr_finder", None)
        if finder is None or not self.training or self.train_iter % max(1, finder.num_it // 4):
            return
        print(f"  range test: batch {self.train_iter}/{finder.num_it}, LR {self.opt.hypers[-1]['lr']:.3g}, "
              f"loss {float(self.smooth_loss):.4f}", flush=True)


def _epoch_line(learn: Learner, log) -> None:
    "fastai's per-epoch record as one line: `epoch 3/24  train_loss 1.2345 ... time 00:03`."
    rec = learn.recorder
    names = [n for n in rec.metric_names[1:-1] if not (rec.cancel_valid and n.startswith("valid_"))]
    vals = list(log[1:-1])
    parts = [f"{n} {v:.4f}" for n, v in zip(names, vals)]
    off, total = getattr(learn, "epoch_offset", 0), getattr(learn, "epoch_total", learn.n_epoch)  # fine_tune: 2 fits
    print(f"epoch {log[0] + 1 + off}/{total}  " + "  ".join(parts) + f"  time {log[-1]}", flush=True)

"""Resume: what a checkpoint holds, and how a run continues from it to the weights of an uninterrupted run.

After every epoch `RunCheckpoint` saves the weights, the optimizer, every random stream, the metrics so far,
the schedule as applied and the EMA average to `checkpoint.pth` (`weights_only` loadable: tensors and plain
values); `open_run` reads a run folder back, `restore` puts a checkpoint into a new Learner of the same recipe
and data, and `MuteSkippedEpochs` keeps fastai from printing the epochs a resumed fit passes through."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler
from fastai.learner import Learner
from fastcore.basics import first, noop
from fastcore.foundation import L

from . import distributed as dist
from .config import Recipe, UserError, load_settings
from .device import unwrap
from .folder import (CHECKPOINT, LR_BOUNDS, RUN_JSON, SETTINGS, SPLIT, atomic_torch_save, check_zip, read_json,
                     read_json_or_none, set_status, write_metrics)
from .schedule import LRBounds, OneCyclePeak

__all__ = ["RunCheckpoint", "MuteSkippedEpochs", "open_run", "restore", "load_checkpoint", "rng_state", "set_rng_state",
           "to_plain"]


class RunCheckpoint(Callback):
    """After every epoch: append the epoch's row to the metrics history, write `metrics.csv` / `metrics.json` /
    `schedule.json`, and save model + optimizer + RNG + history + schedule (+ the `ema` callback's average) to
    `checkpoint.pth`. The run's schedule is its earlier fits' and sessions' steps followed by the record the fit's
    scheduler keeps (the recipe's one cycle, or fastai's `ParamScheduler` in `fine_tune`): the one record there is."""
    order = 60  # after the Recorder (50) has the epoch's losses and metrics

    def __init__(self, run_dir: Path, history: list[dict] | None = None, smooth_loss: dict | None = None,
                 hps: dict | None = None, clock: float | None = None, ema: Callback | None = None):
        self.run_dir, self.history, self.smooth, self.ema = Path(run_dir), list(history or []), smooth_loss, ema
        self.earlier = {k: list(v) for k, v in (hps or {"lr": [], "mom": []}).items()}  # steps of earlier fits
        self.clock = clock  # time.time() of the run's start, moved on by the time its earlier sessions ran
        self.skipped = False

    def before_fit(self):
        "On resume, continue the Recorder's smoothed training loss instead of restarting its average."
        if self.smooth:
            self.recorder.smooth_loss.count, self.recorder.smooth_loss.val = self.smooth["count"], self.smooth["val"]

    @property
    def hps(self) -> dict:
        "The LR and beta1 of every step the run has trained so far."
        sched = first(cb for cb in self.learn.cbs if isinstance(cb, (OneCyclePeak, ParamScheduler)))
        return {k: v + list(sched.hps.get(k, []) if sched else []) for k, v in self.earlier.items()}

    def after_fit(self):
        self.earlier = self.hps  # fine_tune's second fit follows its first

    def after_cancel_epoch(self):
        self.skipped = True  # an epoch a resumed fit skips (fastai's SkipToEpoch)

    def after_epoch(self):
        if self.skipped:
            self.skipped = False
            return
        if not dist.is_main():
            return  # the run folder is rank 0's
        values = list(self.recorder.log[1:-1])  # between the epoch number and the time
        row = {"epoch": len(self.history)}  # of the run: fine_tune's two fits count on
        for n in self.recorder.metric_names[1:-1]:  # train_*, then valid_* unless that pass was skipped
            row[n] = None if self.recorder.cancel_valid and n.startswith("valid_") else float(values.pop(0))
        row["time"] = str(self.recorder.log[-1])  # fastai's mm:ss
        row["lr_end"] = float(self.opt.hypers[-1]["lr"])
        self.history.append(row)
        ck = {"epoch": row["epoch"], "model": unwrap(self.model).state_dict(), "opt": self.opt.state_dict(),
              "rng": rng_state(self.learn), "history": self.history, "n_epoch": self.n_epoch,
              "smooth_loss": {"count": self.recorder.smooth_loss.count, "val": self.recorder.smooth_loss.val},
              "hps": self.hps, "ema": self.ema.avg.state_dict() if self.ema else None,
              "seconds": time.time() - self.clock if self.clock else None}  # the run's time up to here, all sessions
        atomic_torch_save(to_plain(ck), self.run_dir / CHECKPOINT)
        write_metrics(self.run_dir, self.history, self.hps)


class MuteSkippedEpochs(Callback):
    """A resumed fit passes through the epochs it skips (fastai's SkipToEpoch cancels them); fastai would still
    print an empty row for each. Mute the logger for those (before the Recorder logs, order 50) and give it back
    at the next epoch."""
    order = 49
    saved = None
    def before_epoch(self):
        self._restore()
    def after_fit(self):
        self._restore()
    def after_cancel_epoch(self):
        self.saved, self.learn.logger = self.learn.logger, noop

    def _restore(self):
        if self.saved is not None:
            self.learn.logger, self.saved = self.saved, None


def open_run(run_dir: Path) -> tuple[Recipe, dict, dict | None]:
    "A run folder's settings, facts and last checkpoint (None if no epoch had completed)."
    if not run_dir.is_dir():
        raise UserError(f"No run folder at {run_dir}.")
    info = read_json(run_dir / RUN_JSON)
    r = load_settings(run_dir / SETTINGS)
    if not (run_dir / CHECKPOINT).is_file():
        return r, info, None
    try:
        ck = load_checkpoint(run_dir / CHECKPOINT)
    except Exception as e:
        raise UserError(f"{run_dir/CHECKPOINT} is damaged ({type(e).__name__}: {str(e)[:120]}), so the run is not "
                        "resumed from it: restore the file from a copy, or start the run again.",
                        hint=f"(fastresnet train --settings {run_dir/SETTINGS} --data DATA --out {run_dir} "
                        "--overwrite starts it again in the same folder)") from None
    if "hypers" in ck["opt"] and r.adam_impl != "fastai":
        r = r.replace(adam_impl="fastai")  # began with fastai's Adam
    return r, info, ck


def restore(learn: Learner, ck: dict, run_dir: Path, info: dict, epochs: int) -> tuple[LRBounds, int]:
    """A checkpoint into `learn`, built from the run's recipe on the data given for the resume: that data checked to
    be the run's (classes, held-out files), then weights, optimizer state, random streams and the metrics so far.
    Returns the bounds the run found and the first epoch left to train; a run that had trained all `epochs` (stopped
    while finishing) gets the weights its fit ended with (the EMA average, if it kept one)."""
    vocab, split = list(learn.dls.vocab), getattr(learn.dls, "valid_files", None)
    if info.get("vocab") and vocab != info["vocab"]:
        raise UserError(f"The data's classes {vocab} differ from the run's {info['vocab']}: "
                        f"resume {run_dir} with the data it started with.")
    if split is not None and split != (read_json_or_none(run_dir / SPLIT) or {}).get("valid"):
        raise UserError(f"The data's held-out images differ from those in {run_dir / SPLIT} (files added, removed or "
                        f"renamed since the run started): resume {run_dir} with the data it started with.")
    set_status(run_dir, "started")  # a resumed run runs again
    learn.create_opt()
    try:
        learn.model.load_state_dict(ck["model"])
    except RuntimeError as e:  # torch's first line only says "Error(s) in loading state_dict": the next names a tensor
        why = next((s.strip() for s in str(e).splitlines()[1:] if s.strip()), str(e).splitlines()[0])
        raise UserError(f"The checkpoint in {run_dir} does not fit a model for this data "
                        f"({why[:200]}): resume with the data the run started with.") from None
    learn.opt.load_state_dict(ck["opt"])
    set_rng_state(learn, ck["rng"])
    write_metrics(run_dir, ck["history"][:ck["epoch"] + 1], ck["hps"])
    b, start = read_json(run_dir / LR_BOUNDS), ck["epoch"] + 1
    if start >= epochs and ck.get("ema"):
        learn.model.load_state_dict({k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")})
    return LRBounds(b["lr_min"], b["lr_max"], b["rule"]), start


def rng_state(learn: Learner) -> dict:
    "Every random stream a training epoch draws from, in a form `torch.load(weights_only=True)` accepts."
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "dls": [getattr(dl, "dl", dl).rng.getstate() for dl in learn.dls.loaders]}  # .dl: under DistributedDL


def set_rng_state(learn: Learner, s: dict) -> None:
    random.setstate(s["python"])
    torch.set_rng_state(s["torch"])
    np.random.set_state((s["numpy"][0], s["numpy"][1].numpy(), *s["numpy"][2:]))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    for dl, st in zip(learn.dls.loaders, s["dls"]):
        getattr(dl, "dl", dl).rng.setstate(st)


def to_plain(o):
    "fastai containers (`L`) and numpy scalars as lists and Python numbers, so `weights_only` loading accepts them."
    if isinstance(o, dict):
        return {k: to_plain(v) for k, v in o.items()}
    if isinstance(o, (list, L)):
        return [to_plain(v) for v in o]
    if isinstance(o, tuple):
        return tuple(to_plain(v) for v in o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, torch.Tensor) and type(o) is not torch.Tensor:
        return o.as_subclass(torch.Tensor)
    return o


def _as_tuples(o):
    "torch.load(weights_only) returns lists where tuples were saved; RNG states need their tuples back."
    return tuple(_as_tuples(x) for x in o) if isinstance(o, (list, tuple)) else o


def load_checkpoint(path: Path) -> dict:
    "Load a checkpoint, its checksums first (`check_zip`), with `weights_only=True`: tensors and plain values, no code."
    check_zip(path)
    ck = torch.load(path, map_location="cpu", weights_only=True)
    rng = ck["rng"]
    rng["python"] = _as_tuples(rng["python"])
    rng["dls"] = [_as_tuples(s) for s in rng["dls"]]
    return ck

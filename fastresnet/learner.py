"""The recipe's Learner (`cifar_learner`: data, DataBlock, CustomResNet, Adam, loss) and the callbacks
that make a long CPU run safe: a per-epoch checkpoint that resumes exactly, and a loud stop on divergence."""
from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback, CancelValidException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastcore.foundation import L
from torch.amp import GradScaler
from fastai.data.core import DataLoaders
from fastai.learner import AvgSmoothLoss, Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import AccumMetric, accuracy
from fastai.optimizer import Adam
from fastai.torch_core import default_device, rank_distrib, set_seed
from fastcore.basics import noop

from . import distributed as dist
from .config import HintedError, Recipe, SettingsError, load_settings
from .data import CifarArrays, balanced_subset, cifar_dls, load_cifar
from .model import CustomResNet, resnet_split
from .optim import TorchAdam, TorchSGD
from .run import CHECKPOINT, atomic_torch_save, to_plain, write_metrics
from . import schedule  # noqa: F401  (patches fit_one_cycle_peak onto Learner)

__all__ = ["cifar_learner", "build_learner", "load_body", "check_runtime", "PlainTestLoss", "CompileModel", "unwrap",
           "plain_output", "rng_state", "set_rng_state", "RunCheckpoint", "MuteSkippedEpochs", "ValidEvery",
           "StopOnNaN", "DivergedError", "resolve_precision", "cpu_native_bf16", "EMA",
           "RangeTestLines"]


def cifar_learner(data: str | Path | CifarArrays | None = None, settings: str | Path | Recipe | None = None,
                  path: str | Path = ".", subset: int | None = None, init: str | Path | None = None,
                  stats: tuple[list[float], list[float]] | None = None, **changes) -> Learner:
    """The recipe's Learner in one call, for runs, notebooks and scripts: seeded, the images of `data`
    (a folder as for `fastresnet train --data`, arrays, or `None` to download CIFAR-10) through the recipe's
    DataBlock into CustomResNet, Adam and the loss, configured by `settings` (a Recipe or a settings file;
    default: the recipe's defaults) with `changes` applied (e.g. `bs=256`, `wd=0.4`).

        learn = cifar_learner("PATH/TO/cifar10")
        b = learn.lr_bounds()                        # learn.lr_find() as the run path runs it: LRMIN, LRMAX
        learn.fit_one_cycle_peak(24, b.lr_min, b.lr_max, peak_epoch=5)
        learn.export("model.pkl")

    `init` (a run folder, `.safetensors` or `.pkl`) starts from a trained model instead, as fastai's `vision_learner`
    starts from a pretrained one: its body, width and input normalisation, with a new head for `data`'s classes;
    then `learn.fine_tune(n, base_lr)`. `stats` (per-channel mean and std) overrides the input normalisation.
    """
    r = settings if isinstance(settings, Recipe) else load_settings(settings) if settings else Recipe()
    r = resolve_precision(r.replace(**changes))
    source = None
    if init is not None:  # the body's shape is the source's: its width wins over the recipe's
        from .inference import load_model, norm_stats
        source = load_model(init)
        width = unwrap(source.model).width
        if width != r.width: warnings.warn(f"Starting from {init}: the network's width is its {width}, not {r.width}.")
        r = r.replace(width=width)
    check_runtime(r)
    arrays = data if isinstance(data, CifarArrays) else load_cifar(data, r.valid_pct, r.seed, r.size)
    if subset: arrays = balanced_subset(arrays, subset)  # class-balanced, for smoke runs and proxies
    if source is not None and stats is None: stats = norm_stats(source)  # the inputs scaled as the body was trained
    if stats is not None: arrays = dataclasses.replace(arrays, stats=tuple(map(list, stats)))
    set_seed(r.seed)
    torch.backends.cudnn.deterministic = r.deterministic  # GPUs: bit-exact, or cuDNN's autotuned (faster) kernels
    torch.backends.cudnn.benchmark = not r.deterministic
    dls = cifar_dls(arrays, r.replace(bs=dist.local_batch_size(r)), device=default_device())  # GPU if there is one
    dls.valid_files = arrays.valid_files  # a random split's held-out files, for the run folder (not exported)
    learn = build_learner(dls, r, path=Path(path).absolute())  # fastai joins `path` to file names: absolute, once
    if dist.world_size() > 1: torch.manual_seed(r.seed + rank_distrib())  # same init everywhere, own augmentation
    if source is not None: load_body(learn.model, source.model)
    return learn


def load_body(model: torch.nn.Module, source: torch.nn.Module) -> None:
    "Every weight of `source` but its `fc` head into `model`, whose head stays new (sized for its own classes)."
    body = {k: v for k, v in unwrap(source).state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = unwrap(model).load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise SettingsError(f"The model to start from does not fit this network (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}).")


def build_learner(dls: DataLoaders, r: Recipe, path: str | Path = ".") -> Learner:
    "CustomResNet + loss + Adam from the recipe, on `dls`. `path` is where fastai saves files; `learn.recipe` is `r`."
    loss = LabelSmoothingCrossEntropyFlat(eps=r.label_smoothing) if r.label_smoothing else CrossEntropyLossFlat()
    hyper = dict(mom=r.beta1_max, sqr_mom=r.beta2, eps=r.eps, decouple_wd=r.decouple_wd)
    opt = partial(Adam, **hyper) if r.adam_impl == "fastai" else partial(TorchAdam, impl=r.adam_impl, **hyper)
    if r.optimizer == "sgd": opt = partial(TorchSGD, mom=r.beta1_max, nesterov=r.nesterov)
    model = CustomResNet(n_out=len(dls.vocab), width=r.width, bn_momentum=r.bn_momentum)
    # Accuracy (fastai's AccumMetric) is computed once over every test prediction; under a distributed launch
    # fastai gathers them from every process (padding removed), so each test image counts once.
    learn = Learner(dls, model, loss_func=loss, opt_func=opt, metrics=Accuracy(),
                    splitter=resnet_split, wd=r.wd, wd_bn_bias=r.wd_bn_bias, path=path,
                    moms=(r.beta1_max, r.beta1_min, r.beta1_max),
                    cbs=[LossesToHost(), HeadFitsData()] + ([PlainTestLoss()] if r.label_smoothing else []))
    learn.recipe = r
    learn.recorder.train_metrics = True  # training accuracy too: the train–test gap is the overfitting signal
    learn.recorder.smooth_loss = SmoothLossOnDevice(learn.recorder.smooth_loss.beta)
    if hasattr(learn, "progress"): learn.remove_cb(learn.progress).add_cb(Progress())
    if r.channels_last: learn.add_cb(ChannelsLast())
    if r.precision == "bf16": learn.add_cb(BF16())
    if r.precision == "fp16": learn.to_fp16()
    if r.compile: learn.add_cb(CompileModel())
    return learn


def cpu_native_bf16() -> bool:
    "Whether this CPU computes bf16 in hardware (flags avx512_bf16 or amx_bf16); elsewhere oneDNN emulates it."
    try: flags = Path("/proc/cpuinfo").read_text().split()
    except OSError: return False  # not Linux: unknown, so no
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(r: Recipe) -> Recipe:
    "`precision = auto` as this machine answers it: bf16 on a GPU that has it or a CPU with bf16 units, else fp32."
    if r.precision != "auto": return r
    gpu = torch.cuda.is_available()
    native = torch.cuda.is_bf16_supported() if gpu else cpu_native_bf16()
    return r.replace(precision="bf16" if native else "fp32")


def check_runtime(r: Recipe) -> None:
    "Refuse settings this machine cannot honour, before any data is loaded."
    if r.precision == "fp16" and not torch.cuda.is_available():
        raise SettingsError("precision = fp16 needs a CUDA GPU (fp16 with loss scaling is a GPU format). Use fp32, "
                            "or bf16 on a CPU with bf16 units.")
    if r.precision == "bf16" and not torch.cuda.is_available() and not cpu_native_bf16():
        raise SettingsError("precision = bf16 needs a GPU or a CPU with bf16 units (the avx512_bf16 or amx_bf16 flag); "
                            "this CPU would emulate it, slower than fp32. Use fp32 here.")


class BF16(MixedPrecision):
    "fastai's mixed precision in bf16 on the data's device (CPU too; fastai's autocasts for CUDA only); fp32 weights."
    def __init__(self): super().__init__(AMPMode.BF16)
    def before_fit(self):  # bf16 has fp32's range: no loss scaling (a disabled GradScaler, as fastai's bf16 has)
        device = getattr(self.dls.device, "type", "cpu")
        self.autocast, self.scales = torch.autocast(device, torch.bfloat16), L()
        self.learn.scaler = GradScaler(device, enabled=False)


# ---------------------------------------------------------------- no waiting on the device
SYNC_EVERY = 50  # training batches between the host's reads of values on the device (loss shown, NaN check)


class SmoothLossOnDevice(AvgSmoothLoss):
    "fastai's smoothed training loss, kept where the loss is: fastai's copies it to the host every batch (a sync)."
    def accumulate(self, learn):
        self.count += 1
        loss = learn.loss.detach().mean().float()
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class LossesToHost(Callback):
    "The Recorder's per-batch losses, left on the device while an epoch runs, copied to the host after it in one go."
    order = 51  # after the Recorder
    def after_epoch(self): self._move()
    def after_fit(self): self._move()  # lr_find's fit ends without a completed epoch

    def _move(self):
        losses = self.recorder.losses
        i = next((k for k, x in enumerate(losses) if getattr(x, "device", None) not in (None, torch.device("cpu"))),
                 None)
        if i is not None: losses[i:] = list(torch.stack(losses[i:]).cpu())  # plot_loss and lr_find read them


class HeadFitsData(Callback):
    """Refuse to train a head on data of another class count: `load_learner(pkl)` with new `dls` of other classes
    keeps the old head (fastai swaps no head), which would train or fail in confusing ways."""
    def before_fit(self):
        fc, n_cls = getattr(unwrap(self.model), "fc", None), len(self.dls.vocab)  # CustomResNet's head, if it is one
        n_out = getattr(fc, "out_features", n_cls)
        if n_out != n_cls:
            raise SettingsError(f"The model's head has {n_out} outputs but the data has {n_cls} classes. To train on "
                                "new classes, start from the model with a new head: cifar_learner(data, init=MODEL) "
                                "in Python, or fastresnet train --data DATA --init MODEL.")


class Accuracy(AccumMetric):
    """fastai's accuracy over every prediction; on training batches counted on the device (fastai copies every
    batch's predictions to the host). Under a distributed launch the training figure is rank 0's share."""
    def __init__(self): super().__init__(accuracy, flatten=False)
    def reset(self): super().reset(); self.hits = self.seen = None
    def accumulate(self, learn):
        if not learn.training: return super().accumulate(learn)
        hits = (learn.pred.argmax(-1) == learn.y).sum()
        first = self.hits is None
        self.hits, self.seen = (hits, len(learn.y)) if first else (self.hits + hits, self.seen + len(learn.y))
    @property
    def value(self): return super().value if self.hits is None else self.hits.float() / self.seen


class Progress(ProgressCallback):
    "fastai's bar, its loss read with the NaN check (every SYNC_EVERY batches) and at the last, not every batch."
    name = "progress"  # fastai's name for its bar: `learn.progress`, and `no_bar` finds this one
    def after_batch(self):
        self.pbar.update(self.iter + 1)
        if hasattr(self, "smooth_loss") and ((self.iter + 1) % SYNC_EVERY == 0 or self.iter + 1 == self.n_iter):
            self.pbar.comment = f"{self.smooth_loss.item():.4f}"


class PlainTestLoss(Callback):
    """The test loss as plain cross-entropy while the Learner's `loss_func` (the training loss) is smoothed:
    smoothed losses cannot fall below ~0.5 nats and do not compare across smoothing settings. Covers the
    Recorder's `valid_loss` and `get_preds(with_loss=True)` (top losses)."""
    order = -1
    def after_loss(self):
        if self.training or not self.yb: return          # no labels (test_dl, predict): no loss
        reduction = getattr(self.loss_func, "reduction", "mean")  # fastai's get_preds asks for 'none'
        self.learn.loss = F.cross_entropy(self.pred.float(), self.y.long(), reduction=reduction)


class CompileModel(Callback):
    "Train through `torch.compile(model)`; the plain module is put back after fit, so saving and export are unchanged."
    order = 0
    def __init__(self, backend: str = "inductor", mode: str | None = None): self.backend, self.mode = backend, mode
    def before_fit(self):
        self.plain, self.learn.model = self.model, torch.compile(self.model, backend=self.backend, mode=self.mode)
    def after_fit(self): self.learn.model = self.plain


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    "The module behind a compiled (or DDP-wrapped) one, whose state_dict keys carry no prefix."
    while hasattr(model, "_orig_mod") or hasattr(model, "module"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


# ---------------------------------------------------------------- output
@contextlib.contextmanager
def plain_output(learn: Learner):
    """Progress bars on a terminal; when the output goes to a file or a pipe, no bars (their carriage
    returns make a log unreadable) and one line per epoch instead."""
    if sys.stdout.isatty():
        yield
        return
    old, learn.logger = learn.logger, partial(_epoch_line, learn)
    try:
        with learn.no_bar(), learn.added_cbs(RangeTestLines()): yield
    finally: learn.logger = old


class RangeTestLines(Callback):
    "The LR range test's progress as a line a quarter of the way, where no bar is drawn: minutes on a CPU."
    order = 51  # after the Recorder: the batch's smoothed loss is in
    def after_batch(self):
        finder = getattr(self.learn, "lr_finder", None)
        if finder is None or not self.training or self.train_iter % max(1, finder.num_it // 4): return
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


# ---------------------------------------------------------------- RNG state
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
    if s["cuda"] and torch.cuda.is_available(): torch.cuda.set_rng_state_all(s["cuda"])
    for dl, st in zip(learn.dls.loaders, s["dls"]): getattr(dl, "dl", dl).rng.setstate(st)


# ---------------------------------------------------------------- callbacks
class RunCheckpoint(Callback):
    """After every epoch: append the epoch's row to the metrics history, write `metrics.csv` /
    `metrics.json` / `schedule.json`, and save model + optimizer + RNG + history + schedule to `checkpoint.pth`."""
    order = 60  # after the Recorder (50) has the epoch's losses and metrics

    def __init__(self, run_dir: Path, history: list[dict] | None = None, smooth_loss: dict | None = None,
                 hps: dict | None = None, clock: float | None = None):
        self.run_dir, self.history, self.smooth = Path(run_dir), list(history or []), smooth_loss
        self.hps_before = hps or {}  # fastai's schedulers (fine_tune): the steps of the fits before this one
        self.clock = clock  # time.time() of the run's start, moved on by the time its earlier sessions ran

    def before_fit(self):
        "On resume, continue the Recorder's smoothed training loss instead of restarting its average."
        if self.smooth:
            self.recorder.smooth_loss.count, self.recorder.smooth_loss.val = self.smooth["count"], self.smooth["val"]

    def after_epoch(self):
        epoch = self.epoch + getattr(self.learn, "epoch_offset", 0)  # of the run (fine_tune's frozen epochs first)
        if epoch < len(self.history): return  # an epoch a resumed run skipped (fastai still fires after_epoch)
        values = list(self.recorder.log[1:-1])  # between the epoch number and the time
        row = {"epoch": epoch}
        for n in self.recorder.metric_names[1:-1]:  # train_*, then valid_* unless that pass was skipped
            row[n] = None if self.recorder.cancel_valid and n.startswith("valid_") else float(values.pop(0))
        row["time"] = str(self.recorder.log[-1])  # fastai's mm:ss
        row["lr_end"] = float(self.opt.hypers[-1]["lr"])
        self.history.append(row)
        ck = {"epoch": epoch, "model": unwrap(self.model).state_dict(), "opt": self.opt.state_dict(),
              "rng": rng_state(self.learn), "history": self.history, "n_epoch": self.n_epoch,
              "smooth_loss": {"count": self.recorder.smooth_loss.count, "val": self.recorder.smooth_loss.val},
              "hps": self._hps(),  # the LR and beta1 of every step so far, as the schedule set them
              "ema": self.ema.avg.state_dict() if hasattr(self.learn, "ema") else None,
              "seconds": time.time() - self.clock if self.clock else None}  # the run's time up to here, all sessions
        atomic_torch_save(to_plain(ck), self.run_dir / CHECKPOINT)
        write_metrics(self.run_dir, self.history, ck["hps"])

    def after_fit(self):
        if getattr(self.learn, "param_scheduler", None) is not None: self.hps_before = self._hps()

    def _hps(self) -> dict:
        "The recipe's schedule records the whole run; fastai's records one fit, which follows `hps_before`."
        own = getattr(self.learn, "one_cycle_peak", None)
        if own is not None: return own.hps
        return {k: list(self.hps_before.get(k, [])) + list(v) for k, v in self.param_scheduler.hps.items()}


class EMA(Callback):
    """An exponential moving average of the weights and BatchNorm statistics: torch's `AveragedModel` with
    `get_ema_multi_avg_fn(decay)` and `use_buffers=True` (torch's advice for BatchNorm), updated after every step
    from epoch `warmup` on. After the fit the model takes the average, so the test, the export and the weights file
    use it; `state` (a checkpoint's) continues an interrupted fit."""
    order = 55  # before RunCheckpoint (60), which saves `avg` with each epoch
    def __init__(self, decay: float, warmup: int = 1, state: dict | None = None):
        self.decay, self.warmup, self.state = decay, warmup, state

    def before_fit(self):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        self.avg = AveragedModel(unwrap(self.model), multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        if self.state is not None: self.avg.load_state_dict(self.state)

    def after_step(self):
        if self.epoch >= self.warmup: self.avg.update_parameters(unwrap(self.model))

    def after_fit(self):
        if self.avg.n_averaged > 0: unwrap(self.model).load_state_dict(self.avg.module.state_dict())


class MuteSkippedEpochs(Callback):
    """A resumed fit passes through the epochs it skips; fastai would still print an empty row for each.
    Mute the logger for those (before the Recorder logs, order 50) and give it back at the next epoch."""
    order = 49
    def __init__(self, start_epoch: int): self.start, self.saved = start_epoch, None
    def before_epoch(self): self._restore()
    def after_fit(self): self._restore()
    def after_epoch(self):
        if self.epoch + getattr(self.learn, "epoch_offset", 0) < self.start:
            self.saved, self.learn.logger = self.learn.logger, noop

    def _restore(self):
        if self.saved is not None: self.learn.logger, self.saved = self.saved, None


class ValidEvery(Callback):
    "Skip the test-set pass except every `n` epochs and after the last (n=0: the last only): for CPU proxies."
    order = 0
    def __init__(self, n: int): self.n = n

    def before_validate(self):
        last = self.epoch == self.n_epoch - 1
        if not last and (self.n == 0 or (self.epoch + 1) % self.n): raise CancelValidException()


class DivergedError(HintedError, RuntimeError):
    "Training produced a non-finite loss."


class StopOnNaN(Callback):
    """Stop within SYNC_EVERY batches of the first non-finite training loss, and always before the epoch's
    checkpoint, with an error naming the epoch, batch and LR. The check is a flag on the device, read
    every SYNC_EVERY batches and after each epoch's training, so the host never waits on it per batch."""
    order = -5
    def before_fit(self): self.first = None  # the first bad step, -1 while there is none
    def after_batch(self):
        if not self.training: return
        bad = torch.where(torch.isfinite(self.loss.detach()), -1, self.epoch * self.n_iter + self.iter)
        self.first = bad if self.first is None else torch.where(self.first >= 0, self.first, bad)
        if (self.iter + 1) % SYNC_EVERY == 0: self._check()
    def after_train(self): self._check()

    def _check(self):
        step = int(self.first) if self.first is not None else -1
        if step < 0: return
        sched = getattr(self.learn, "one_cycle_peak", None)
        lr = sched.hps["lr"][step] if sched is not None and step < len(sched.hps["lr"]) else self.opt.hypers[-1]["lr"]
        kept = ("The checkpoint of the last completed epoch is kept." if (Path(self.path) / CHECKPOINT).is_file()
                else "No epoch had completed, so there is no checkpoint yet.")
        raise DivergedError(f"Training diverged: the loss became non-finite in epoch {step // self.n_iter + 1} "
                            f"(batch {step % self.n_iter + 1}) at LR {lr:.4g}. {kept} Try a smaller LRMAX, for "
                            f"example {lr / 3:.3g}.", hint=f"(--lr-max {lr / 3:.3g})")

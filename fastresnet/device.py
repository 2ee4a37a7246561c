"""Where the work runs, in which precision, and how the host keeps from waiting on the device.

`precision = auto` resolves here (bf16 on a GPU that has it or a CPU with bf16 units, else fp32), and the
settings this machine cannot honour are refused before any data is loaded. The Learner's loss, training
accuracy and progress bar stay on the device between reads every SYNC_EVERY batches: fastai's own read them
every batch, and each read makes the host wait for the device to finish."""
from __future__ import annotations

from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastai.learner import AvgSmoothLoss
from fastai.metrics import AccumMetric, accuracy
from fastcore.foundation import L
from torch.amp import GradScaler

from .config import Recipe, UserError

__all__ = ["cpu_native_bf16", "resolve_precision", "check_runtime", "BF16", "SmoothLossOnDevice", "LossesToHost",
           "Accuracy", "Progress", "CompileModel", "unwrap", "SYNC_EVERY"]


SYNC_EVERY = 50  # training batches between the host's reads of values on the device (loss shown, NaN check)


def cpu_native_bf16() -> bool:
    "Whether this CPU computes bf16 in hardware (flags avx512_bf16 or amx_bf16); elsewhere oneDNN emulates it."
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False  # not Linux: unknown, so no
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(r: Recipe) -> Recipe:
    "`precision = auto` as this machine answers it: bf16 on a GPU that has it or a CPU with bf16 units, else fp32."
    if r.precision != "auto":
        return r
    gpu = torch.cuda.is_available()
    native = torch.cuda.is_bf16_supported() if gpu else cpu_native_bf16()
    return r.replace(precision="bf16" if native else "fp32")


def check_runtime(r: Recipe) -> None:
    "Refuse settings this machine cannot honour, before any data is loaded."
    if r.precision == "fp16" and not torch.cuda.is_available():
        raise UserError("precision = fp16 needs a CUDA GPU (fp16 with loss scaling is a GPU format). Use fp32, "
                        "or bf16 on a CPU with bf16 units.")
    if r.precision == "bf16" and not torch.cuda.is_available() and not cpu_native_bf16():
        raise UserError("precision = bf16 needs a GPU or a CPU with bf16 units (the avx512_bf16 or amx_bf16 flag); "
                        "this CPU would emulate it, slower than fp32. Use fp32 here.")


class BF16(MixedPrecision):
    "fastai's mixed precision in bf16 on the data's device (CPU too; fastai's autocasts for CUDA only); fp32 weights."
    def __init__(self):
        super().__init__(AMPMode.BF16)
    def before_fit(self):  # bf16 has fp32's range: no loss scaling (a disabled GradScaler, as fastai's bf16 has)
        device = getattr(self.dls.device, "type", "cpu")
        self.autocast, self.scales = torch.autocast(device, torch.bfloat16), L()
        self.learn.scaler = GradScaler(device, enabled=False)


class SmoothLossOnDevice(AvgSmoothLoss):
    "fastai's smoothed training loss, kept where the loss is: fastai's copies it to the host every batch (a sync)."
    def accumulate(self, learn):
        self.count += 1
        loss = learn.loss.detach().mean().float()
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class LossesToHost(Callback):
    "The Recorder's per-batch losses, left on the device while an epoch runs, copied to the host after it in one go."
    order = 51  # after the Recorder
    def after_epoch(self):
        self._move()
    def after_fit(self):
        self._move()  # lr_find's fit ends without a completed epoch

    def _move(self):
        losses = self.recorder.losses
        i = next((k for k, x in enumerate(losses) if getattr(x, "device", None) not in (None, torch.device("cpu"))),
                 None)
        if i is not None:
            losses[i:] = list(torch.stack(losses[i:]).cpu())  # plot_loss and lr_find read them


class Accuracy(AccumMetric):
    """fastai's accuracy over every prediction; on training batches counted on the device (fastai copies every
    batch's predictions to the host). Under a distributed launch the training figure is rank 0's share."""
    def __init__(self):
        super().__init__(accuracy, flatten=False)
    def reset(self):
        super().reset()
        self.hits = self.seen = None
    def accumulate(self, learn):
        if not learn.training:
            return super().accumulate(learn)
        hits = (learn.pred.argmax(-1) == learn.y).sum()
        first = self.hits is None
        self.hits, self.seen = (hits, len(learn.y)) if first else (self.hits + hits, self.seen + len(learn.y))
    @property
    def value(self):
        return super().value if self.hits is None else self.hits.float() / self.seen


class Progress(ProgressCallback):
    "fastai's bar, its loss read with the NaN check (every SYNC_EVERY batches) and at the last, not every batch."
    name = "progress"  # fastai's name for its bar: `learn.progress`, and `no_bar` finds this one
    def after_batch(self):
        self.pbar.update(self.iter + 1)
        if hasattr(self, "smooth_loss") and ((self.iter + 1) % SYNC_EVERY == 0 or self.iter + 1 == self.n_iter):
            self.pbar.comment = f"{self.smooth_loss.item():.4f}"


class CompileModel(Callback):
    "Train through `torch.compile(model)`; the plain module is put back after fit, so saving and export are unchanged."
    order = 0  # before the schedulers and RunCheckpoint (60), which unwrap the compiled module to save it
    def __init__(self, backend: str = "inductor", mode: str | None = None):
        self.backend, self.mode = backend, mode
    def before_fit(self):
        self.plain, self.learn.model = self.model, torch.compile(self.model, backend=self.backend, mode=self.mode)
    def after_fit(self):
        self.learn.model = self.plain


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    "The module behind a compiled (or DDP-wrapped) one, whose state_dict keys carry no prefix."
    while hasattr(model, "_orig_mod") or hasattr(model, "module"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model

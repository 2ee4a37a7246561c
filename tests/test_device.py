"""What keeps a GPU busy and a bf16 CPU fast, checked on this CPU: the training loop reads values back from the
device (a sync: the host waits for the device) at most once per SYNC_EVERY batches; bf16 trains through autocast
with fp32 weights; determinism is a setting."""
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from torch.overrides import TorchFunctionMode

import fastresnet.device as D
from conftest import make_arrays
from fastresnet.callbacks import StopOnNaN
from fastresnet.config import Recipe, UserError
from fastresnet.data import recipe_dls
from fastresnet.device import SYNC_EVERY
from fastresnet.learner import build_learner
from fastresnet.resume import RunCheckpoint

SYNCING = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__"}


class SyncCounter(TorchFunctionMode):
    "Every call that copies a tensor's value to the host while `active`, by training step."
    def __init__(self):
        super().__init__()
        self.active, self.step, self.calls = False, None, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.active and getattr(func, "__name__", "") in SYNCING: self.calls.append((self.step, func.__name__))
        return func(*args, **(kwargs or {}))


class Window(Callback):
    "Count from the first callback of a training batch to the last one (order -100 .. 100)."
    def __init__(self, counter, first: bool):
        self.counter, self.first, self.order = counter, first, -100 if first else 100
    def before_batch(self):
        if self.first and self.training:
            self.counter.active, self.counter.step = True, self.epoch * self.n_iter + self.iter
    def after_batch(self):
        if not self.first: self.counter.active = False


def test_at_most_one_device_sync_per_sync_every_training_batches(tmp_path):
    """N training batches of the run's loop (progress bar on, smoothed loss, training accuracy, NaN check,
    schedule, per-epoch checkpoint): the host reads device values in at most N / SYNC_EVERY of them (the first read
    of a batch waits for the device; a second one in the same batch finds it idle). Epoch ends read once more,
    outside the batches (the NaN check before the checkpoint)."""
    n_batches, epochs = 2 * SYNC_EVERY, 2
    r = Recipe(bs=2, width=0.0625, tta=False)
    learn = build_learner(recipe_dls(make_arrays(2 * n_batches, 4), r), r, tmp_path)    # 2 images a batch
    counter = SyncCounter()
    with counter:
        learn.fit_one_cycle_peak(epochs, 1e-4, 1e-3, 1, cbs=[StopOnNaN(), RunCheckpoint(tmp_path),
                                                              Window(counter, True), Window(counter, False)])
    steps = n_batches * epochs
    assert len(learn.recorder.hps["lr"]) == steps                          # every batch trained
    waits = sorted({step for step, _ in counter.calls})
    assert len(waits) <= steps // SYNC_EVERY, counter.calls
    assert waits == [SYNC_EVERY - 1 + k * SYNC_EVERY for k in range(steps // SYNC_EVERY)]   # NaN check + loss shown


class NaNAt(Callback):
    order = -10
    def __init__(self, step): self.step = step
    def after_loss(self):
        if self.training and self.epoch * self.n_iter + self.iter == self.step:
            self.learn.loss = self.loss * float("nan")


@pytest.mark.parametrize("bad, start", [(7, 0), (SYNC_EVERY - 1, 0), (2 * SYNC_EVERY + 7, 1)])
def test_divergence_is_caught_within_sync_every_batches_and_named(tmp_path, bad, start):
    "Named with the LR of the bad step, the one cycle's formula: 2 epochs of 100 steps peaking at step 100."
    r = Recipe(bs=2, width=0.0625)
    learn = build_learner(recipe_dls(make_arrays(4 * SYNC_EVERY, 4), r), r, tmp_path)
    seen = []
    class Count(Callback):
        def after_batch(self):
            if self.training: seen.append(self.iter)
    n = 2 * SYNC_EVERY                                                      # steps an epoch (200 images, bs 2)
    lr = float(np.interp(bad, [0, n, 2 * n - 1], [1e-4, 1e-3, 1e-4]))
    with pytest.raises(UserError, match=rf"epoch {bad // n + 1} \(batch {bad % n + 1}\) at LR {lr:.4g}\."):
        with learn.no_bar(): learn.fit_one_cycle_peak(2, 1e-4, 1e-3, 1, cbs=[StopOnNaN(), NaNAt(bad), Count()],
                                                      start_epoch=start)
    assert len(seen) <= SYNC_EVERY                                          # stopped within SYNC_EVERY batches


def test_bf16_on_a_cpu_with_bf16_units_autocasts_and_keeps_fp32_weights(tmp_path, monkeypatch):
    "Forced as if native (the arithmetic is the same where oneDNN emulates it): convolutions in bf16, weights fp32."
    monkeypatch.setattr(D, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = Recipe(bs=10, width=0.125, precision="bf16", lr_max=1e-3)
    D.check_runtime(r)                                                      # accepted
    learn = build_learner(recipe_dls(make_arrays(), r), r, tmp_path)
    dtypes = []
    learn.model.layer1.conv.conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle_peak(2, 1e-4, 1e-3, 1)
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    assert all(v.dtype == torch.float32 for st in learn.opt.opt.state.values() for k, v in st.items() if k != "step")
    assert torch.isfinite(torch.tensor(learn.recorder.losses)).all()


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_units_and_the_run_records_the_choice(
        monkeypatch, tmp_path, tiny_folder, native):
    monkeypatch.setattr(D, "cpu_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    want = "bf16" if native else "fp32"
    assert D.resolve_precision(Recipe(precision="auto")).precision == want
    assert D.resolve_precision(Recipe(precision="fp32")).precision == "fp32"      # an explicit choice stays
    from fastresnet.config import load_settings
    from fastresnet.train import run
    assert Recipe().precision == "auto"                                            # the default
    said = []
    run(Recipe(bs=20, epochs=2, peak_epoch=1, lr_max=1e-3, width=0.125, tta=False),
        tmp_path / "r", str(tiny_folder), log=said.append)
    assert load_settings(tmp_path / "r" / "settings.ini").precision == want       # a resume keeps what auto chose
    assert f"Precision: {want} (auto: bf16 where this machine has it, else fp32)" in said   # and the user is told


def test_bf16_is_refused_on_a_cpu_without_bf16_units_and_fp16_without_a_gpu(monkeypatch):
    monkeypatch.setattr(D, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="avx512_bf16 or amx_bf16"):
        D.check_runtime(Recipe(precision="bf16"))
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        D.check_runtime(Recipe(precision="fp16"))


def test_cpu_flags_decide_native_bf16(monkeypatch, tmp_path):
    "The rule: the kernel's CPU flags avx512_bf16 or amx_bf16 (a word of /proc/cpuinfo), nothing else."
    import builtins
    from pathlib import Path
    real = Path.read_text
    for text, want in [("flags : fpu avx512f avx512_bf16 sse", True), ("flags : fpu amx_bf16", True),
                       ("flags : fpu avx2 avx512f avx512_vnni", False), ("flags : avx512_bf16x", False)]:
        monkeypatch.setattr(Path, "read_text", lambda self, *a, text=text, **k:
                            text if str(self) == "/proc/cpuinfo" else real(self, *a, **k))
        assert D.cpu_native_bf16() is want, text
    del builtins


@pytest.mark.parametrize("deterministic", [False, True])
def test_determinism_is_a_setting(deterministic, tmp_path):
    "Off by default: cuDNN may autotune (benchmark) and pick non-deterministic kernels; on: today's exact kernels."
    from fastresnet.learner import recipe_learner
    recipe_learner(make_arrays(), path=tmp_path, bs=10, deterministic=deterministic)
    assert torch.backends.cudnn.deterministic is deterministic and torch.backends.cudnn.benchmark is not deterministic
    assert Recipe().deterministic is False

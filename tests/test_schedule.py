import numpy as np
import pytest
import torch
from fastai.callback.core import CancelFitException, Callback

from fastresnet.config import Recipe
from fastresnet.data import cifar_dls
from fastresnet.learner import build_learner
from fastresnet.schedule import lr_bounds_from_finder, min_loss, run_lr_find


def tiny_learner(arrays, tmp_path, bs=10, **kw):
    torch.manual_seed(0)
    r = Recipe(bs=bs, **kw)
    return build_learner(cifar_dls(arrays, r), r, tmp_path)


@pytest.mark.parametrize("shape", ["linear", "cos"])
def test_lr_peaks_at_end_of_peak_epoch_and_returns_to_lr_min(arrays, tmp_path, shape):
    learn = tiny_learner(arrays, tmp_path, bs=20)               # 40 images → 2 batches an epoch
    learn.fit_one_cycle_peak(6, lr_min=1e-4, lr_max=1e-2, peak_epoch=2, shape=shape)
    lrs, n_iter = np.array(learn.recorder.hps["lr"]), 2            # per batch, as the optimizer used them
    assert len(lrs) == 12
    peak = int(lrs.argmax())
    assert peak == 2 * n_iter                                   # first step after epoch 2: the top of the ramp
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-4)
    assert lrs[peak] == pytest.approx(1e-2)
    assert (np.diff(lrs[:peak + 1]) > 0).all() and (np.diff(lrs[peak:]) < 0).all()
    assert lrs.min() >= 1e-4 * (1 - 1e-6)                       # no annihilation below LRMIN
    moms = np.array(learn.recorder.hps["mom"])                     # beta1 moves against the LR
    assert moms[0] == pytest.approx(0.95) and moms[peak] == pytest.approx(0.85) and moms[-1] == pytest.approx(0.95)


def test_default_24_epoch_schedule_peaks_after_five_epochs():
    from fastresnet.schedule import peak_scheds
    n_iter = 98                                                  # 50,000 / 512, last batch kept
    n = 24 * n_iter
    f = peak_scheds(0.001, 0.1, 5 * n_iter / (n - 1))["lr"]
    lrs = np.array([f(i / (n - 1)) for i in range(n)])
    assert lrs.argmax() == 5 * n_iter and lrs[0] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.001)


def test_bad_schedule_arguments(arrays, tmp_path):
    learn = tiny_learner(arrays, tmp_path)
    with pytest.raises(ValueError, match="peak_epoch"):
        learn.fit_one_cycle_peak(3, 1e-4, 1e-2, peak_epoch=3)
    with pytest.raises(ValueError, match="lr_min < lr_max"):
        learn.fit_one_cycle_peak(3, 1e-2, 1e-4, peak_epoch=1)


def test_lr_find_restores_model_and_optimizer(arrays, tmp_path):
    learn = tiny_learner(arrays, tmp_path)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    b, found = run_lr_find(learn, "min_loss", 10, 100, num_it=8)
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(learn.recorder.lrs) == 8 and learn.recorder.lrs[0] < learn.recorder.lrs[-1]
    assert set(found) == {"min_loss", "minimum", "steep", "valley", "slide"}
    assert b.lr_max == pytest.approx(found["min_loss"] / 10) and b.lr_min == pytest.approx(b.lr_max / 100)
    assert not any("grad_avg" in st or "sqr_avg" in st for st in learn.opt.state_dict()["state"])  # Adam reset


def test_bounds_rule():
    b = lr_bounds_from_finder(0.2, "minimum", 10, 100)
    assert (b.lr_max, b.lr_min) == pytest.approx((0.02, 0.0002))
    with pytest.raises(ValueError, match="no usable .valley. point"):
        lr_bounds_from_finder(float("nan"), "valley", 10, 100)


def test_suggestions_on_a_known_curve():
    from fastai.callback.schedule import SuggestionMethod
    lrs = torch.tensor(np.logspace(-6, 1, 100))
    losses = torch.tensor([2.0 - 0.1 * np.log10(l / 1e-6) if l < 0.1 else 1.5 + 5 * (l - 0.1) for l in lrs.tolist()])
    i_min = int(np.argmin(losses.numpy()))
    assert min_loss(lrs, losses, 100)[0] == pytest.approx(float(lrs[i_min]))          # the bottom of the curve
    assert SuggestionMethod.Minimum(lrs, losses, 100)[0] == pytest.approx(float(lrs[i_min]) / 10)  # fastai's: / 10


def test_compiled_training_saves_plain_weights(arrays, tmp_path):
    from fastresnet.learner import CompileModel, RunCheckpoint
    from fastresnet.run import load_checkpoint
    learn = tiny_learner(arrays, tmp_path, bs=20)
    plain = learn.model
    learn.add_cb(CompileModel(backend="eager"))                 # the wrapper, without minutes of code generation
    seen = []
    class Peek(Callback):
        def after_batch(self): seen.append(type(self.model).__name__)
    learn.fit_one_cycle_peak(2, 1e-4, 1e-3, peak_epoch=1, cbs=[Peek(), RunCheckpoint(tmp_path)])
    assert "OptimizedModule" in seen and learn.model is plain
    assert set(load_checkpoint(tmp_path / "checkpoint.pth")["model"]) == set(plain.state_dict())


class ZeroGradStep(Callback):
    "Zero every gradient before the first optimizer step, keep the weights around it, then stop."
    def before_step(self):
        self.before = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        for p in self.model.parameters(): p.grad.zero_()
    def after_step(self):
        self.after = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        raise CancelFitException()


@pytest.mark.parametrize("decouple", [True, False])
def test_weight_decay_reaches_conv_and_linear_weights_but_not_batchnorm(arrays, tmp_path, decouple):
    "With zero gradients Adam's own step is zero, so only decay moves the weights: by exactly lr·wd."
    learn = tiny_learner(arrays, tmp_path, wd=0.2, decouple_wd=decouple)
    cb = ZeroGradStep()
    learn.fit(1, lr=0.01, cbs=cb)                  # the path a run takes: fit sets wd from the recipe
    conv, bn, fc = "prep.conv.weight", "prep.bn.weight", "fc.weight"
    if decouple:   # AdamW: w ← w·(1 − lr·wd); BatchNorm and biases untouched (fastai's wd_bn_bias=False)
        for n in (conv, fc): torch.testing.assert_close(cb.after[n], cb.before[n] * (1 - 0.01 * 0.2))
    else:          # L2: the gradient becomes wd·w, which Adam normalises to a step of about lr per weight
        step = (cb.after[conv] - cb.before[conv]).abs()
        assert step.max() > 0.001 and step.max() <= 0.01 * 1.01
    torch.testing.assert_close(cb.after[bn], cb.before[bn], rtol=0, atol=0)

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastai.callback.core import CancelFitException, Callback

from fastresnet.config import Recipe, UserError
from fastresnet.data import recipe_dls
from fastresnet.learner import build_learner
from fastresnet.schedule import OneCyclePeak, find_bounds


def tiny_learner(arrays, tmp_path, bs=10, **kw):
    torch.manual_seed(0)
    r = Recipe(bs=bs, **kw)
    return build_learner(recipe_dls(arrays, r), r, tmp_path)


def test_lr_peaks_at_end_of_peak_epoch_and_returns_to_lr_min(arrays, tmp_path):
    learn = tiny_learner(arrays, tmp_path, bs=20)               # 40 images → 2 batches an epoch
    learn.fit_one_cycle_peak(6, lr_min=1e-4, lr_max=1e-2, peak_epoch=2)
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


def test_an_end_lr_other_than_lrmin_is_reached_at_the_last_step_by_a_straight_line(arrays, tmp_path):
    learn = tiny_learner(arrays, tmp_path, bs=20)               # 2 batches an epoch, 12 steps, peak at step 4
    learn.fit_one_cycle_peak(6, lr_min=1e-4, lr_max=1e-2, peak_epoch=2, lr_end=1e-6)
    lrs = np.array(learn.recorder.hps["lr"])
    # step i >= 4: lr = 1e-2 + (i - 4) / (11 - 4) * (1e-6 - 1e-2), the line from the peak to the last step
    assert lrs[4:] == pytest.approx([1e-2 + (i - 4) / 7 * (1e-6 - 1e-2) for i in range(4, 12)])
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-6)
    with pytest.raises(UserError, match="lr_end < lr_max"):
        learn.fit_one_cycle_peak(6, 1e-4, 1e-2, 2, lr_end=1e-2)


def test_default_24_epoch_schedule_peaks_after_five_epochs():
    "OneCyclePeak itself, stepped through 24 epochs of 98 batches on a stand-in Learner, against the documented lines."
    n_iter = 98                                                  # 50,000 / 512, last batch kept
    opt = SimpleNamespace(hypers=[{"lr": None, "mom": 0.9}])
    opt.set_hypers = lambda **hp: opt.hypers[-1].update(hp)
    sched = OneCyclePeak(0.001, 0.1, peak_epoch=5)
    sched.learn = SimpleNamespace(training=True, n_iter=n_iter, n_epoch=24, epoch=0, iter=0, opt=opt)
    sched.before_fit()
    lrs = []
    for sched.learn.epoch in range(24):
        for sched.learn.iter in range(n_iter):
            sched.before_batch()
            lrs.append(opt.hypers[-1]["lr"])
    lrs = np.array(lrs)
    assert lrs.argmax() == 5 * n_iter and lrs[0] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.001)
    assert lrs[5 * n_iter // 2] == pytest.approx((0.001 + 0.1) / 2)                         # straight lines
    down = 5 * n_iter + (24 * n_iter - 1 - 5 * n_iter) // 4                              # a quarter of the way down
    assert lrs[down] == pytest.approx(0.1 - (0.1 - 0.001) * (down - 5 * n_iter) / (24 * n_iter - 1 - 5 * n_iter))


def test_bad_schedule_arguments(arrays, tmp_path):
    learn = tiny_learner(arrays, tmp_path)
    with pytest.raises(UserError, match="peak_epoch"):
        learn.fit_one_cycle_peak(3, 1e-4, 1e-2, peak_epoch=3)
    with pytest.raises(UserError, match="lr_min < lr_max"):
        learn.fit_one_cycle_peak(3, 1e-2, 1e-4, peak_epoch=1)


def test_lr_find_restores_model_and_optimizer(arrays, tmp_path):
    learn = tiny_learner(arrays, tmp_path, lr_find_iters=8)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    b, found = find_bounds(learn, learn.recipe)
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(learn.recorder.lrs) == 8 and learn.recorder.lrs[0] < learn.recorder.lrs[-1]
    assert set(found) == {"minimum", "steep", "valley", "slide"}
    assert b.lr_max == pytest.approx(found["minimum"]) and b.lr_min == pytest.approx(b.lr_max / 100)
    assert not any("grad_avg" in st or "sqr_avg" in st for st in learn.opt.state_dict()["state"])  # Adam reset


@pytest.mark.parametrize("iters, passes, want", [(100, 8, 32), (100, 2, 30), (20, 8, 20), (100, 20, 80)])
def test_range_test_length_on_small_data(arrays, tmp_path, iters, passes, want):
    """docs/usage.md: the range test runs min(lr_find_iters, max(30, lr_find_passes x batches an epoch)) batches.
    40 training images in batches of 10: 4 batches an epoch, so 8 passes are 32 batches, 2 passes the floor 30."""
    learn = tiny_learner(arrays, tmp_path, lr_find_iters=iters, lr_find_passes=passes, lr_find_end=1e-4, width=0.125,
                         lr_rule="steep")  # a curve still falling: a rule without the turn-up check
    with learn.no_bar(): learn.lr_bounds(show_plot=False)     # an LR too small to diverge: fastai runs every batch
    assert len(learn.recorder.lrs) == want


def known_curve():
    "A range-test curve: steepest fall between LR 10^-3.05 and 10^-3, lowest loss just past 10^-1.5, then a sharp rise."
    lrs = np.logspace(-6, 1, 141)                                   # 0.05 decades apart
    x = np.log10(lrs)
    return lrs, 2 - 1 / (1 + np.exp(-4 * (x + 3.025))) + 5 * np.clip(x + 1.5, 0, None) ** 2


@pytest.mark.parametrize("rule", ["minimum", "steep", "valley", "slide"])
def test_every_lr_rule_gives_lrmax_directly(arrays, tmp_path, monkeypatch, rule):
    """README: LRMAX is fastai's suggestion itself, never divided again; LRMIN = LRMAX / lr_min_div. The formulas
    on fastai's part of the curve (it drops the first tenth and the last five points): minimum = LR of the lowest
    loss / 10; steep = LR where the loss falls fastest per decade; valley and slide as fastai computes them."""
    from fastai.callback import schedule as fs
    from fastai.learner import Learner
    lrs, losses = known_curve()
    def fake_fit(self, n_epoch, cbs=None, **kwargs):                # what fastai's finder leaves in the recorder
        self.recorder.lrs, self.recorder.losses = list(lrs), [torch.tensor(float(x)) for x in losses]
    monkeypatch.setattr(Learner, "fit", fake_fit)
    learn = tiny_learner(arrays, tmp_path, lr_rule=rule, lr_find_iters=141, lr_find_passes=1000)
    b, _ = find_bounds(learn, learn.recipe)
    l, y = lrs[14:-5], losses[14:-5]
    slope = np.diff(y) / np.diff(np.log(l))
    want = {"minimum": l[np.argmin(y)] / 10, "steep": l[np.argmin(slope)],
            "valley": fs.valley(torch.tensor(l), torch.tensor(y), 141)[0],
            "slide": fs.slide(torch.tensor(l), torch.tensor(y), 141)[0]}[rule]
    assert b.lr_max == pytest.approx(want, rel=1e-6) and b.lr_min == pytest.approx(want / 100, rel=1e-6)
    assert b.rule == rule
    if rule == "minimum": assert b.lr_max == pytest.approx(10 ** -1.5 / 10, rel=0.13)   # one grid step off at most
    if rule == "steep": assert b.lr_max == pytest.approx(1e-3, rel=0.13)


def test_compiled_training_saves_plain_weights(arrays, tmp_path):
    from fastresnet.device import CompileModel
    from fastresnet.resume import RunCheckpoint, load_checkpoint
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

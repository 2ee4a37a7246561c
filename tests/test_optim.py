"""torch's fused / foreach AdamW behind fastai's OptimWrapper: Adam's formula on hand-computed values, the
recipe's decay rules, fastai's scheduler driving lr and beta1, agreement with fastai's Adam (resume: test_resume.py)."""
import copy

import pytest
import torch
from fastai.callback.core import Callback
from fastai.optimizer import Adam
from fastai.torch_core import norm_bias_params

from fastresnet.config import Recipe
from fastresnet.data import recipe_dls
from fastresnet.learner import build_learner
from fastresnet.model import CustomResNet
from fastresnet.optim import TorchAdam

from conftest import make_arrays

IMPLS = ["fused", "foreach"]


@pytest.mark.parametrize("impl", IMPLS)
def test_one_step_is_adams_formula(impl):
    "Step 1 with gradient g: both moments debias to g and g², so p -= lr·g/(|g|+eps), after p *= 1 - lr·wd."
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = TorchAdam([p], lr=0.1, mom=0.9, sqr_mom=0.99, eps=0.5, wd=0.2, impl=impl)
    p.grad = torch.tensor([2.0, -1.0])
    opt.step()
    want = torch.tensor([1.0 * 0.98 - 0.1 * 2 / 2.5, -2.0 * 0.98 + 0.1 * 1 / 1.5])
    assert torch.allclose(p.detach(), want, atol=1e-7), (p, want)


@pytest.mark.parametrize("impl", IMPLS + ["fastai"])
@pytest.mark.parametrize("wd_bn_bias", [False, True])
def test_decay_reaches_batchnorm_only_with_wd_bn_bias(impl, wd_bn_bias):
    "Zero gradients and lr 0.1, wd 0.5: a decayed parameter is multiplied by exactly 1 - 0.05, the others stay."
    learn = build_learner(recipe_dls(make_arrays(), Recipe(bs=10)),
                          Recipe(bs=10, wd=0.5, adam_impl=impl, wd_bn_bias=wd_bn_bias, width=0.125))
    learn.create_opt()
    learn.opt.set_hypers(lr=0.1, wd=0.5)
    before = {n: p.detach().clone() for n, p in learn.model.named_parameters()}
    for p in learn.model.parameters(): p.grad = torch.zeros_like(p)
    learn.opt.step()
    nb = {id(p) for p in norm_bias_params(learn.model, with_bias=True)}
    for n, p in learn.model.named_parameters():
        factor = 0.95 if (id(p) not in nb or wd_bn_bias) else 1.0
        assert torch.allclose(p.detach(), before[n] * factor, rtol=0, atol=1e-7), (n, factor)
    assert len(nb) > 0 and any(id(p) not in nb for p in learn.model.parameters())


def test_layer_groups_are_the_splitters_and_freeze_trains_the_head(arrays, tmp_path):
    "splitter = fastai's layer groups (body, head): freeze trains fc alone (and BatchNorm, fastai's train_bn)."
    learn = build_learner(recipe_dls(arrays, Recipe(bs=10)), Recipe(bs=10, width=0.125), tmp_path)
    learn.freeze()
    assert len(learn.opt.param_lists) == 2 and len(learn.opt.hypers) == 2
    trains = {n for n, p in learn.model.named_parameters() if p.requires_grad}
    assert trains == {n for n, p in learn.model.named_parameters() if n.startswith("fc.") or ".bn." in n}
    learn.opt.set_hypers(lr=slice(1e-5, 1e-3))                      # discriminative LRs: body, head
    lr_of = {id(p): g["lr"] for g in learn.opt.opt.param_groups for p in g["params"]}
    assert lr_of[id(learn.model.prep.conv.weight)] == lr_of[id(learn.model.layer3.res.branch.b.bn.bias)] == 1e-5
    assert lr_of[id(learn.model.fc.weight)] == lr_of[id(learn.model.fc.bias)] == 1e-3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("decouple", [True, False])
def test_matches_fastais_adam_under_a_changing_lr_and_beta1(impl, decouple):
    """Five steps with lr and beta1 changed before each, decay (decoupled, or L2 in the gradient) on weights only:
    the same weights as fastai's Adam to float rounding."""
    torch.manual_seed(0)
    m0 = CustomResNet(width=0.25)
    grads = [[torch.randn_like(p) for p in m0.parameters()] for _ in range(5)]
    def run(make):
        m = copy.deepcopy(m0)
        opt = make(m)
        opt.set_hypers(wd=0.8)
        for i, g in enumerate(grads):
            opt.set_hypers(lr=1e-3 * (i + 1), mom=0.95 - 0.02 * i)
            for p, gg in zip(m.parameters(), g): p.grad = gg.clone()
            opt.step()
        return torch.cat([p.detach().flatten() for p in m.parameters()])
    def fastai_adam(m):
        opt = Adam(list(m.parameters()), lr=1e-3, mom=0.95, sqr_mom=0.99, eps=1e-5, decouple_wd=decouple)
        for p in norm_bias_params(m, True): opt.state[p]["do_wd"] = False
        return opt
    a = run(fastai_adam)
    def torch_adam(m):
        opt = TorchAdam(list(m.parameters()), lr=1e-3, mom=0.95, sqr_mom=0.99, eps=1e-5, decouple_wd=decouple,
                        impl=impl)
        for p in norm_bias_params(m, True): opt.state[p]["do_wd"] = False   # what fastai's Learner does
        return opt
    b = run(torch_adam)
    moved = (a - torch.cat([p.detach().flatten() for p in m0.parameters()])).abs().max()
    assert moved > 1e-3 and (a - b).abs().max() < 1e-6


class TorchGroups(Callback):
    "What torch's optimizer itself holds at each training step: lr, beta1 and weight decay of both groups."
    order = 99
    def __init__(self): self.seen = []
    def after_batch(self):
        if self.training: self.seen.append([(g["lr"], g["betas"][0], g["weight_decay"])
                                            for g in self.opt.opt.param_groups])


def test_fastais_one_cycle_drives_torchs_param_groups():
    r = Recipe(bs=10, epochs=4, peak_epoch=1, wd=0.8, width=0.125)
    learn = build_learner(recipe_dls(make_arrays(), r), r)
    spy = TorchGroups()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle_peak(4, 1e-4, 1e-2, peak_epoch=1, cbs=spy)
    steps = len(spy.seen)
    assert steps == 4 * 4
    lrs = [s[0][0] for s in spy.seen]
    assert lrs[0] == pytest.approx(1e-4) and lrs[4] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-4)
    assert spy.seen[4][0][1] == pytest.approx(0.85) and spy.seen[0][0][1] == pytest.approx(0.95)  # beta1 cycles
    assert all([g[2] for g in s] == [0.8, 0.0, 0.8, 0.0] for s in spy.seen)   # body, head: decay on weights only
    assert all(len({g[:2] for g in s}) == 1 for s in spy.seen)

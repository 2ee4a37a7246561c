"""The run's callbacks, each checked against its rule on known inputs: the weight average (EMA: torch's
AveragedModel with an exponential decay, from the warmup epoch on, tested and exported instead of the last weights;
its resume: test_resume.py)."""

import torch
from fastai.callback.core import Callback

from fastresnet.callbacks import EMA
from fastresnet.config import Recipe
from fastresnet.data import recipe_dls
from fastresnet.learner import build_learner

TINY = ["--width", "0.25", "--bs", "10", "--epochs", "3", "--lr-max", "0.003", "--no-tta"]


class Record(Callback):
    "The live weights and BatchNorm statistics after every optimizer step."
    order = 50
    def before_fit(self): self.seen = []
    def after_step(self): self.seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


def test_the_average_follows_its_formula_from_the_warmup_and_replaces_the_weights_after_the_fit(arrays, tmp_path):
    r = Recipe(bs=10, width=0.25)
    learn = build_learner(recipe_dls(arrays, r), r, tmp_path)
    rec = Record()
    learn.fit(3, 1e-3, cbs=[EMA(0.8, warmup=1), rec])   # 4 steps an epoch: steps 5..12 are averaged
    seen = rec.seen[4:]
    expected = dict(seen[0])                                      # the first update copies the weights
    for w in seen[1:]:
        expected = {k: 0.8 * e + 0.2 * w[k] if e.is_floating_point() else w[k] for k, e in expected.items()}
    final = learn.model.state_dict()
    for k, v in expected.items():
        if v.is_floating_point(): assert torch.allclose(final[k], v, atol=1e-6), k
    assert not torch.equal(final["fc.weight"], rec.seen[-1]["fc.weight"])                 # not the last weights
    assert not torch.equal(final["prep.bn.running_mean"], rec.seen[-1]["prep.bn.running_mean"])   # BN averaged too

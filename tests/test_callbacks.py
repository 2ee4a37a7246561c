"""The run's callbacks, each checked against its rule on known inputs: the weight average (EMA: torch's
AveragedModel with an exponential decay, from the warmup epoch on, tested and exported instead of the last weights,
and resumable)."""
import json
import signal

import pytest
import torch
from fastai.callback.core import Callback
from safetensors.torch import load_file

from fastresnet.callbacks import EMA
from fastresnet.cli import main
from fastresnet.config import Recipe
from fastresnet.data import cifar_dls
from fastresnet.learner import build_learner
from interrupt import install

TINY = ["--width", "0.25", "--bs", "10", "--epochs", "3", "--lr-max", "0.003", "--no-tta"]


class Record(Callback):
    "The live weights and BatchNorm statistics after every optimizer step."
    order = 50
    def before_fit(self): self.seen = []
    def after_step(self): self.seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


def test_the_average_follows_its_formula_from_the_warmup_and_replaces_the_weights_after_the_fit(arrays, tmp_path):
    r = Recipe(bs=10, width=0.25)
    learn = build_learner(cifar_dls(arrays, r), r, tmp_path)
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


@pytest.mark.slow
def test_an_averaged_run_resumes_to_the_same_exported_average(tiny_folder, tmp_path, monkeypatch):
    args = ["--data", str(tiny_folder), *TINY, "--ema", "0.9", "--ema-warmup", "1"]
    base = tmp_path / "whole"
    assert main(["train", "--out", str(base), *args]) == 0
    run = tmp_path / "stopped"
    install(monkeypatch.setattr, "train_batch", 10, signal.SIGTERM)   # 4 batches an epoch: in the third
    assert main(["train", "--out", str(run), *args]) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    a, b = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the average differs from the uninterrupted run's"
    ck = torch.load(run / "checkpoint.pth", weights_only=False)
    assert not torch.equal(ck["model"]["fc.weight"], a["fc.weight"])           # exported: the average, not the last
    assert torch.equal(ck["ema"]["module.fc.weight"], a["fc.weight"])
    assert json.loads((base / "final.json").read_text()) == json.loads((run / "final.json").read_text())

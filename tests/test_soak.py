"""A soak that proves resume: one tiny run is stopped by SIGTERM at ten points (drawn at random, and
always including the LR range test, the validation pass and the middle of a checkpoint write) and
resumed after each; its final weights must equal an uninterrupted run's bit for bit."""
import json
import os
import random
import signal

import pytest
import torch
from fastai.callback.core import Callback
from safetensors.torch import load_file

import fastresnet.learner as learner_mod
import fastresnet.run as run_files
import fastresnet.train as T
from fastresnet.cli import main

pytestmark = pytest.mark.slow
ARGS = ["--bs", "10", "--epochs", "3", "--lr-find-iters", "6", "--lr-find-end", "1", "--no-tta"]


class SigtermAt(Callback):
    "Send this process SIGTERM at the n-th event of one kind: what `kill -TERM` does at that moment."
    order = -20
    def __init__(self, kind: str, n: int): self.kind, self.n, self.seen = kind, n, 0

    def _tick(self, kind):
        if kind == self.kind:
            self.seen += 1
            if self.seen == self.n: os.kill(os.getpid(), signal.SIGTERM)

    def after_batch(self):
        self._tick("range_test_batch" if hasattr(self.learn, "lr_finder") else
                   "train_batch" if self.training else "valid_batch")


def next_point(rng: random.Random, i: int, range_test_ahead: bool) -> tuple[str, int]:
    "The i-th interruption: the three that must be covered first, then random ones the rest of the run still reaches."
    must = [("range_test_batch", 3), ("valid_batch", 1), ("checkpoint_write", 1)]
    if i < len(must): return must[i]
    kinds = ["train_batch", "valid_batch", "checkpoint_write"] + ["range_test_batch"] * range_test_ahead
    return rng.choice(kinds), rng.randint(1, 2)   # per epoch: 4 training batches, 2 test batches, 1 checkpoint


def test_ten_interruptions_then_the_same_weights(tiny_folder, tmp_path, monkeypatch, capsys):
    base = tmp_path / "uninterrupted"
    assert main(["train", "--data", str(tiny_folder), "--out", str(base), *ARGS]) == 0
    run, build = tmp_path / "interrupted", T.cifar_learner
    rng, codes = random.Random(0), []
    for i in range(10):
        kind, n = next_point(rng, i, range_test_ahead=not (run / "checkpoint.pth").exists())
        calls = {"n": 0}
        def save_then_sigterm(obj, path, kind=kind, n=n):           # the signal lands mid-way through atomic_write
            calls["n"] += 1
            def write(f):
                torch.save(obj, f)
                if kind == "checkpoint_write" and calls["n"] == n: os.kill(os.getpid(), signal.SIGTERM)
            run_files.atomic_write(path, write)
        def setup_with_sigterm(*a, kind=kind, n=n, **k):
            learn = build(*a, **k)
            if kind != "checkpoint_write": learn.add_cb(SigtermAt(kind, n))
            return learn
        monkeypatch.setattr(T, "cifar_learner", setup_with_sigterm)
        monkeypatch.setattr(learner_mod, "atomic_torch_save", save_then_sigterm)
        start = ["train", "--data", str(tiny_folder), "--out", str(run), *ARGS]
        args = ["train", "--resume", str(run)] if run.exists() else start
        codes.append(main(args))
        monkeypatch.undo()
        if (run / "run.json").exists(): json.loads((run / "run.json").read_text())     # never left half-written
        assert codes[-1] == 130, (i, kind, n, codes)                                 # each point was reached
    codes.append(main(["train", "--resume", str(run)]))                            # finish without interruptions
    assert codes[-1] == 0
    a, b = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"
    accuracy = lambda folder: json.loads((folder / "final.json").read_text())["accuracy"]
    assert accuracy(run) == accuracy(base)

"""Resume's promise: a run stopped anywhere and resumed ends with the weights, metrics and schedule of an
uninterrupted run, bit for bit. A run stopped by Ctrl-C at an epoch's start (its clock goes on over sessions); and
soaks: one tiny run stopped by SIGTERM (in this process), another by SIGKILL (a real `kill -9` of a child process)
at ten points each (drawn at random, and always including the LR range test, the validation pass and the middle of
a checkpoint write), resumed after each."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback
from interrupt import install, next_point
from safetensors.torch import load_file

from fastresnet.cli import main
from fastresnet.config import Recipe
from fastresnet.resume import load_checkpoint
from fastresnet.train import run as train_run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--bs", "10", "--epochs", "3", "--lr-find-iters", "6", "--lr-find-end", "1", "--no-tta"]


class Interrupt(Callback):
    "Ctrl-C at the start of epoch `at`."
    def __init__(self, at): self.at = at
    def before_epoch(self):
        if self.epoch == self.at: raise KeyboardInterrupt


class Sleep(Callback):
    "A slow epoch: `seconds` more at the end of each (before its checkpoint)."
    def __init__(self, seconds): self.seconds = seconds
    def after_epoch(self): time.sleep(self.seconds)


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_folder, tmp_path):
    r = Recipe(bs=10, epochs=4, peak_epoch=1, lr_max=3e-3)
    train_run(r, tmp_path / "full", str(tiny_folder), log=lambda *a: None)
    with pytest.raises(KeyboardInterrupt):
        train_run(r, tmp_path / "cut", str(tiny_folder), extra_cbs=[Interrupt(2), Sleep(5)], log=lambda *a: None)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pth")["epoch"] == 1
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "stopped"
    train_run(None, tmp_path / "cut", resume=True, log=lambda *a: None)
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert info["status"] == "finished" and info["seconds"] >= 10   # the first session's two 5-second epochs count
    schedule = lambda run: json.loads((tmp_path / run / "schedule.json").read_text())
    assert schedule("cut") == schedule("full") and len(schedule("full")["lr"]) == 4 * 4   # per-batch LR and beta1
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pth")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]: assert torch.equal(a["model"][k], b["model"][k]), k   # bit-identical weights
    strip = lambda h: [{k: v for k, v in row.items() if k != "time"} for row in h]
    assert strip(a["history"]) == strip(b["history"])            # and identical metrics history


def test_ten_interruptions_then_the_same_weights(tiny_folder, tmp_path, monkeypatch, capsys):
    base = tmp_path / "uninterrupted"
    assert main(["train", "--data", str(tiny_folder), "--out", str(base), *ARGS]) == 0
    run = tmp_path / "interrupted"
    rng, codes = random.Random(0), []
    for i in range(10):
        kind, n = next_point(rng, i, range_test_ahead=not (run / "checkpoint.pth").exists())
        install(monkeypatch.setattr, kind, n, signal.SIGTERM)
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


def test_ten_sigkills_then_the_same_weights_and_no_leftovers(tiny_folder, tmp_path):
    """`kill -9` for real, at the same kinds of points: no handler runs, temporary files stay where the process
    died. Each `--resume` clears them, and the final weights equal an uninterrupted run's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    def fastresnet(*args, point=None):
        pre = [str(ROOT / "tests" / "interrupt.py"), point[0], str(point[1]), "SIGKILL", "--"] if point else \
            ["-m", "fastresnet.cli"]
        return subprocess.run([sys.executable, *pre, *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=600)
    base, run = tmp_path / "uninterrupted", tmp_path / "killed"
    assert fastresnet("train", "--data", tiny_folder, "--out", base, *ARGS).returncode == 0
    rng, left = random.Random(1), []
    for i in range(10):
        point = next_point(rng, i, range_test_ahead=not (run / "checkpoint.pth").exists())
        args = ["--resume", run] if run.exists() else ["--data", tiny_folder, "--out", run, *ARGS]
        p = fastresnet("train", *args, point=point)
        assert p.returncode == -signal.SIGKILL, (i, point, p.stderr[-2000:])       # died at the point, by the signal
        if point[0] == "checkpoint_write": left += [f.name for f in run.glob(".checkpoint.pth.*.tmp")]
    assert left, "no kill landed inside a checkpoint write"
    assert fastresnet("train", "--resume", run).returncode == 0
    a, b = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"
    assert [f.name for f in run.iterdir() if f.name.startswith(".")] == []              # the killed writers' temp files
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []          # no lock, no half-made folder

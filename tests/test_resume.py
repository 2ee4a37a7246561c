"""Resume's promise: a run stopped anywhere and resumed ends with the weights, metrics and schedule of an
uninterrupted run, bit for bit, whatever the run keeps (a weight average, fastai's Adam, a fine-tune's two phases);
a finished run whose checkpoint was removed is refused. A run stopped by Ctrl-C at an epoch's start (its clock goes
on over sessions); and soaks: one tiny run stopped by SIGTERM (in this process), another by SIGKILL (a real
`kill -9` of a child process) at ten points each (drawn at random, and always including the LR range test, the
validation pass and a checkpoint write of the project's own writer: SIGTERM before its rename, and in the child
the kernel stopping the write after 1 MiB), resumed after each. All at width 0.25 (the same code path as width 1:
only the channel counts differ), so a checkpoint is 5 MB, not 79."""
import json
import random
import re
import signal
import time

import pytest
import torch
from fastai.callback.core import Callback
from fastai.learner import load_learner
from conftest import pictures
from interrupt import CUT, next_point, signal_at
from safetensors.torch import load_file

from fastresnet.cli import main
from fastresnet.config import Recipe
from fastresnet.resume import load_checkpoint
from fastresnet.train import run as train_run

pytestmark = pytest.mark.slow
ARGS = ["--width", "0.25", "--bs", "10", "--epochs", "3", "--lr-find-iters", "6", "--lr-find-end", "1", "--no-tta"]
EMA_ARGS = ["--width", "0.25", "--bs", "10", "--epochs", "3", "--lr-max", "0.003", "--no-tta"]
FT_ARGS = ["--bs", "10", "--lr-find-iters", "6", "--lr-find-end", "1", "--no-tta"]


class Interrupt(Callback):
    "Ctrl-C at the start of epoch `at`."
    def __init__(self, at): self.at = at
    def before_epoch(self):
        if self.epoch == self.at: raise KeyboardInterrupt


class Clock(Callback):
    """When the first epoch this session trains ended (just before `RunCheckpoint`, order 60, took the time it
    records), and the run time that checkpoint holds (read before the next epoch)."""
    order = 59
    def __init__(self, run_dir): self.run_dir, self.ended, self.counted, self.skipped = run_dir, None, None, False
    def after_cancel_epoch(self): self.skipped = True     # an epoch the resumed fit passes through
    def after_epoch(self):
        if self.skipped: self.skipped = False
        elif self.ended is None: self.ended = time.time()
    def before_epoch(self):
        if self.ended is not None and self.counted is None:
            self.counted = load_checkpoint(self.run_dir / "checkpoint.pth")["seconds"]


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_folder, tmp_path):
    r = Recipe(bs=10, epochs=4, peak_epoch=1, lr_max=3e-3, width=0.25)
    train_run(r, tmp_path / "full", str(tiny_folder), log=lambda *a: None)
    with pytest.raises(KeyboardInterrupt):
        train_run(r, tmp_path / "cut", str(tiny_folder), extra_cbs=[Interrupt(2)], log=lambda *a: None)
    first = load_checkpoint(tmp_path / "cut" / "checkpoint.pth")
    assert first["epoch"] == 1 and first["seconds"] > 0
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "stopped"
    clock, start = Clock(tmp_path / "cut"), time.time()
    train_run(None, tmp_path / "cut", resume=True, extra_cbs=[clock], log=lambda *a: None)
    # the resumed session's first checkpoint counts the first session's time too: a clock restarted at the resume
    # would count at most `ended - start` (and a few ms), one going on `first["seconds"]` more (less ~15 ms, measured)
    margin = clock.counted - (clock.ended - start)
    assert margin > first["seconds"] / 2, (clock.counted, clock.ended - start, first["seconds"])
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert info["status"] == "finished" and info["seconds"] >= clock.counted
    schedule = lambda run: json.loads((tmp_path / run / "schedule.json").read_text())
    assert schedule("cut") == schedule("full") and len(schedule("full")["lr"]) == 4 * 4   # per-batch LR and beta1
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pth")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]: assert torch.equal(a["model"][k], b["model"][k]), k   # bit-identical weights
    strip = lambda h: [{k: v for k, v in row.items() if k != "time"} for row in h]
    assert strip(a["history"]) == strip(b["history"])            # and identical metrics history


def test_ten_interruptions_then_the_same_weights(tiny_folder, tmp_path, capsys):
    base = tmp_path / "uninterrupted"
    assert main(["train", "--data", str(tiny_folder), "--out", str(base), *ARGS]) == 0
    run = tmp_path / "interrupted"
    rng, codes = random.Random(0), []
    for i in range(10):
        kind, n = next_point(rng, i, range_test_ahead=not (run / "checkpoint.pth").exists())
        start = ["train", "--data", str(tiny_folder), "--out", str(run), *ARGS]
        args = ["train", "--resume", str(run)] if run.exists() else start
        with signal_at(kind, n, signal.SIGTERM): codes.append(main(args))
        if (run / "run.json").exists(): json.loads((run / "run.json").read_text())     # never left half-written
        assert codes[-1] == 130, (i, kind, n, codes)                                 # each point was reached
        assert [f.name for f in run.iterdir() if f.name.startswith(".")] == [], (i, kind)  # the handler cleaned up
        if kind == "checkpoint_write":   # stopped before the rename: the previous checkpoint (if any) is whole
            assert not (run / "checkpoint.pth").exists() or load_checkpoint(run / "checkpoint.pth")["epoch"] >= 0
    codes.append(main(["train", "--resume", str(run)]))                            # finish without interruptions
    assert codes[-1] == 0
    a, b = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"
    accuracy = lambda folder: json.loads((folder / "final.json").read_text())["accuracy"]
    assert accuracy(run) == accuracy(base)


def test_ten_sigkills_then_the_same_weights_and_no_leftovers(tiny_folder, tmp_path, fork_server):
    """`kill -9` for real, at the same kinds of points: no handler runs, temporary files stay where the process
    died. At a checkpoint the kernel itself stops the project's writer after 1 MiB (RLIMIT_FSIZE) and kills the
    process (SIGXFSZ): half a checkpoint in its temporary file. Each `--resume` clears what was left, and the final
    weights equal an uninterrupted run's. Each session is a real process (tests/forkserver.py: forked after the
    imports, so eleven sessions do not pay eleven imports)."""
    def fastresnet(*args, point=None):
        sig = "SIGXFSZ" if point and point[0] == "checkpoint_cut" else "SIGKILL"
        return fork_server.run(args, point=(*point, sig) if point else None)
    base, run = tmp_path / "uninterrupted", tmp_path / "killed"
    assert fastresnet("train", "--data", tiny_folder, "--out", base, *ARGS).returncode == 0
    assert (base / "checkpoint.pth").stat().st_size > 2 * CUT                 # the cut lands inside the file
    left = lambda: {f.name for f in run.iterdir() if f.name.startswith(".")} if run.exists() else set()
    rng, cut, cleared = random.Random(1), [], 0
    for i in range(10):
        point = next_point(rng, i, range_test_ahead=not (run / "checkpoint.pth").exists(), checkpoint="checkpoint_cut")
        resume = (run / "checkpoint.pth").exists()
        args = ["--resume", run] if run.exists() else ["--data", tiny_folder, "--out", run, *ARGS]
        stale = left()
        p = fastresnet("train", *args, point=point)
        died = signal.SIGXFSZ if point[0] == "checkpoint_cut" else signal.SIGKILL
        assert p.returncode == -died, (i, point, p.returncode, p.stderr[-2000:])   # died at the point, by the signal
        assert not stale & left(), (i, stale & left())        # what the last kill left went when the folder was taken
        cleared += bool(stale) and resume                      # (taken by a resume, not a new start over the folder)
        if point[0] == "checkpoint_cut":
            cut += [f.stat().st_size for f in run.glob(".checkpoint.pth.*.tmp")]
            if (run / "checkpoint.pth").exists(): load_checkpoint(run / "checkpoint.pth")   # the last one, whole
    assert CUT in cut, f"no write was cut inside a checkpoint: {cut}"     # a temporary file holding the first 1 MiB
    assert cleared, "no resume found a cut checkpoint's temporary file to clear"
    assert fastresnet("train", "--resume", run).returncode == 0
    a, b = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"
    assert [f.name for f in run.iterdir() if f.name.startswith(".")] == []              # the killed writers' temp files
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []          # no lock, no half-made folder


# ---------------------------------------------------------------- what a run keeps, resumed
def test_an_averaged_run_resumes_to_the_same_exported_average(tiny_folder, tmp_path):
    args = ["--data", str(tiny_folder), *EMA_ARGS, "--ema", "0.9", "--ema-warmup", "1"]
    base = tmp_path / "whole"
    assert main(["train", "--out", str(base), *args]) == 0
    run = tmp_path / "stopped"
    with signal_at("train_batch", 10, signal.SIGTERM):            # 4 batches an epoch: in the third
        assert main(["train", "--out", str(run), *args]) == 130
    assert main(["train", "--resume", str(run)]) == 0
    a, b = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the average differs from the uninterrupted run's"
    ck = torch.load(run / "checkpoint.pth", weights_only=False)
    assert not torch.equal(ck["model"]["fc.weight"], a["fc.weight"])           # exported: the average, not the last
    assert torch.equal(ck["ema"]["module.fc.weight"], a["fc.weight"])
    assert json.loads((base / "final.json").read_text()) == json.loads((run / "final.json").read_text())


def test_a_run_checkpointed_with_fastais_adam_resumes_with_it(tiny_folder, tmp_path):
    "A run folder from before `adam_impl` existed (no such key, fastai's optimizer state) still resumes."
    r = Recipe(bs=10, epochs=3, peak_epoch=1, lr_max=3e-3, adam_impl="fastai", width=0.25)
    with pytest.raises(KeyboardInterrupt):
        train_run(r, tmp_path / "old", str(tiny_folder), extra_cbs=[Interrupt(1)], log=lambda *a: None)
    settings = tmp_path / "old" / "settings.ini"
    settings.write_text(re.sub(r"(?m)^adam_impl\b.*\n", "", settings.read_text()))
    assert "adam_impl" not in settings.read_text()
    assert "hypers" in load_checkpoint(tmp_path / "old" / "checkpoint.pth")["opt"]   # fastai's optimizer state
    res = train_run(None, tmp_path / "old", resume=True, log=lambda *a: None)
    assert res["n_images"] == 20 and json.loads((tmp_path / "old" / "run.json").read_text())["status"] == "finished"


def test_a_fine_tune_interrupted_in_each_phase_resumes_to_the_same_weights_and_freeze_froze(source_run, tmp_path,
                                                                                             capsys):
    new = tmp_path / "flowers"
    pictures(new, ["daisy", "rose", "tulip"], 12)
    args = ["--data", str(new), "--init", str(source_run), "--epochs", "2", *FT_ARGS]
    base = tmp_path / "whole"
    assert main(["train", "--out", str(base), *args]) == 0
    run = tmp_path / "stopped"
    with signal_at("train_batch", 5, signal.SIGTERM):                  # 3 batches an epoch: in the second epoch
        assert main(["train", "--out", str(run), *args]) == 130
    ck = torch.load(run / "checkpoint.pth", weights_only=False)
    assert ck["epoch"] == 0                                            # the head's epoch was saved ...
    src = load_file(source_run / "model.safetensors")
    convs = [k for k in src if k.endswith("conv.weight")]
    assert all(torch.equal(ck["model"][k], src[k]) for k in convs)     # ... with the body exactly the source's
    assert not torch.equal(ck["model"]["fc.weight"], load_file(base / "model.safetensors")["fc.weight"])
    with signal_at("train_batch", 4, signal.SIGTERM):                  # resumed: in the last epoch
        assert main(["train", "--resume", str(run)]) == 130
    assert torch.load(run / "checkpoint.pth", weights_only=False)["epoch"] == 1
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "Resuming" in capsys.readouterr().out
    a, b = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the whole run"
    assert json.loads((run / "schedule.json").read_text()) == json.loads((base / "schedule.json").read_text())


def test_no_keep_checkpoint_drops_it_after_the_export_and_resume_says_finished(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_folder), "--out", str(out), "--epochs", "2", "--peak-epoch", "1",
            "--lr-max", "0.003", "--no-tta", "--width", "0.25", "--bs", "10"]
    assert main([*args, "--no-keep-checkpoint"]) == 0
    assert "Removed" in capsys.readouterr().out and not (out / "checkpoint.pth").exists()
    assert (out / "model.safetensors").is_file() and json.loads((out / "run.json").read_text())["status"] == "finished"
    img = tiny_folder / "test" / "cat" / "0003.png"
    assert load_learner(out / "model.pkl").predict(img)[0] in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                               "frog", "horse", "ship", "truck")
    before = sorted(p.name for p in out.iterdir())
    assert main(["train", "--resume", str(out)]) == 2            # not a fresh start over the finished run
    err = capsys.readouterr().err
    assert "has finished" in err and "nothing to resume" in err
    assert sorted(p.name for p in out.iterdir()) == before       # nothing touched
    assert main([*args[:3], "--out", str(tmp_path / "kept"), *args[5:]]) == 0   # the default keeps it
    assert (tmp_path / "kept" / "checkpoint.pth").is_file()

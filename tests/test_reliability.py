"""Bad input gets one clear paragraph and a non-zero exit; interruption and failure lose nothing."""
import errno
import json
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from PIL import Image

import fastresnet.device as device_mod
import fastresnet.run as run_files
from fastresnet.cli import main
from fastresnet.config import Recipe, UserError
from fastresnet.resume import load_checkpoint
from fastresnet.run import atomic_torch_save
from fastresnet.train import run as train_run

QUIET = dict(log=lambda *a: None)


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("args, match", [
    (["--epochs", "0"], "`epochs` is 0"),
    (["--bs", "-5"], "`bs` is -5"),
    (["--epochs", "5", "--peak-epoch", "5"], "peak_epoch"),
    (["--epochs", "1"], "`epochs` is 1, but it must be at least 2"),
    (["--lr-max", "0.01", "--lr-min", "0.1"], "LRMIN"),
    (["--lr-min", "0.001"], "without `lr_max`"),
    (["--subset", "1000"], "larger than the 40 training images"),
    (["--precision", "bf16"], "avx512_bf16 or amx_bf16"),
    (["--precision", "fp16"], "fp16 needs a CUDA GPU"),
    (["--precision", "fp8"], "choose one of"),
])
def test_bad_flags_exit_2_with_a_message(tiny_folder, tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the bf16/fp16 cases: CPU-only machines,
    monkeypatch.setattr(device_mod, "cpu_native_bf16", lambda: False)  # without bf16 units
    code, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2 and match in err and "Traceback" not in err


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epoch", "3"])
    assert e.value.code == 2


def test_missing_data_and_bad_settings_file(tmp_path, capsys):
    code, err = run_cli(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "s.ini").write_text("[train]\nbs = lots\n")
    code, err = run_cli(["train", "--settings", str(tmp_path / "s.ini")], capsys)
    assert code == 2 and "not a valid int" in err


def test_existing_run_dir_and_unwritable_out(tiny_folder, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "old.txt").write_text("x")
    code, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    (tmp_path / "afile").write_text("x")
    code, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "afile" / "r")], capsys)
    assert code == 2 and "Cannot write to the run folder" in err


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    code, err = run_cli(["train", "--resume", str(tmp_path / "r")], capsys)
    assert code == 2 and "run.json is missing" in err


class NaNAt(Callback):
    "Make the training loss non-finite in epoch `at` (what a too-large LR does, made deterministic)."
    order = -10
    def __init__(self, at): self.at = at
    def after_loss(self):
        if self.epoch == self.at: self.learn.loss = self.loss * float("nan")


def test_divergence_stops_at_once_naming_lr_and_epoch_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path):
    r = Recipe(bs=10, epochs=3, peak_epoch=1, lr_max=1e-3)
    with pytest.raises(UserError, match=r"epoch 2 \(batch 1\) at LR [0-9.e-]+.*smaller LRMAX") as e:
        train_run(r, tmp_path / "r", str(tiny_folder), extra_cbs=[NaNAt(1)], **QUIET)
    assert "--lr-max" not in str(e.value) and e.value.hint.startswith("(--lr-max")   # flag advice is the CLI's
    ck = load_checkpoint(tmp_path / "r" / "checkpoint.pth")
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)
    def full_disk(obj, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run_files.torch, "save", full_disk)
    with pytest.raises(OSError):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]   # no temporary file left behind


@pytest.mark.slow
def test_sigterm_leaves_a_resumable_checkpoint(tiny_folder, tmp_path):
    out = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "fastresnet.cli", "train", "--data", str(tiny_folder),
                          "--out", str(out),
                          "--bs", "10", "--epochs", "50", "--lr-max", "0.001"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pth").exists() and time.time() < deadline and p.poll() is None: time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert f"fastresnet train --resume {out}" in err
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] >= 0
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"   # not "started", as if still running


# ---------------------------------------------------------------- model files and prediction input
@pytest.fixture(scope="module")
def trained(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "r"
    train_run(Recipe(bs=10, epochs=2, peak_epoch=1, lr_max=1e-3), out, str(tiny_folder), **QUIET)
    return out


@pytest.mark.parametrize("make, match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"garbage"), "could not be loaded"),
    (lambda p: p.write_bytes(pickle.dumps({"not": "a learner"})), "not a fastai Learner|could not be loaded"),
])
def test_bad_model_files(tmp_path, capsys, tiny_folder, make, match):
    f = tmp_path / "model.pkl"
    make(f)
    code, err = run_cli(["predict", str(tiny_folder / "test" / "cat" / "0003.png"), "--model", str(f)], capsys)
    assert code == 2 and any(m in err for m in match.split("|")) and "Traceback" not in err


def test_truncated_model_files(trained, tmp_path, capsys, tiny_folder):
    img = str(tiny_folder / "test" / "cat" / "0003.png")
    for name in ("model.pkl", "model.safetensors"):
        raw = (trained / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 3])
        code, err = run_cli(["predict", img, "--model", str(tmp_path / name)], capsys)
        assert code == 2 and "truncated" in err, err


def test_weights_only_file_predicts_like_the_pickle(trained, tiny_folder, capsys):
    img = str(tiny_folder / "test" / "dog" / "0005.png")
    outs = []
    for name in ("model.pkl", "model.safetensors"):
        assert main(["predict", img, "--model", str(trained / name)]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and "\t" in outs[0]


def test_predict_batch_with_bad_and_odd_files(trained, tiny_folder, tmp_path, capsys):
    Image.fromarray(np.zeros((64, 64), np.uint8), "L").save(tmp_path / "big_gray.png")
    (tmp_path / "notes.txt").write_text("not an image")
    files = [str(tiny_folder / "test" / "cat" / "0003.png"), str(tmp_path / "missing.png"), str(tmp_path / "notes.txt"),
             str(tmp_path / "big_gray.png")]
    code = main(["predict", *files, "--model", str(trained / "model.safetensors")])
    out, err = capsys.readouterr()
    assert code == 1                                                  # something was skipped
    lines = out.strip().splitlines()
    assert [l.split("\t")[0] for l in lines] == [files[0], files[3]]  # the good ones, in order
    assert "missing.png does not exist" in err and "notes.txt is corrupt or not an image" in err
    assert "resized to 32x32" in err

"""The command's contract, and what the run folder survives: bad input gets one clear paragraph and exit code 2,
never a traceback; nothing a typo can destroy; interruption, divergence and failure lose nothing; files and logs
people can share. Each test failed before its fix."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from PIL import Image

import fastresnet.device as device_mod
from fastresnet.cli import main
from fastresnet.config import Recipe, UserError
from fastresnet.data import load_arrays
from fastresnet.resume import load_checkpoint
from fastresnet.folder import atomic_torch_save
from fastresnet.train import run as train_run
from interrupt import signal_at, stopped

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda *a: None)


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def finished(trained_run):
    "The session's finished run (width 0.25, 2 epochs), read only: tests that change a run copy it."
    return trained_run


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- data loss and dead ends
def test_overwrite_with_a_typo_leaves_the_finished_run_intact(finished, tmp_path, capsys, tiny_folder):
    run = tmp_path / "b"
    shutil.copytree(finished, run)
    before = snapshot(run)
    code, _, err = run_cli(["train", "--data", str(tmp_path / "typo"), "--out", str(run), "--overwrite"], capsys)
    assert code == 2 and "does not exist" in err and snapshot(run) == before
    code, _, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(run), "--overwrite", "--subset", "5"],
                           capsys)
    assert code == 2 and snapshot(run) == before                    # a bad subset is found after the flags parse
    code, _, _ = run_cli(["train", "--data", str(tiny_folder), "--out", str(run), "--overwrite", "--bs", "10",
                          "--epochs", "2", "--lr-max", "0.002", "--width", "0.25", "--no-tta"], capsys)
    assert code == 0 and json.loads((run / "lr_bounds.json").read_text())["lr_max"] == 0.002  # replaced when valid
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]                     # no leftovers


@pytest.mark.slow
def test_ctrl_c_during_the_range_test_then_resume_works(tiny_folder, tmp_path, capsys):
    "A real Ctrl-C (SIGINT to this process) after the range test's third batch: fastai's lr_find is inside its fit."
    out = tmp_path / "r"
    with signal_at("range_test_batch", 3, signal.SIGINT):
        code, _, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(out), "--bs", "10", "--epochs", "2",
                                "--lr-find-iters", "6", "--lr-find-end", "1", "--width", "0.25", "--no-tta"], capsys)
    assert code == 130 and f"fastresnet train --resume {out}" in err
    assert "no epoch had completed" in err and not (out / "lr_find.json").exists()   # stopped inside the test
    code, out_text, err = run_cli(["train", "--resume", str(out)], capsys)       # the command it named works
    assert code == 0, err
    assert "starting it again" in out_text and (out / "final.json").is_file() and (out / "lr_find.json").is_file()
    assert len(json.loads((out / "lr_find.json").read_text())["lrs"]) == 6   # the whole range test, run again


# ---------------------------------------------------------------- one paragraph, exit 2, no traceback
@pytest.mark.parametrize("args, match", [
    (["--lr-max", "nan"], "finite"), (["--lr-max", "inf"], "finite"), (["--wd", "nan"], "finite"),
    (["--label-smoothing", "nan"], "finite"), (["--eps", "inf"], "finite"),
])
def test_non_finite_values_are_refused_before_any_work(tiny_folder, tmp_path, capsys, args, match):
    code, _, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2 and match in err and not (tmp_path / "r").exists()


def test_out_that_is_a_file(tiny_folder, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "f")], capsys)
    assert code == 2 and "is an existing file" in err


@pytest.mark.parametrize("content, match", [
    (b"[train]\nbs = \xff\xfe12\n", "not UTF-8"),
    (b"[augment]\npad_mode = 100%\n", "choose one of"),           # `%` is a character, not interpolation
    (b"[DEFAULT]\nbs = 12\n", "[DEFAULT]"),
])
def test_settings_file_problems(tmp_path, capsys, content, match):
    (tmp_path / "s.ini").write_bytes(content)
    code, _, err = run_cli(["train", "--settings", str(tmp_path / "s.ini")], capsys)
    assert code == 2 and match in err


def test_a_generic_fastai_learner_is_refused(finished, tmp_path, capsys, tiny_folder):
    from fastai.learner import load_learner
    learn = load_learner(finished / "model.pkl")
    from fastai.torch_core import trainable_params
    learn.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))
    learn.splitter = trainable_params                                  # another model, fastai's default splitter
    learn.path = tmp_path
    learn.export("other.pkl")
    code, _, err = run_cli(["predict", str(tiny_folder / "test" / "cat" / "0003.png"), "--model",
                            str(tmp_path / "other.pkl"), "--allow-pickle"], capsys)
    assert code == 2 and "not one exported by fastresnet" in err


def test_resume_with_data_of_other_classes(finished, tmp_path, capsys, tiny_folder):
    run = tmp_path / "r"
    shutil.copytree(finished, run)
    other = tmp_path / "other"
    shutil.copytree(tiny_folder, other)
    for split in ("train", "test"): (other / split / "cat").rename(other / split / "kitten")
    code, _, err = run_cli(["train", "--resume", str(run), "--data", str(other)], capsys)
    assert code == 2 and "classes" in err and "kitten" in err


def test_cache_folder_that_is_a_file(tiny_folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "c").write_text("x")
    monkeypatch.setenv("FASTRESNET_CACHE", str(tmp_path / "c"))
    code, _, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "FASTRESNET_CACHE" in err


def test_ctrl_c_while_importing(capsys, monkeypatch):
    class Importing(types.ModuleType):
        def __getattr__(self, name): raise KeyboardInterrupt
    monkeypatch.setitem(sys.modules, "fastresnet.inference", Importing("fastresnet.inference"))  # summary imports it
    code, _, err = run_cli(["summary"], capsys)
    monkeypatch.undo()
    assert code == 130 and "Interrupted" in err


def test_divergence_in_the_first_epoch_says_there_is_no_checkpoint(tiny_folder, tmp_path):
    with pytest.raises(UserError, match="no checkpoint yet"):
        train_run(Recipe(bs=10, epochs=2, peak_epoch=1, lr_max=1e-3, width=0.25), tmp_path / "r", str(tiny_folder),
                  extra_cbs=[NaNAt(0)], **QUIET)


# ---------------------------------------------------------------- silent surprises
def test_resume_refuses_recipe_flags(finished, capsys):
    code, _, err = run_cli(["train", "--resume", str(finished), "--epochs", "5", "--lr-max", "0.5"], capsys)
    assert code == 2 and "--epochs" in err and "--lr-max" in err and "would change it" in err


def test_one_short_run_rule_for_flags_and_settings_files(capsys, tmp_path):
    from fastresnet.cli import build_parser, recipe_from_args
    (tmp_path / "s.ini").write_text("[train]\nepochs = 3\n")
    a = recipe_from_args(build_parser().parse_args(["train", "--epochs", "3"]))
    b = recipe_from_args(build_parser().parse_args(["train", "--settings", str(tmp_path / "s.ini")]))
    assert (a.epochs, a.peak_epoch) == (b.epochs, b.peak_epoch) == (3, 1)
    assert capsys.readouterr().err.count("peaks at the end of epoch 1") == 2   # the flag's note and the file's
    for bad in (["--epochs", "1"], ["--epochs", "-3"]):
        code, _, err = run_cli(["train", *bad], capsys)
        assert code == 2 and "must be at least 2" in err and "note:" not in err


def test_subset_says_what_it_took(tiny_folder, tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--subset", "15",
                            "--bs", "10", "--epochs", "2", "--lr-max", "0.001", "--no-tta", "--width", "0.25"], capsys)
    assert code == 0 and "took 10 images (1 per class)" in err
    assert err.count("fastresnet: warning:") >= 1 and "warnings.warn" not in err       # one line, no source


# ---------------------------------------------------------------- files and logs people share
def test_run_files_honour_the_umask(finished):
    mask = os.umask(0); os.umask(mask)
    for name in ("final.json", "metrics.csv", "metrics.json", "run.json", "checkpoint.pth", "model.safetensors",
                 "lr_bounds.json", "schedule.json", "settings.ini"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    assert finished.stat().st_mode & 0o777 == 0o777 & ~mask


@pytest.mark.slow
def test_piped_output_has_one_line_per_epoch_and_no_bars(tiny_folder, tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastresnet.cli", "train", "--data", str(tiny_folder), "--out",
                        str(tmp_path / "r"), "--bs", "10", "--epochs", "3", "--lr-find-iters", "6",
                        "--lr-find-end", "1", "--width", "0.25"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "\r" not in p.stdout and "█" not in p.stdout
    lines = p.stdout.splitlines()
    assert [l.split()[1] for l in lines if l.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    assert any(l.startswith("LR bounds: LRMAX") for l in lines)


def test_small_messages(finished, tiny_folder, tmp_path, capsys):
    load_arrays(tiny_folder)
    data = load_arrays(tiny_folder)                                   # the second load comes from the cache
    assert all(type(v) is str for v in data.vocab)
    run = tmp_path / "r"
    shutil.copytree(finished, run)
    code, out, _ = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 0 and "already finished" in out and "Resuming" not in out
    raw = (run / "checkpoint.pth").read_bytes()
    (run / "checkpoint.pth").write_bytes(raw[:len(raw) // 2])        # a real checkpoint, cut in half
    code, _, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and "checkpoint.pth is damaged" in err and "--overwrite" in err
    from fastresnet.data import load_image
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    with pytest.raises(UserError) as e: load_image(tmp_path / "big.png")
    assert "training data" not in str(e.value)


def test_resume_prints_no_rows_for_the_epochs_it_skips(tiny_folder, tmp_path, capsys, monkeypatch):
    class StopAfterFirstEpoch(Callback):
        order = 70                                                  # after RunCheckpoint has saved epoch 1
        def after_epoch(self):
            if self.epoch == 0: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_run(Recipe(bs=10, epochs=3, peak_epoch=1, lr_max=1e-3, tta=False, width=0.25), tmp_path / "r",
                  str(tiny_folder), extra_cbs=[StopAfterFirstEpoch()], **QUIET)
    for tty in (False, True):                                       # one line per epoch, and fastai's table
        run = tmp_path / f"r{tty}"
        shutil.copytree(tmp_path / "r", run)
        capsys.readouterr()
        monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
        train_run(None, run, resume=True, **QUIET)
        monkeypatch.undo()
        captured = capsys.readouterr().out
        rows = [l.split()[:2] for l in captured.replace("\r", "\n").splitlines() if l[:1].isdigit()
                or (l.startswith("epoch ") and "/" in l.split()[1])]
        firsts = [r[1] if r[0] == "epoch" else r[0] for r in rows]
        assert firsts == (["2/3", "3/3"] if not tty else ["1", "2"]), rows      # epoch 1 (index 0) not repeated


def test_top_loss_titles_do_not_reach_the_row_above(finished, tiny_folder, monkeypatch):
    import matplotlib.pyplot as plt
    import fastresnet.report as R
    from fastresnet.inference import evaluate_learner
    from fastresnet.report import plot_top_losses
    from fastresnet.train import learner_for_run
    learn = learner_for_run(finished, str(tiny_folder))
    with learn.no_bar(): _, losses = evaluate_learner(learn, tta=False)
    saved = []
    monkeypatch.setattr(R, "_save", lambda fig, path: saved.append(fig))    # keep the figure open to measure it
    plot_top_losses(learn, losses, finished)
    fig = saved[0]
    r = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 9
    longest = max(learn.dls.vocab, key=len)
    for a in axes: a.set_title(f"{longest}/{longest} / 10.00 / 1.00", fontsize=a.title.get_fontsize())  # worst case
    fig.canvas.draw()                                               # axes take their drawn (equal-aspect) size
    for a in axes:                                                  # no title may touch another tile or its title
        t = a.title.get_window_extent(r)
        assert not any(t.overlaps(b.get_window_extent(r)) or t.overlaps(b.title.get_window_extent(r))
                       for b in axes if b is not a)
    plt.close(fig)


def test_output_piped_into_head_stops_quietly():
    "`| true` closes the pipe before anything is written: every print then meets a broken pipe."
    p = subprocess.run(f"{sys.executable} -m fastresnet.cli summary | true", shell=True, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr[-2000:]


def cli_err(args, capsys):
    "The exit code and stderr of the command run in-process."
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
    code, err = cli_err(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2 and match in err and "Traceback" not in err


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epoch", "3"])
    assert e.value.code == 2


def test_missing_data_and_bad_settings_file(tmp_path, capsys):
    code, err = cli_err(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "s.ini").write_text("[train]\nbs = lots\n")
    code, err = cli_err(["train", "--settings", str(tmp_path / "s.ini")], capsys)
    assert code == 2 and "not a valid int" in err


def test_existing_run_dir_and_unwritable_out(tiny_folder, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "old.txt").write_text("x")
    code, err = cli_err(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    (tmp_path / "afile").write_text("x")
    code, err = cli_err(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "afile" / "r")], capsys)
    assert code == 2 and "Cannot write to the run folder" in err


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    code, err = cli_err(["train", "--resume", str(tmp_path / "r")], capsys)
    assert code == 2 and "run.json is missing" in err


class NaNAt(Callback):
    "Make the training loss non-finite in epoch `at` (what a too-large LR does, made deterministic)."
    order = -10
    def __init__(self, at): self.at = at
    def after_loss(self):
        if self.epoch == self.at: self.learn.loss = self.loss * float("nan")


def test_divergence_stops_at_once_naming_lr_and_epoch_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path):
    r = Recipe(bs=10, epochs=3, peak_epoch=1, lr_max=1e-3, width=0.25)
    with pytest.raises(UserError, match=r"epoch 2 \(batch 1\) at LR [0-9.e-]+.*smaller LRMAX") as e:
        train_run(r, tmp_path / "r", str(tiny_folder), extra_cbs=[NaNAt(1)], **QUIET)
    assert "--lr-max" not in str(e.value) and e.value.hint.startswith("(--lr-max")   # flag advice is the CLI's
    ck = load_checkpoint(tmp_path / "r" / "checkpoint.pth")
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_disk_full_while_saving_keeps_the_previous_checkpoint(mount_tmpfs):
    "The project's writer on a real 1 MiB tmpfs: the kernel's ENOSPC, not a mock of it."
    disk = mount_tmpfs(2**20)
    path = disk / "checkpoint.pth"
    atomic_torch_save({"epoch": 1, "w": torch.ones(1000)}, path)            # 4 kB: fits
    with pytest.raises(UserError) as e:
        atomic_torch_save({"epoch": 2, "w": torch.zeros(2**19)}, path)      # 2 MiB of float32: more than the disk
    msg = e.value.message
    assert e.value.disk_full and f"mounted at {disk}" in msg and "writing checkpoint.pth" in msg, msg
    assert "which needs about 2.0 MB" in msg, msg                            # the file's size, known before writing
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in disk.iterdir()] == ["checkpoint.pth"]            # no temporary file left behind


@pytest.mark.slow
def test_sigterm_leaves_a_resumable_checkpoint(tiny_folder, tmp_path, fork_server):
    "A real SIGTERM from outside, while the run (a real process) is in its second epoch, paused there by its SIGSTOP."
    out = tmp_path / "r"
    p = stopped(fork_server.start(["train", "--data", tiny_folder, "--out", out, "--bs", "10", "--epochs", "3",
                                   "--lr-max", "0.001", "--width", "0.25", "--no-tta"],
                                  point=("train_batch", 6, "SIGSTOP")))
    p.send_signal(signal.SIGTERM)                                   # as a service manager stops it
    p.send_signal(signal.SIGCONT)
    code, _, err = p.wait(timeout=120)
    assert code == 130, err[-2000:]
    assert f"the checkpoint of epoch 1 is saved; continue with fastresnet train --resume {out}" in err
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 0
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"   # not "started", as if still running
    assert [f.name for f in out.iterdir() if f.name.startswith(".")] == []


# ---------------------------------------------------------------- model files and prediction input
@pytest.mark.parametrize("make, match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"garbage"), "could not be loaded"),
    (lambda p: p.write_bytes(pickle.dumps({"not": "a learner"})), "not a fastai Learner|could not be loaded"),
])
def test_bad_model_files(tmp_path, capsys, tiny_folder, make, match):
    f = tmp_path / "model.pkl"
    make(f)
    code, err = cli_err(["predict", str(tiny_folder / "test" / "cat" / "0003.png"), "--model", str(f),
                         "--allow-pickle"], capsys)
    assert code == 2 and any(m in err for m in match.split("|")) and "Traceback" not in err


def test_truncated_model_files(finished, tmp_path, capsys, tiny_folder):
    img = str(tiny_folder / "test" / "cat" / "0003.png")
    for name in ("model.pkl", "model.safetensors"):
        raw = (finished / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 3])
        code, err = cli_err(["predict", img, "--model", str(tmp_path / name)], capsys)
        assert code == 2 and "truncated" in err, err


def test_weights_only_file_predicts_like_the_pickle(finished, tiny_folder, capsys):
    img = str(tiny_folder / "test" / "dog" / "0005.png")
    outs = []
    for name in ("model.pkl", "model.safetensors"):
        assert main(["predict", img, "--model", str(finished / name)]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and "\t" in outs[0]


def test_predict_batch_with_bad_and_odd_files(finished, tiny_folder, tmp_path, capsys):
    Image.fromarray(np.zeros((64, 64), np.uint8), "L").save(tmp_path / "big_gray.png")
    (tmp_path / "notes.txt").write_text("not an image")
    files = [str(tiny_folder / "test" / "cat" / "0003.png"), str(tmp_path / "missing.png"), str(tmp_path / "notes.txt"),
             str(tmp_path / "big_gray.png")]
    code = main(["predict", *files, "--model", str(finished / "model.safetensors")])
    out, err = capsys.readouterr()
    assert code == 1                                                  # something was skipped
    lines = out.strip().splitlines()
    assert [l.split("\t")[0] for l in lines] == [files[0], files[3]]  # the good ones, in order
    assert "missing.png does not exist" in err and "notes.txt is corrupt or not an image" in err
    assert "resized to 32x32" in err


# ---------------------------------------------------------------- error branches of evaluate, report, serve, resume
def test_evaluate_on_data_of_other_classes_is_refused(finished, tiny_folder, tmp_path, capsys):
    other = Path(shutil.copytree(tiny_folder, tmp_path / "other"))
    for split in ("train", "test"): (other / split / "cat").rename(other / split / "kitten")
    code, _, err = run_cli(["evaluate", "--model", str(finished), "--data", str(other)], capsys)
    assert code == 2 and "The data's classes" in err and "'kitten'" in err and "differ from the model's" in err


def test_report_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    code, _, err = run_cli(["report", str(tmp_path / "notes")], capsys)
    assert code == 2 and "is not a fastresnet run folder (no run.json)" in err
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["a.txt"]            # nothing written there


def test_report_without_the_runs_data_makes_the_plots_it_can(finished, tmp_path, capsys):
    run = Path(shutil.copytree(finished, tmp_path / "r"))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data": str(tmp_path / "moved-away")}))   # the data is gone
    for f in [*run.glob("*.png"), run / "report.md"]: f.unlink()
    code, out, err = run_cli(["report", str(run)], capsys)
    assert code == 0 and out.startswith("Report: ") and "note: top-loss and augmentation plots skipped" in err
    assert "moved-away" in err                                                        # says why: the data path
    made = sorted(p.name for p in run.glob("*.png"))
    assert made == ["confusion.png", "lr_find.png", "metrics.png", "schedule.png"], made   # from the run's files
    report = (run / "report.md").read_text()
    assert "](top_losses.png)" not in report and "](confusion.png)" in report


@pytest.mark.parametrize("flags, match", [(["--port", "70000"], "--port 70000 is not a port number (1-65535)"),
                                          (["--port", "0"], "'0' is not a whole number >= 1"),
                                          (["--max-queue", "0"], "'0' is not a whole number >= 1")])
def test_serve_port_and_queue_bounds(finished, capsys, flags, match):
    try: code = main(["serve", "--model", str(finished), *flags])
    except SystemExit as e: code = e.code                                             # argparse's own refusal
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err


def test_resume_with_a_checkpoint_of_another_shape(finished, tmp_path, capsys):
    "settings.ini edited by hand to another width: the checkpoint's tensors do not fit the model it now describes."
    run = Path(shutil.copytree(finished, tmp_path / "r"))
    settings = (run / "settings.ini").read_text()
    assert "\nwidth = 0.25 " in settings
    (run / "settings.ini").write_text(settings.replace("\nwidth = 0.25 ", "\nwidth = 0.5 "))
    before = (run / "model.safetensors").read_bytes()
    code, _, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and "does not fit a model for this data" in err and "size mismatch" in err, err
    assert (run / "model.safetensors").read_bytes() == before                        # nothing exported over it

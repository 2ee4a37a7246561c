"""A full disk, for real: the run folder (or the CSV, or the cache) on a small tmpfs that a ballast file fills to
a chosen number of free bytes, so the write that runs out of space is the one under test. Each time: one paragraph
naming the disk and the space needed, exit 2, every earlier file intact; after space is freed `--resume` finishes
with the weights of an uninterrupted run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import leave_free
from fastresnet.resume import load_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--width", "0.25", "--epochs", "3", "--bs", "10", "--lr-max", "0.001", "--no-tta"]


@pytest.fixture
def cli(fork_server):
    "`fastresnet ARGS` as a real process (forked after the imports: tests/forkserver.py); `cache`: its cache folder."
    def run(*args, cache=None):
        return fork_server.run(args, env={"FASTRESNET_CACHE": str(cache)} if cache else None)
    return run


@pytest.fixture
def disk(mount_tmpfs):
    "A real 12 MB file system (tmpfs): what runs out is the kernel's space, not a mock."
    return mount_tmpfs(12 * 2**20)


def refused(p, disk: Path, file: str) -> str:
    "The one-paragraph error a full disk gets."
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    err = p.stderr.split("fastresnet: error: ", 1)[1]
    assert f"mounted at {disk}" in err and f"writing {file}" in err and "is full" in err, err
    assert err.strip().count("\n") == 0, err
    return err


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_full_disk_during_checkpoint_export_and_plots_then_resume(tiny_folder, tmp_path, disk, cli):
    ref = tmp_path / "uninterrupted"
    assert cli("train", "--data", tiny_folder, "--out", ref, *ARGS).returncode == 0
    ck = (ref / "checkpoint.pth").stat().st_size
    run = disk / "run"

    # (a) room for one checkpoint and a half: epoch 1's fits, epoch 2's (written beside it) does not
    leave_free(disk, ck * 3 // 2)
    err = refused(cli("train", "--data", tiny_folder, "--out", run, *ARGS), disk, "checkpoint.pth")
    assert f"needs about {ck / 2**20:.1f} MB" in err and "checkpoint of epoch 1" in err
    assert f"train --resume {run}" in err
    assert load_checkpoint(run / "checkpoint.pth")["epoch"] == 0                  # the earlier one, whole
    assert len(json.loads((run / "metrics.json").read_text())) == 1
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("."))  == []  # no half-written temporary

    (disk / "ballast").unlink()
    p = cli("train", "--resume", run)
    assert p.returncode == 0, p.stderr[-2000:]
    assert same_weights(ref / "model.safetensors", run / "model.safetensors")

    # (c), (b): the state a run is in when training ended and its disk filled (the end files not yet there)
    ends = ["final.json", "model.pkl", "model.safetensors", "report.md", *(f.name for f in run.glob("*.png"))]
    def strip():
        for n in ends: (run / n).unlink(missing_ok=True)
    strip()
    leave_free(disk, 200_000)                                             # final.json fits, model.pkl does not
    err = refused(cli("train", "--resume", run), disk, "model.pkl")
    assert "checkpoint of epoch 3" in err and not (run / "model.pkl").exists()
    (disk / "ballast").unlink()
    strip()
    pkl_and_weights = (ref / "model.pkl").stat().st_size + (ref / "model.safetensors").stat().st_size
    leave_free(disk, pkl_and_weights + 60_000)                            # the model fits, the plots do not
    err = refused(cli("train", "--resume", run), disk, "")
    assert ".png" in err.split("writing ", 1)[1].split(",")[0]
    assert same_weights(ref / "model.safetensors", run / "model.safetensors")
    assert load_checkpoint(run / "checkpoint.pth")["epoch"] == 2

    (disk / "ballast").unlink()
    p = cli("train", "--resume", run)
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert same_weights(ref / "model.safetensors", run / "model.safetensors")
    assert json.loads((run / "final.json").read_text())["accuracy"] == json.loads((ref / "final.json").read_text())[
        "accuracy"]
    code = ("from fastai.learner import load_learner; import sys; "
            "print(load_learner(sys.argv[1]).predict(sys.argv[2])[0])")
    img = next((tiny_folder / "test" / "cat").iterdir())
    out = [subprocess.run([sys.executable, "-c", code, str(d / "model.pkl"), str(img)], capture_output=True,
                          text=True, check=True).stdout for d in (ref, run)]
    assert out[0] == out[1] and out[0].strip()


def test_predictions_csv_on_a_full_disk_leaves_the_earlier_file(tiny_folder, trained_run, disk, cli):
    ref = trained_run
    csv = disk / "predictions.csv"
    csv.write_text("an earlier file\n")
    leave_free(disk, 0)
    err = refused(cli("predict", tiny_folder / "test", "--model", ref / "model.pkl", "--csv", csv), disk,
                  "predictions.csv")
    assert "Nothing was written" in err
    assert csv.read_text() == "an earlier file\n" and sorted(p.name for p in disk.iterdir()) == [
        "ballast", "predictions.csv"]                                   # no .partial left behind
    (disk / "ballast").unlink()
    p = cli("predict", tiny_folder / "test", "--model", ref / "model.pkl", "--csv", csv)
    n = len(list((tiny_folder / "test").rglob("*.png")))
    assert p.returncode == 0 and len(csv.read_text().splitlines()) == 1 + n


def test_a_full_cache_disk_is_a_one_line_note_and_training_goes_on(tiny_folder, tmp_path, disk, cli):
    leave_free(disk, 0)
    p = cli("train", "--data", tiny_folder, "--out", tmp_path / "r", *ARGS, "--epochs", "2",
            cache=disk / "cache")
    assert p.returncode == 0, p.stderr[-2000:]
    notes = [line for line in p.stderr.splitlines() if "warning" in line and "cach" in line]  # not "Decoding ..."
    assert len(notes) == 1 and "Not caching the decoded images" in notes[0] and f"mounted at {disk}" in notes[0]
    assert (tmp_path / "r" / "model.pkl").is_file() and list((disk / "cache").iterdir()) == []

"""Two processes on the CPU (gloo), launched with torchrun, against one process on the same data."""
import json
import subprocess
import sys

import pytest

from conftest import make_folder


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    data = make_folder(tmp_path / "cifar", n_train=40, n_test=21)   # 21: uneven split over 2 ranks
    args = ["train", "--data", str(data), "--bs", "20", "--epochs", "2", "--peak-epoch", "1", "--lr-max", "0.003"]
    one = subprocess.run([sys.executable, "-m", "fastresnet.cli", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "fastresnet.cli", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    out = two.stdout + two.stderr
    assert "process 0 of 2: 10 images a step (global batch 20)" in out
    assert "process 1 of 2: 10 images a step (global batch 20)" in out          # both ranks ran
    assert out.count("Test accuracy") == 1 and out.count("LR bounds:") == 1      # rank 0 alone reports
    assert {p.name for p in tmp_path.iterdir()} - {"cache"} == {"cifar", "one", "two"}
    run = lambda d, f: json.loads((tmp_path / d / f).read_text())
    assert run("two", "schedule.json")["lr"] == pytest.approx(run("one", "schedule.json")["lr"])  # same global steps
    assert len(run("two", "schedule.json")["lr"]) == 4                          # 40 images / 20 a step x 2 epochs
    hist, final = run("two", "metrics.json"), run("two", "final.json")
    # the last epoch's test accuracy was gathered from both processes; final.json is rank 0 alone over all
    # 21 images with the same weights: equal only if every image counted exactly once
    assert final["n_images"] == 21 and sum(map(sum, final["confusion"])) == 21
    assert hist[-1]["valid_accuracy"] == pytest.approx(final["accuracy"])
    assert (tmp_path / "two" / "model.pkl").is_file()

"""Two processes on the CPU (gloo), launched with torchrun, against one process on the same global batch: the same
weights to float tolerance (so the gradients were averaged over the processes), the same schedule, every test image
counted once; a distributed run stopped by SIGTERM and resumed ends with the same weights; a batch that does not split
over the processes, and a launch without Accelerate, are one paragraph each.

Why the weights can agree at all on a CPU: PyTorch's SyncBatchNorm needs a GPU, so each process normalises its own
half of the batch. Here every training image is the same picture (under labels that differ), so a half's BatchNorm
statistics are the whole batch's and its gradient the mean of the per-image ones, exactly as in one process; and the
global batch is the whole training set (one step an epoch), so the order the loaders draw in cannot matter. Without
gradient averaging each process would step on its own half's labels: weights far apart."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_folder
from fastresnet.cli import main
from fastresnet.learner import recipe_learner

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
ARGS = ["--bs", "40", "--epochs", "3", "--peak-epoch", "1", "--lr-max", "0.003", "--width", "0.25",
        "--precision", "fp32", "--pad", "0", "--no-flip", "--cutout", "0", "--no-tta"]   # no random augmentation
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def one_picture_data(root: Path) -> Path:
    "40 training images, all one picture, labels cycling through the 10 classes; 21 test images (uneven over 2)."
    make_folder(root, n_train=40, n_test=21)
    files = sorted((root / "train").rglob("*.png"))
    for f in files[1:]: f.write_bytes(files[0].read_bytes())
    return root


def max_difference(a: Path, b: Path) -> float:
    """The largest difference between two runs' learned weights (BatchNorm's running variance apart: a half batch's
    unbiased estimate has Bessel's n / (n - 1) of half the elements, 0.16% apart at 4x4 pixels:
    `bn_variances_agree`)."""
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x if not k.endswith("running_var")
               and x[k].is_floating_point())


def bn_variances_agree(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return all(torch.allclose(x[k], y[k], rtol=1e-3, atol=0) for k in x if k.endswith("running_var"))


@pytest.mark.slow
def test_two_processes_match_one_and_a_resumed_pair_matches_both(tmp_path, capsys):
    data = one_picture_data(tmp_path / "cifar")
    train = ["train", "--data", str(data), *ARGS]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # one process on two threads sums as the pair does (one thread: 4e-3 apart in 3 steps)
    try: assert main([*train, "--out", str(tmp_path / "one")]) == 0       # the same global batch, one process
    finally: torch.set_num_threads(threads)
    capsys.readouterr()
    two = subprocess.run([*TORCHRUN, "-m", "fastresnet.cli", *train, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env=ENV)
    assert two.returncode == 0, two.stderr[-3000:]
    out = two.stdout + two.stderr
    assert "process 0 of 2: 20 images a step (global batch 40)" in out
    assert "process 1 of 2: 20 images a step (global batch 40)" in out          # both ranks ran
    assert out.count("Test accuracy") == 1 and out.count("LR bounds:") == 1      # rank 0 alone reports
    run = lambda d, f: json.loads((tmp_path / d / f).read_text())
    assert run("two", "schedule.json")["lr"] == pytest.approx(run("one", "schedule.json")["lr"])  # same global steps
    assert len(run("two", "schedule.json")["lr"]) == 3                          # 40 images / 40 a step x 3 epochs
    start = recipe_learner(str(data), path=tmp_path, bs=40, width=0.25).model.state_dict()   # the seeded init
    end = load_file(tmp_path / "one" / "model.safetensors")
    trained = max(float((end[k].double() - start[k].double()).abs().max()) for k in end if k.endswith("weight"))
    gap = max_difference(tmp_path / "one", tmp_path / "two")
    assert trained > 1e-3 and gap < 2e-5, (trained, gap)                         # averaged gradients: the same steps
    assert bn_variances_agree(tmp_path / "one", tmp_path / "two")
    # the last epoch's test accuracy was gathered from both processes; final.json is rank 0 alone over all
    # 21 images with the same weights: equal only if every image counted exactly once
    hist, final = run("two", "metrics.json"), run("two", "final.json")
    assert final["n_images"] == 21 and sum(map(sum, final["confusion"])) == 21
    assert hist[-1]["valid_accuracy"] == pytest.approx(final["accuracy"])
    assert (tmp_path / "two" / "model.pkl").is_file()

    # stopped by SIGTERM in both processes after the second epoch's step (the first epoch's checkpoint saved) ...
    cut = subprocess.run([*TORCHRUN, str(ROOT / "tests" / "interrupt.py"), "train_batch", "2", "SIGTERM", "--",
                          *train, "--out", str(tmp_path / "cut")], capture_output=True, text=True, timeout=600, env=ENV)
    assert cut.returncode != 0 and "Interrupted: the checkpoint of epoch 1 is saved" in cut.stderr, cut.stderr[-3000:]
    assert run("cut", "run.json")["status"] == "stopped" and not (tmp_path / "cut" / "model.safetensors").exists()
    # ... and resumed by a new launch: the weights of the uninterrupted pair
    resumed = subprocess.run([*TORCHRUN, "-m", "fastresnet.cli", "train", "--resume", str(tmp_path / "cut")],
                             capture_output=True, text=True, timeout=600, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout and run("cut", "run.json")["status"] == "finished"
    assert max_difference(tmp_path / "cut", tmp_path / "two") < 1e-6 and bn_variances_agree(tmp_path / "cut",
                                                                                           tmp_path / "two")
    assert run("cut", "schedule.json")["lr"] == run("two", "schedule.json")["lr"]


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tiny_folder, tmp_path, capsys, monkeypatch):
    "What torchrun tells each process (WORLD_SIZE=2): a global batch of 21 has no equal halves."
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--bs", "21", "--lr-max", "1e-3"])
    err = capsys.readouterr().err
    assert code == 2 and "The batch size 21 does not split evenly over 2 processes" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_distributed_launch_without_accelerate_says_how_to_install_it(tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setitem(sys.modules, "accelerate", None)          # `import accelerate` fails, as when not installed
    code = main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--bs", "20", "--lr-max", "1e-3"])
    err = capsys.readouterr().err
    assert code == 2 and "needs Hugging Face Accelerate" in err and 'pip install "fastresnet[distributed]"' in err
    assert not (tmp_path / "r").exists()
    monkeypatch.delitem(sys.modules, "accelerate")
    assert torch.distributed.is_available()

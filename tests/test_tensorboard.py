"""TensorBoard logging (issue 47): a run's event files, read back by TensorBoard's own reader, hold the training loss,
LR and beta1 of every step and the test loss and accuracy of every epoch that schedule.json and metrics.json record;
a run stopped mid-epoch and resumed continues the same curves with no step twice; fine-tuning's two fits share one
axis."""
import json
import sys

import pytest
from fastai.callback.core import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fastresnet.cli import main
from fastresnet.config import Recipe
from fastresnet.folder import foreign_entries
from fastresnet.train import run as train_run

N_ITER = 4  # conftest's tiny data: 40 training images in batches of 10


class StopAt(Callback):
    "Ctrl-C after training batch `batch` (1-based) of epoch `epoch` (0-based): mid-epoch, past its last checkpoint."
    order = 99  # after the batch is logged
    def __init__(self, epoch: int, batch: int): self.at = (epoch, batch)
    def after_batch(self):
        if self.training and (self.epoch, self.iter + 1) == self.at: raise KeyboardInterrupt


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    "Every scalar curve in the run folder's event files, as TensorBoard reads them: (step, value) pairs by tag."
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point, not a sample
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def check_against_run_files(run_dir, epochs: int) -> dict:
    "The curves hold, step for step, what schedule.json (per step) and metrics.json (per epoch) record."
    got = scalars(run_dir)
    metrics, hps = (json.loads((run_dir / f).read_text()) for f in ("metrics.json", "schedule.json"))
    steps, ends = list(range(1, epochs * N_ITER + 1)), [N_ITER * (e + 1) for e in range(epochs)]
    for tag in ("train_loss", "lr", "mom"): assert [s for s, _ in got[tag]] == steps, tag  # each step once
    for tag in ("lr", "mom"): assert [v for _, v in got[tag]] == pytest.approx(hps[tag], rel=1e-6)
    assert len(metrics) == epochs
    assert [v for s, v in got["train_loss"] if s in ends] == pytest.approx([m["train_loss"] for m in metrics],
                                                                          rel=1e-6)
    for tag in ("train_accuracy", "valid_loss", "valid_accuracy"):
        assert [s for s, _ in got[tag]] == ends, tag
        assert [v for _, v in got[tag]] == pytest.approx([m[tag] for m in metrics], rel=1e-6), tag
    return got


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_and_resumed_continues_its_curves(tiny_folder, tmp_path):
    r = Recipe(bs=10, epochs=3, peak_epoch=1, lr_max=3e-3, width=0.25, tta=False, tensorboard=True)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(r, run, str(tiny_folder), extra_cbs=[StopAt(1, 2)], log=lambda *a: None)
    before = scalars(run)
    assert [s for s, _ in before["train_loss"]] == list(range(1, N_ITER + 3))  # epoch 2's first steps, unsaved
    train_run(None, run, resume=True, log=lambda *a: None)  # repeats epoch 2 from its start
    got = check_against_run_files(run, 3)
    assert got["train_loss"][:N_ITER + 2] == before["train_loss"]  # resumed bit for bit: the same values again
    assert len(list(run.glob("events.out.tfevents.*"))) == 2 and foreign_entries(run) == []  # a run's own files


@pytest.mark.slow
def test_fine_tuning_logs_both_fits_on_one_axis(source_run, tiny_folder, tmp_path):
    run = tmp_path / "ft"
    assert main(["train", "--data", str(tiny_folder), "--init", str(source_run), "--out", str(run), "--epochs", "2",
                 "--freeze-epochs", "1", "--bs", "10", "--lr-max", "3e-3", "--no-tta", "--tensorboard"]) == 0
    check_against_run_files(run, 3)


def test_tensorboard_without_its_package_is_one_paragraph_before_any_data(tiny_folder, tmp_path, monkeypatch,
                                                                          capsys):
    for m in ("tensorboard", "torch.utils.tensorboard"): monkeypatch.setitem(sys.modules, m, None)  # not installed
    for m in ("fastresnet.tracking", "fastai.callback.tensorboard"): monkeypatch.delitem(sys.modules, m, False)
    assert main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "fastresnet[tensorboard]"' in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # no folder made, no data read

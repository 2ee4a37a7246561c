"""End-to-end runs on tiny synthetic data: the CLI, the run folder, export → load_learner → predict (resume, and a
finished run without its checkpoint: test_resume.py)."""
import json
import subprocess
import sys

import pytest
import torch
from fastai.learner import load_learner

from conftest import accuracy_by_hand
from fastresnet.cli import main
from fastresnet.config import Recipe, UserError
from fastresnet.data import load_image
from fastresnet.train import run as train_run

TINY = ["--bs", "10", "--lr-find-iters", "6", "--lr-find-end", "1", "--width", "0.25"]


@pytest.mark.slow
def test_cli_train_export_load_predict(tiny_folder, tmp_path, capsys):
    "`fastresnet train` as a process with its output piped; then predict, evaluate and report as commands here."
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastresnet.cli", "train", "--data", str(tiny_folder), "--epochs", "2",
           "--peak-epoch", "1", "--out", str(out), "--tta", *TINY]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "LR bounds: LRMAX" in p.stdout and "Test accuracy" in p.stdout
    assert ("LR range test: 6 batches of 10, LR 1e-06 to 1 (1.5 passes over the training images)\n"   # 40 / 10 = 4
            "  range test: batch 1/6, LR ") in p.stdout                                       # a batch a line: piped
    assert "\r" not in p.stdout and "epoch 2/2  train_loss " in p.stdout                          # not bars
    for f in ("settings.ini", "lr_bounds.json", "lr_find.json", "metrics.csv", "metrics.json", "final.json",
              "model.pkl", "run.json", "checkpoint.pth"):
        assert (out / f).is_file(), f
    assert not (out / "models").exists()                        # the range test's model_dir, left empty, is gone
    hist = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]
    assert all(k in hist[0] for k in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"))
    run = json.loads((out / "run.json").read_text())
    bounds = json.loads((out / "lr_bounds.json").read_text())
    assert run["status"] == "finished" and bounds["lr_max"] > bounds["lr_min"] > 0 and bounds["rule"] == "minimum"
    final = json.loads((out / "final.json").read_text())
    want = accuracy_by_hand(out / "model.pkl", tiny_folder / "test")   # each image alone, and its mirror
    for k in ("accuracy", "accuracy_tta"):                       # tta=true: flip-TTA, the mean of the two softmaxes
        assert final[k] == run[k] == pytest.approx(want[k], abs=1e-6), (k, final[k], want[k])
    assert final["confusion"] == want["confusion"] and final["n_images"] == 20
    learn = load_learner(out / "model.pkl")
    img = tiny_folder / "test" / "cat" / "0003.png"
    cls, idx, probs = learn.predict(load_image(img))
    assert cls in learn.dls.vocab and probs.sum() == pytest.approx(1, abs=1e-5)
    capsys.readouterr()
    assert main(["predict", str(img), "--model", str(out / "model.pkl")]) == 0
    assert capsys.readouterr().out.split("\t")[1] == cls
    assert main(["evaluate", "--model", str(out / "model.pkl"), "--data", str(tiny_folder), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    for k in ("accuracy", "accuracy_tta"): assert ev[k] == pytest.approx(want[k], abs=1e-6), k
    assert ev["confusion"] == want["confusion"] and ev["n_images"] == 20
    assert ev["per_class"] == pytest.approx(want["per_class"], abs=1e-6)
    assert main(["evaluate", "--model", str(out / "model.pkl"), "--data", str(tiny_folder)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Test accuracy: {want['accuracy']:.4f}   with flip-TTA: {want['accuracy_tta']:.4f}")
    assert "\r" not in text                                     # not a terminal: no bar fragments
    check_report(out)
    for png in out.glob("*.png"): png.unlink()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Report: ") and "\r" not in text
    check_report(out)                                            # regenerated without retraining


def check_report(out):
    from PIL import Image
    from fastresnet.folder import PLOTS
    report = (out / "report.md").read_text()
    for name in PLOTS:
        with Image.open(out / name) as im:
            im.verify()                                          # a valid PNG ...
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
            assert len(set(im.convert("L").getdata())) > 10      # ... with something drawn in it
        assert f"]({name})" in report
    assert "Test accuracy" in report and "LRMAX" in report and "| cat |" in report and "[train]" in report


def test_learn_save_writes_into_models_as_fastai_does(tiny_folder, tmp_path):
    from fastresnet import recipe_learner
    learn = recipe_learner(tiny_folder, path=tmp_path, width=0.25, bs=10)
    assert learn.save("x") == tmp_path / "models" / "x.pth" and (tmp_path / "models" / "x.pth").is_file()
    saved = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with torch.no_grad():
        for p in learn.model.parameters(): p.add_(1.0)  # weights moved after the save
    learn.load("x")
    assert all(torch.equal(v, saved[k]) for k, v in learn.model.state_dict().items())  # and back as saved


def test_summary(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "6,573,130" in out                                  # the parameter count of the spec
    # width 0.25: channels 16, 32, 64, 128; 3x3 convs without bias, BatchNorm's 2 per channel, the 10-class head
    convs = 27 * 16 + 9 * 16 * 32 + 2 * 9 * 32 * 32 + 9 * 32 * 64 + 9 * 64 * 128 + 2 * 9 * 128 * 128
    assert main(["summary", "--width", "0.25"]) == 0
    assert f"{convs + 2 * (16 + 3 * 32 + 64 + 3 * 128) + 128 * 10 + 10:,}" in capsys.readouterr().out  # 412,954


def test_existing_run_folder_is_refused(tmp_path, arrays):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep me")
    with pytest.raises(UserError, match="already exists"):
        train_run(Recipe(), tmp_path / "run")


def test_valid_every_skips_test_passes_but_not_the_last(tiny_folder, tmp_path):
    r = Recipe(bs=10, epochs=3, peak_epoch=1, lr_max=1e-3, valid_every=0, width=0.25)
    train_run(r, tmp_path / "r", str(tiny_folder), log=lambda *a: None)
    hist = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [h["valid_accuracy"] is None for h in hist] == [True, True, False]
    assert all(h["train_loss"] > 0 for h in hist)
    assert "accuracy_tta" in json.loads((tmp_path / "r" / "final.json").read_text())  # flip-TTA is on by default


def test_test_loss_is_plain_cross_entropy_while_training_is_smoothed(tiny_folder, tmp_path):
    """Label smoothing is the training loss only: the reported test loss (metrics, top losses) is -mean(log p_y),
    and the weights file remembers the smoothing. Smoothed CE would be (1 - eps)·CE + eps·mean_c(-log p_c)."""
    from fastresnet.inference import evaluate_learner
    from fastresnet.learner import load_weights_learner
    from fastresnet.train import learner_for_run
    out = tmp_path / "r"
    train_run(Recipe(bs=10, epochs=2, peak_epoch=1, lr_max=3e-3, label_smoothing=0.2, tta=False, width=0.25), out,
              str(tiny_folder), log=lambda *a: None)
    learn = learner_for_run(out)
    with learn.no_bar():
        probs, y = learn.get_preds()
        _, losses = evaluate_learner(learn, tta=False)
    logp = probs.log()
    plain = -logp[torch.arange(len(y)), y]
    smoothed = 0.8 * plain - 0.2 * logp.mean(1)
    assert (smoothed.mean() - plain.mean()).abs() > 2e-4 * plain.mean()  # twice the tolerance below: told apart
    assert (smoothed - plain).abs().max() > 1e-2                        # and image by image
    reported = json.loads((out / "metrics.json").read_text())[-1]["valid_loss"]
    assert reported == pytest.approx(float(plain.mean()), rel=1e-4)
    assert torch.allclose(losses, plain, rtol=1e-4, atol=1e-5)          # what ranks top_losses
    assert learn.loss_func.eps == 0.2                                   # training still smoothed
    assert load_weights_learner(out / "model.safetensors").loss_func.eps == 0.2

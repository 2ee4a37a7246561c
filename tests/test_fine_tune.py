"""Other data sets through the command: CIFAR-100 by name (fastai's `untar_data` on a generated data set of the
archive's layout), fine-tuning a trained model on new classes (`--init`, fastai's `fine_tune`; its resume:
test_resume.py), and a `size` other than 32 from training to `load_learner().predict`."""
import json
import math
import tarfile

import pytest
import torch
from fastai.learner import load_learner
from safetensors.torch import load_file

from fastresnet.cli import main
from fastresnet.config import UserError
from conftest import pictures

pytestmark = pytest.mark.slow
TINY = ["--width", "0.25", "--bs", "10", "--lr-find-iters", "6", "--lr-find-end", "1", "--no-tta"]


def test_cifar100_by_name_comes_through_fastai_untar_data(tmp_path, monkeypatch, capsys):
    """`--data cifar100` asks fastai's `untar_data(URLs.CIFAR_100)`. With the archive already downloaded and
    extracted (here: generated with 20 superclasses x 5 classes and extracted by fastdownload's own `untar_dir`,
    as `untar_data` extracts a download), it returns the folder without touching the network."""
    from fastai.data.external import URLs, untar_data
    from fastdownload.core import untar_dir
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "fastai"))
    src = tmp_path / "src" / "cifar100"
    classes = {f"super{g:02d}": [f"class{g:02d}{c}" for c in "abcde"] for g in range(20)}
    for split, n in (("train", 3), ("test", 1)):
        for g, cs in classes.items(): pictures(src / split / g, cs, n, seed=len(split))
    archive = tmp_path / "cifar100.tgz"
    with tarfile.open(archive, "w:gz") as tar: tar.add(src, arcname="cifar100")
    untar_dir(archive, tmp_path / "fastai" / "data", rename=True)
    assert untar_data(URLs.CIFAR_100) == tmp_path / "fastai" / "data" / "cifar100"
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "cifar100", "--out", "run", "--epochs", "2", *TINY[:2], "--bs", "64",
                 "--lr-max", "0.003", "--no-tta"]) == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["data"] == "cifar100"                                   # by name: a resume asks untar_data again
    assert len(info["vocab"]) == 100 and info["n_train"] == 300 and info["n_valid"] == 100
    assert load_file(tmp_path / "run" / "model.safetensors")["fc.weight"].shape[0] == 100     # the head: 100 classes
    capsys.readouterr()
    assert main(["evaluate", "--model", "run", "--data", "cifar100", "--tta-crops"]) == 0
    out = capsys.readouterr().out
    assert "most frequent confusions" in out.lower() and "with multi-crop TTA: " in out


def test_init_fine_tunes_a_trained_body_with_a_new_head_on_fastai_fine_tune_schedule(source_run, tmp_path):
    new = tmp_path / "flowers"
    pictures(new, ["daisy", "rose", "tulip"], 12)
    run = tmp_path / "ft"
    assert main(["train", "--data", str(new), "--init", str(source_run), "--out", str(run), "--epochs", "2",
                 "--width", "1", "--lr-max", "0.002", *TINY[2:]]) == 0   # --width 1 is overruled: the source's body
    info, src = json.loads((run / "run.json").read_text()), load_file(source_run / "model.safetensors")
    assert info["init"] == str(source_run) and info["vocab"] == ["daisy", "rose", "tulip"]
    assert "width = 0.25" in (run / "settings.ini").read_text()
    assert info["stats"] == json.loads((source_run / "run.json").read_text())["stats"]   # the source's input scale
    out = load_file(run / "model.safetensors")
    assert out["fc.weight"].shape == (3, src["fc.weight"].shape[1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [0, 1, 2]               # 1 epoch of the head, then 2 of everything
    hps = json.loads((run / "schedule.json").read_text())
    n_iter = len(hps["lr"]) // 3
    head, whole = hps["lr"][:n_iter], hps["lr"][n_iter:]
    # fastai's fine_tune(base_lr=0.002): fit_one_cycle(1, 0.002, pct_start=0.99) on the head, then
    # fit_one_cycle(2, 0.001, pct_start=0.3, div=5): half-cosines from max/div up to max over pct_start of the steps,
    # then down to max/1e5 (div_final); step i of n at pct i/n
    def one_cycle(i, n, top, pct_start, div):
        half = lambda a, b, p: a + (1 - math.cos(math.pi * p)) * (b - a) / 2
        p = i / n
        return half(top / div, top, p / pct_start) if p < pct_start else \
            half(top, top / 1e5, (p - pct_start) / (1 - pct_start))
    assert head == pytest.approx([one_cycle(i, n_iter, 0.002, 0.99, 25) for i in range(n_iter)])
    assert whole == pytest.approx([one_cycle(i, 2 * n_iter, 0.001, 0.3, 5) for i in range(2 * n_iter)])
    convs = [k for k in src if k.endswith("conv.weight")]     # unfrozen for the last 2 epochs: the body moved
    assert len(convs) == 8 and all(not torch.equal(out[k], src[k]) for k in convs)


def test_a_size_of_48_trains_exports_and_predicts_at_48(tmp_path, capsys):
    root = tmp_path / "mine"
    pictures(root, ["red", "green"], 10, size=(70, 50))
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(run), "--size", "48", "--epochs", "2", *TINY]) == 0
    assert "size = 48" in (run / "settings.ini").read_text()
    learn = load_learner(run / "model.pkl")
    x = learn.dls.test_dl([str(root / "red" / "0.png")]).one_batch()[0]
    assert x.shape == (1, 3, 48, 48)
    label, _, probs = learn.predict(root / "red" / "0.png")
    assert label in ("red", "green") and probs.shape == (2,)
    assert main(["summary", "--model", str(run)]) == 0        # the trained network: width 0.25, 2 classes, 48x48
    convs = 27 * 16 + 9 * 16 * 32 + 2 * 9 * 32 * 32 + 9 * 32 * 64 + 9 * 64 * 128 + 2 * 9 * 128 * 128
    out = capsys.readouterr().out
    assert f"{convs + 2 * (16 + 3 * 32 + 64 + 3 * 128) + 128 * 2 + 2:,}" in out and "3 x 48 x 48" in out
    from fastresnet.learner import load_model
    assert load_model(run / "model.safetensors").dls.test_dl([str(root / "red" / "0.png")]).one_batch()[0].shape \
        == (1, 3, 48, 48)


def test_an_exported_learner_given_data_by_dls_for_takes_every_fastai_call(source_run, tiny_folder, tmp_path):
    """`load_learner` gives a learner without data; `learn.dls = dls_for(learn, folder)` gives it the folder's, read
    as the run read it: `validate` then reports the run's own test accuracy, and tta, lr_find, show_batch,
    show_results, summary and fine_tune work as on any fastai learner. Data of other classes is refused with the
    way to train on them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fastresnet import dls_for
    learn = load_learner(source_run / "model.pkl")
    assert len(learn.dls.valid_ds) == 0  # what fastai exports: the pipeline, not the images
    learn.dls = dls_for(learn, tiny_folder, bs=10)
    final = json.loads((source_run / "final.json").read_text())
    with learn.no_bar():
        _, acc = learn.validate()
        # the same 20 test images the run tested: its accuracy, within one image (the run may have tested in bf16,
        # where the CPU has it; an exported learner predicts in fp32)
        assert len(learn.dls.valid_ds) == final["n_images"] == 20 and abs(acc - final["accuracy"]) <= 1 / 20 + 1e-6
        preds, targs = learn.tta(n=2)
        assert preds.shape == (20, 10) and len(targs) == 20
        found = learn.lr_find(num_it=12, show_plot=False)
        assert len(learn.recorder.lrs) > 0 and found.valley > 0
        learn.dls.show_batch(max_n=4)
        learn.show_results(max_n=4)
        assert "Total params" in learn.summary()
        plt.close("all")
        learn.fine_tune(1, 1e-3)
    assert len(learn.recorder.values) == 1 and math.isfinite(learn.recorder.values[-1][0])
    pictures(tmp_path / "flowers", ["daisy", "rose", "tulip"], 4)
    with pytest.raises(UserError, match="init=MODEL"): dls_for(learn, tmp_path / "flowers")

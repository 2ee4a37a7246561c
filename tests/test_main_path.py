"""The main path as a new user walks it: the documented LR rule on a curve whose answer is known,
relative and default run folders, the exported learner used the way fastai users use one (in a
process that imports only fastai), and the README's Python entry point."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.learner import Learner

from fastresnet.config import UserError
from fastresnet.learner import recipe_learner
from fastresnet.train import _bounds

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--bs", "10", "--lr-find-iters", "6", "--lr-find-end", "1", "--no-tta", "--width", "0.25"]


@pytest.fixture
def cli(fork_server):
    "`fastresnet ARGS` in `cwd` as a real process (forked after the imports: tests/forkserver.py)."
    def run(args, cwd, timeout=600): return fork_server.run(args, cwd=cwd, timeout=timeout)
    return run


def test_default_rule_is_lowest_loss_over_10_on_a_known_curve(arrays, tmp_path, monkeypatch):
    """README: LRMAX = (LR at the lowest smoothed loss) / 10, LRMIN = LRMAX / 100. The curve's
    bottom is placed at LR 10^-1.5 by construction, so LRMAX must be 10^-2.5 and LRMIN 10^-4.5."""
    lrs = np.logspace(-6, 1, 141)                                   # 0.05 decades apart: 10^-1.5 is a grid point
    losses = 1.0 + (np.log10(lrs) + 1.5) ** 2                       # lowest exactly at 10^-1.5
    def fake_fit(self, n_epoch, cbs=None, **kwargs):                # what fastai's finder leaves in the recorder
        self.recorder.lrs, self.recorder.losses = list(lrs), [torch.tensor(float(x)) for x in losses]
    monkeypatch.setattr(Learner, "fit", fake_fit)                    # fastai's lr_find then reads the curve
    learn = recipe_learner(arrays, path=tmp_path, bs=10, lr_find_iters=141, lr_find_passes=100)
    b = _bounds(learn, learn.recipe, None)                          # the run path, with the defaults' rule
    assert b.lr_max == pytest.approx(10 ** -2.5) and b.lr_min == pytest.approx(10 ** -4.5)


def test_a_range_test_still_falling_at_its_end_is_refused_not_trained(arrays, tmp_path, monkeypatch):
    """The shape seen at the width-0.25 proxy (seed 1): the loss falls until the last points, which diverge and
    which fastai drops, so the lowest kept loss sits at the end and `minimum` would give LR(end)/10."""
    lrs = np.logspace(-6, 1, 100)
    losses = np.r_[3.7 - 0.2 * (np.log10(lrs[:95]) + 6), [5.0, 9.0, 20.0, 40.0, 80.0]]  # falls to ~LR 4, then blows up
    def fake_fit(self, n_epoch, cbs=None, **kwargs):
        self.recorder.lrs, self.recorder.losses = list(lrs), [torch.tensor(float(x)) for x in losses]
    monkeypatch.setattr(Learner, "fit", fake_fit)
    learn = recipe_learner(arrays, path=tmp_path, bs=10, lr_find_iters=100, lr_find_passes=100)
    with pytest.raises(UserError, match=r"still falling near its end \(lowest at LR 4\.4") as e:
        _bounds(learn, learn.recipe, None)
    assert e.value.hint == "(--lr-max)"
    # turning up more than a tenth of the test before its end passes: lowest at LR 10^-0.5 -> LRMAX 10^-1.5
    losses[:95] = 1.0 + (np.log10(lrs[:95]) + 0.5) ** 2
    assert _bounds(learn, learn.recipe, None).lr_max == pytest.approx(10 ** -1.5, rel=0.1)


def test_lr_bounds_is_the_documented_rule_over_the_recipes_range(arrays, tmp_path, monkeypatch):
    """`learn.lr_bounds()` (the README's snippet): fastai's lr_find from the settings' 1e-6 (fastai's own default
    is 1e-7) to 10 over `lr_find_iters` batches; on a curve lowest at LR 10^-1.5, LRMAX 10^-2.5 and LRMIN 10^-4.5."""
    lrs = np.logspace(-6, 1, 141)
    losses = 1.0 + (np.log10(lrs) + 1.5) ** 2
    asked = {}
    def fake_fit(self, n_epoch, cbs=None, **kwargs):
        finder = cbs                                                 # fastai passes its LRFinder alone
        sched = finder.scheds["lr"]                                  # the LR as a function of the test's progress
        asked.update(start=sched(0.0), end=sched(1.0), num_it=finder.num_it)
        self.recorder.lrs, self.recorder.losses = list(lrs), [torch.tensor(float(x)) for x in losses]
    monkeypatch.setattr(Learner, "fit", fake_fit)
    learn = recipe_learner(arrays, path=tmp_path, bs=10, lr_find_iters=141, lr_find_passes=100)
    lr_min, lr_max, rule = learn.lr_bounds(show_plot=False)
    assert asked == {"start": 1e-6, "end": 10.0, "num_it": 141} and rule == "minimum"
    assert lr_max == pytest.approx(10 ** -2.5) and lr_min == pytest.approx(10 ** -4.5)


def test_lr_bounds_in_python_gives_the_bounds_of_fastresnet_lr_find(tiny_folder, tmp_path, cli):
    "The notebook's one call and the command line run the same range test on the same pipeline: the same bounds."
    args = ["--width", "0.25", "--bs", "10", "--lr-find-iters", "30"]
    p = cli(["lr-find", "--data", str(tiny_folder), "--out", str(tmp_path / "cli"), *args], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    want = json.loads((tmp_path / "cli" / "lr_bounds.json").read_text())
    learn = recipe_learner(tiny_folder, path=tmp_path, width=0.25, bs=10, lr_find_iters=30)
    with learn.no_bar(): got = learn.lr_bounds(show_plot=False)
    assert got.lr_max == pytest.approx(want["lr_max"], rel=1e-6)
    assert got.lr_min == pytest.approx(want["lr_min"], rel=1e-6)
    curve = json.loads((tmp_path / "cli" / "lr_find.json").read_text())  # the documented rule on the saved curve:
    lrs, losses = curve["lrs"][30 // 10:-5], curve["losses"][30 // 10:-5]  # fastai reads it from num_it//10 to -5,
    losses = losses[:next((i for i, x in enumerate(losses) if x != x), len(losses))]  # up to its first NaN
    assert want["lr_max"] == pytest.approx(lrs[int(np.argmin(losses))] / 10, rel=1e-6)  # (LR of the lowest loss) / 10
    assert want["lr_min"] == pytest.approx(want["lr_max"] / 100, rel=1e-9)  # LRMIN = LRMAX / 100


@pytest.mark.slow
@pytest.mark.parametrize("out", ["relative", "absolute", "default"])
def test_run_folders_relative_absolute_default(tiny_folder, tmp_path, out, cli):
    "fastai joins the Learner's path to the export name: a relative folder must not be joined twice."
    work = tmp_path / "work"
    work.mkdir()
    args = {"relative": ["--out", "runs/e2"], "absolute": ["--out", str(tmp_path / "abs")], "default": []}[out]
    p = cli(["train", "--data", str(tiny_folder), "--epochs", "2", *FAST, *args], cwd=work)
    assert p.returncode == 0, p.stderr[-3000:]
    run = {"relative": work / "runs/e2", "absolute": tmp_path / "abs"}.get(out) or next((work / "runs").iterdir())
    for f in ("model.pkl", "model.safetensors", "report.md", "final.json"): assert (run / f).is_file(), f
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    if out != "absolute":                                           # resume a finished run by its relative name
        (run / "model.pkl").unlink()
        p = cli(["train", "--resume", str(run.relative_to(work))], cwd=work)
        assert p.returncode == 0 and "already finished" in p.stdout, p.stderr[-3000:]
        assert (run / "model.pkl").is_file()


@pytest.fixture
def exported(trained_run) -> Path:
    "The session's trained run's exported learner (read only)."
    return trained_run / "model.pkl"


@pytest.mark.slow
def test_load_learner_predict_in_a_fastai_only_process(exported, tiny_folder):
    "The first thing a fastai user does with an exported learner, in a fresh process that imports only fastai."
    img = tiny_folder / "test" / "cat" / "0003.png"
    code = textwrap.dedent(f"""
        import warnings; warnings.filterwarnings("ignore")
        import torch
        from pathlib import Path
        from PIL import Image
        from fastai.learner import load_learner
        from fastai.vision.all import get_image_files
        learn = load_learner({str(exported)!r})
        with learn.no_bar():
            a = learn.predict({str(img)!r})
            b = learn.predict(Path({str(img)!r}))
            c = learn.predict(Image.open({str(img)!r}).resize((64, 48)))     # other sizes are resized
            d = learn.predict(torch.from_numpy(__import__("numpy").asarray(Image.open({str(img)!r}))).permute(2, 0, 1))
            probs, _ = learn.get_preds(dl=learn.dls.test_dl(get_image_files({str(tiny_folder / "test")!r})))
            e = learn.predict(__import__("numpy").asarray(Image.open({str(img)!r})))        # HWC array
        assert e[0] == a[0]
        print(a[0], b[0], d[0], c[0] in learn.dls.vocab, float(a[2].sum()), tuple(probs.shape))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    a, b, d, c_ok, total, shape = p.stdout.split(maxsplit=5)
    assert a == b == d and c_ok == "True" and float(total) == pytest.approx(1, abs=1e-5)
    assert shape.strip() == "(20, 10)"                                   # the 20 test images of tiny_folder


@pytest.mark.slow
def test_a_pkl_whose_module_is_missing_says_so(tmp_path, exported, tiny_folder, cli):
    "fastai's load_learner turns a missing module into UnboundLocalError; our commands name the cause."
    (tmp_path / "gone_module.py").write_text("def hook(x): return x\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import gone_module\n"
            f"from fastai.learner import load_learner\nlearn = load_learner({str(exported)!r})\n"
            f"learn.extra = gone_module.hook\nlearn.export({str(tmp_path / 'needs.pkl')!r})\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    (tmp_path / "gone_module.py").unlink()
    img = tiny_folder / "test" / "cat" / "0003.png"
    p = cli(["predict", str(img), "--model", str(tmp_path / "needs.pkl"), "--allow-pickle"], cwd=tmp_path)
    assert p.returncode == 2 and "needs a Python module that cannot be imported" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_readme_python_entry_point_runs(tiny_folder, tmp_path, monkeypatch):
    "The README's notebook lines, run as written except for the data path and a shorter schedule."
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "recipe_learner" in block and "lr_bounds()" in block and "fit_one_cycle_peak" in block and "export" in block
    code = (block.replace('"PATH/TO/cifar10"', repr(str(tiny_folder)) + ", bs=10, lr_find_iters=8")
                 .replace("fit_one_cycle_peak(24,", "fit_one_cycle_peak(2,").replace("peak_epoch=5", "peak_epoch=1")
                 .replace("lr_bounds()", "lr_bounds(show_plot=False)"))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    from fastai.learner import load_learner
    learn = load_learner(tmp_path / "model.pkl")
    assert learn.predict(str(tiny_folder / "test" / "dog" / "0005.png"))[0] in learn.dls.vocab


def test_a_width_proxy_run_reloads_from_safetensors(tiny_folder, trained_run):
    "The width travels with the weights: a proxy's model.safetensors rebuilds a model of its own width."
    from fastresnet.inference import iter_predictions
    from fastresnet.learner import load_weights_learner
    learn = load_weights_learner(trained_run / "model.safetensors")       # a width-0.25 run
    assert learn.model.width == 0.25 and learn.model.prep.conv.out_channels == 16
    imgs = sorted((tiny_folder / "test").rglob("*.png"))[:4]
    from fastai.learner import load_learner
    with learn.no_bar():
        a = list(iter_predictions(learn, imgs))
        b = list(iter_predictions(load_learner(trained_run / "model.pkl"), imgs))
    assert [x["probability"] for x in a] == pytest.approx([x["probability"] for x in b], abs=1e-5)


@pytest.mark.slow
def test_load_learner_fine_tune_freezes_the_body_then_trains_everything(exported, tmp_path):
    """A fastai user's habit on the exported learner: new data, `fine_tune`. fastai freezes all layer groups but
    the last (the fc head) for the first fit, then unfreezes and gives the body LRs 100x below the head's."""
    from fastai.callback.core import Callback
    from fastai.learner import load_learner
    from conftest import make_arrays
    from fastresnet.data import recipe_dls
    learn = load_learner(exported)
    assert learn.logger is print                                                 # fastai's, not the run's log lines
    learn.dls = recipe_dls(make_arrays(30, 10), learn.recipe.replace(bs=10))     # new data, same classes
    learn.path = tmp_path
    fits = []
    class Watch(Callback):
        def before_fit(self):
            m = self.model
            fits.append({"body": m.prep.conv.weight.requires_grad, "head": m.fc.weight.requires_grad,
                         "w": m.layer2.conv.weight.detach().clone(), "fc": m.fc.weight.detach().clone()})
        def after_batch(self):
            if self.training and "lrs" not in fits[-1]: fits[-1]["lrs"] = [h["lr"] for h in self.opt.hypers]
        def after_fit(self):
            fits[-1]["w_after"] = self.model.layer2.conv.weight.detach().clone()
            fits[-1]["fc_after"] = self.model.fc.weight.detach().clone()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, base_lr=1e-3, cbs=Watch())
    frozen, whole = fits
    assert (frozen["body"], frozen["head"], whole["body"], whole["head"]) == (False, True, True, True)
    assert torch.equal(frozen["w"], frozen["w_after"]) and not torch.equal(frozen["fc"], frozen["fc_after"])
    assert not torch.equal(whole["w"], whole["w_after"])                         # then the body trains too
    assert whole["lrs"][1] / whole["lrs"][0] == pytest.approx(100)               # slice(base_lr / 100, base_lr)
    from fastresnet.config import UserError
    from fastresnet.data import ImageArrays
    ten = make_arrays(30, 10)                                                    # the same images as 3 classes:
    learn.dls = recipe_dls(ImageArrays(ten.images, ten.labels % 3, ["x", "y", "z"], 30), learn.recipe.replace(bs=10))
    with pytest.raises(UserError, match="head has 10 outputs but the data has 3 classes.*init=MODEL"):
        learn.fine_tune(1)                                                       # fastai would keep the 10-way head

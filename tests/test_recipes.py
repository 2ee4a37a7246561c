"""The shipped recipes (`--recipe NAME_OR_FILE`): what each sets, Page's units converted to fastai's by
arithmetic, and a run of `page-sgd` through the command, its LR on Page's piecewise-linear line."""
import json

import numpy as np
import pytest
import torch

from fastresnet.cli import main
from fastresnet.config import RECIPES, Recipe, UserError, load_settings, recipe_file
from fastresnet.optim import TorchSGD


def test_the_shipped_recipes_hold_what_their_sources_state():
    assert sorted(p.stem for p in RECIPES.glob("*.ini")) == ["adam-933", "default", "page-sgd", "seed"]
    assert load_settings(recipe_file("default")) == Recipe()
    page = load_settings(recipe_file("page-sgd"))
    assert (page.optimizer, page.nesterov, page.beta1_max, page.beta1_min, page.bs) == ("sgd", True, 0.9, 0.9, 512)
    assert (page.lr_max, page.lr_min, page.lr_end) == (0.4, 4e-10, None)   # None: the run ends at LRMIN
    assert (page.wd, page.decouple_wd, page.wd_bn_bias, page.label_smoothing) == (5e-4, False, True, 0.0)
    assert (page.pad, page.pad_mode, page.flip, page.cutout, page.epochs, page.peak_epoch) == \
        (4, "reflect", True, 8, 24, 5)
    adam = load_settings(recipe_file("adam-933"))
    # torch's OneCycleLR(max_lr=0.018, div_factor=100, final_div_factor=1000): initial_lr = max_lr / div_factor,
    # min_lr = initial_lr / final_div_factor
    assert (adam.lr_max, adam.lr_max / adam.lr_min_div, adam.lr_end) == (0.018, pytest.approx(1.8e-4), 1.8e-7)
    assert (adam.optimizer, adam.wd, adam.decouple_wd, adam.beta2, adam.eps, adam.label_smoothing) == \
        ("adam", 1e-4, False, 0.999, 1e-8, 0.0)
    seed = load_settings(recipe_file("seed"))
    assert (seed.lr_max, seed.lr_min_div, seed.wd, seed.decouple_wd, seed.label_smoothing) == (None, 10, 1e-2, False, 0)


def test_unknown_recipe_names_the_shipped_ones_and_a_file_path_works(tmp_path):
    with pytest.raises(UserError, match="No recipe 'pagesgd': give a shipped recipe's name "
                                            r"\(adam-933, default, page-sgd, seed\)"):
        recipe_file("pagesgd")
    mine = tmp_path / "mine.ini"
    mine.write_text("[optimizer]\nwd = 0.4\n")
    assert load_settings(recipe_file(mine)).wd == 0.4
    with pytest.raises(UserError, match="optimizer = sgd adds its weight decay to the gradient"):
        Recipe().replace(optimizer="sgd")


def test_page_units_and_fastai_units_take_the_same_sgd_steps():
    """Page: loss summed over the batch of 512, torch's SGD(lr=0.4/512, weight_decay=5e-4*512, momentum 0.9,
    Nesterov). Ours: the mean loss, lr 0.4 and L2 decay 5e-4 through fastai's hyper-parameter names. A step is
    lr x (gradient + wd x w) in both, so the weights must agree after several steps; the first one is also checked
    against Nesterov's formula by hand: buf = g + wd w; w -= lr (g + wd w + 0.9 buf)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 5, generator=gen), torch.randn(512, generator=gen)
    w0 = torch.randn(5, 3, generator=gen)
    def loss(w, reduce): return reduce(((x @ w).sum(1) - y) ** 2)

    page_w = w0.clone().requires_grad_()
    page = torch.optim.SGD([page_w], lr=0.4 / 512, momentum=0.9, nesterov=True, weight_decay=5e-4 * 512)
    ours_w = w0.clone().requires_grad_()
    ours = TorchSGD([ours_w], lr=0.4, mom=0.9, wd=5e-4)
    ours.set_hypers(lr=0.4, wd=5e-4)                      # as fastai's fit sets them
    for step in range(4):
        for w, opt, reduce in ((page_w, page, torch.sum), (ours_w, ours, torch.mean)):
            opt.zero_grad()
            loss(w, reduce).backward()
            if step == 0 and opt is ours:
                g = ours_w.grad + 5e-4 * ours_w.detach()
                by_hand = ours_w.detach() - 0.4 * (g + 0.9 * g)
            opt.step()
            if step == 0 and opt is ours: assert torch.allclose(ours_w.detach(), by_hand, rtol=1e-5, atol=1e-7)
        assert torch.allclose(page_w.detach(), ours_w.detach(), rtol=1e-4, atol=1e-6), step


def test_page_sgd_through_the_command_records_the_recipe_and_follows_page_lr_line(tiny_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--recipe", "page-sgd", "--out", str(run), "--bs", "10",
                 "--epochs", "3", "--peak-epoch", "1", "--no-tta", "--width", "0.25"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["recipe"] == "page-sgd"
    ini = (run / "settings.ini").read_text()
    assert "optimizer = sgd" in ini and "pad_mode = reflect" in ini and "bs = 10" in ini
    lrs = json.loads((run / "schedule.json").read_text())["lr"]
    n = len(lrs) // 3
    # PiecewiseLinear([0, 1, 3], [0, 0.4, 0]) in epochs, at step s = epoch s/n, except that the last step (3n - 1)
    # already reaches 0: within 0.4 / (2n) of Page's line
    page = np.interp(np.arange(3 * n) / n, [0, 1, 3], [0, 0.4, 0])
    assert np.allclose(lrs, page, atol=0.4 / (2 * n) + 1e-9) and abs(lrs[-1]) < 1e-9 and lrs[0] < 1e-9
    assert max(lrs) == pytest.approx(0.4)


def test_every_run_on_the_gpu_agenda_is_a_valid_train_command():
    "A typo in experiments/gpu_runs.txt would cost a lent GPU's minutes: each line must parse into a valid recipe."
    from pathlib import Path
    from fastresnet.cli import build_parser, recipe_from_args
    lines = [ln.split() for ln in (Path(__file__).resolve().parents[1] / "experiments" / "gpu_runs.txt")
             .read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len({name for name, *_ in lines}) == len(lines) >= 16                      # names are run folders
    for name, *flags in lines:
        r = recipe_from_args(build_parser().parse_args(["train", "--out", name, *flags]))
        assert r.epochs in (8, 12, 16, 24), name


def test_every_run_of_the_cpu_campaign_is_a_valid_24_epoch_train_command():
    "A typo in experiments/cpu_runs.txt would cost a session's run: each line must parse; `@RUN` names a run above."
    from pathlib import Path
    from fastresnet.cli import build_parser, recipe_from_args
    lines = [ln.split() for ln in (Path(__file__).resolve().parents[1] / "experiments" / "cpu_runs.txt")
             .read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    names = [name for name, *_ in lines]
    assert len(set(names)) == len(names) >= 4 and names[:4] == [
        "default-bf16-s42", "lrmin1000-bf16-s42", "default-bf16-s1", "lrmin1000-bf16-s1"]   # issue 34's order
    for i, (name, *flags) in enumerate(lines):
        refs = [f[1:] for f in flags if f.startswith("@")]
        assert all(ref in names[:i] for ref in refs), name                        # LRMAX of a run that comes first
        r = recipe_from_args(build_parser().parse_args(["train", "--out", name, *[
            "0.002" if f.startswith("@") else f for f in flags]]))
        assert r.epochs == 24 and r.seed == int(name.rsplit("-s", 1)[1]), name

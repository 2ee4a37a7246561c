from dataclasses import fields
from pathlib import Path

import pytest

from fastresnet.cli import build_parser, recipe_from_args
from fastresnet.config import PACKAGED_SETTINGS, Recipe, UserError, load_settings, recipe_to_ini

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_settings_file_is_generated_from_the_recipe():
    "Recipe is the one source of defaults; the shipped settings.ini is its rendering (python -m fastresnet.config)."
    assert PACKAGED_SETTINGS.read_text() == recipe_to_ini(Recipe())
    assert load_settings(PACKAGED_SETTINGS) == Recipe()


def test_every_field_is_written_in_the_settings_file():
    text = PACKAGED_SETTINGS.read_text()
    for f in fields(Recipe):
        assert f"\n{f.name} =" in text, f"{f.name} is missing from settings.ini"


def test_repo_root_settings_is_the_packaged_file():
    assert (ROOT / "settings.ini").read_text() == PACKAGED_SETTINGS.read_text()


def test_round_trip_through_ini(tmp_path):
    r = Recipe(bs=64, wd=0.1, decouple_wd=False, pad_mode="reflect")
    p = tmp_path / "s.ini"
    p.write_text(recipe_to_ini(r))
    assert load_settings(p) == r


@pytest.mark.parametrize("text, match", [
    ("[train]\nbatch = 3\n", "unknown key `batch`"),
    ("[trian]\nbs = 3\n", r"unknown section \[trian\]"),
    ("[train]\nbs = many\n", "not a valid int"),
    ("[train]\nepochs = 1\n", "at least 2"),
    ("[train]\nbs = -4\n", "at least 1"),
    ("[train]\nepochs = 5\npeak_epoch = 5\n", "peak_epoch"),
    ("[schedule]\nlr_max = 0.01\nlr_min = 0.02\n", "LRMIN"),
    ("[schedule]\nlr_rule = lowest\n", "choose one of"),
    ("[schedule]\nshape = cos\n", r"`shape = cos` is a setting of fastresnet 0.1 that 0.2 removed, settled at linear"),
    ("[model]\nlogit_scale = 0.125\n", "`logit_scale = 0.125` is a setting of fastresnet 0.1"),
    ("[model]\nzero_init_residual = yes\n", "`zero_init_residual = True` is a setting of fastresnet 0.1"),
    ("[optimizer]\ndecouple_wd = maybe\n", "not a valid bool"),
    ("bs = 3\n", "not a valid settings file"),
])
def test_bad_settings_are_named(tmp_path, text, match):
    p = tmp_path / "s.ini"
    p.write_text(text)
    with pytest.raises(UserError, match=match):
        load_settings(p)


def test_a_settings_file_of_0_1_reads_as_before():
    "A run folder's settings.ini written by fastresnet 0.1, with its retired settings at their settled values."
    old = ROOT / "docs" / "runs" / "default-bf16-s42" / "settings.ini"
    assert "logit_scale = 1.0" in old.read_text() and "shape = linear" in old.read_text()
    r = load_settings(old)
    assert (r.seed, r.precision, r.wd, r.label_smoothing) == (42, "bf16", 0.8, 0.1)
    assert not hasattr(r, "logit_scale") and "logit_scale" not in recipe_to_ini(r)


def test_missing_settings_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_settings(tmp_path / "nope.ini")


def test_flags_override_settings_file(tmp_path):
    p = tmp_path / "s.ini"
    p.write_text("[train]\nbs = 64\nepochs = 10\npeak_epoch = 4\n")
    r = recipe_from_args(build_parser().parse_args(["train", "--settings", str(p), "--cutout", "0"]))
    assert (r.bs, r.epochs, r.cutout, r.peak_epoch) == (64, 10, 0, 4)
    r = recipe_from_args(build_parser().parse_args(["train", "--settings", str(p), "--epochs", "7"]))
    assert (r.bs, r.epochs, r.peak_epoch) == (64, 7, 1)              # a new length: the peak at 5/24 of it


def test_the_short_run_peak_is_one_continuous_rule(capsys):
    """docs/reliability.md: without --peak-epoch, N epochs peak at round-half-up(5N/24), at least 1. Known answers:
    5N/24 for N = 6 is 1.25 → 1, for N = 12 is 2.5 → 3, for N = 17 is 3.54 → 4, for N = 24 is 5."""
    known = {2: 1, 3: 1, 5: 1, 6: 1, 7: 1, 8: 2, 12: 3, 13: 3, 17: 4, 24: 5, 29: 6, 30: 6}
    peaks = {n: recipe_from_args(build_parser().parse_args(["train", "--epochs", str(n)])).peak_epoch
             for n in range(2, 31)}
    assert {n: peaks[n] for n in known} == known
    assert all(0 <= peaks[n + 1] - peaks[n] <= 1 for n in range(2, 30))   # never jumps, never goes back
    assert all(1 <= peaks[n] < n for n in peaks)
    assert "peaks at the end of epoch 1 (5/24 of training" in capsys.readouterr().err
    r = recipe_from_args(build_parser().parse_args(["train", "--epochs", "12", "--peak-epoch", "5"]))
    assert r.peak_epoch == 5                                          # given: kept
    with pytest.raises(UserError, match="peak_epoch"):
        recipe_from_args(build_parser().parse_args(["train", "--epochs", "4", "--peak-epoch", "4"]))


def test_every_recipe_field_is_a_flag():
    from dataclasses import fields
    from fastresnet.cli import build_parser, recipe_from_args
    from fastresnet.config import Recipe
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert {f.name for f in fields(Recipe)} <= flags
    r = recipe_from_args(build_parser().parse_args(
        ["train", "--wd-bn-bias", "--width", "0.5", "--pad-mode", "reflect", "--no-tta", "--lr-find-end", "2"]))
    assert (r.wd_bn_bias, r.width, r.pad_mode, r.tta, r.lr_find_end) == (True, 0.5, "reflect", False, 2.0)


@pytest.mark.parametrize("flag", ["--epochs", "--peak-epoch", "--lr-max", "--lr-min", "--tta", "--compile",
                                  "--valid-every", "--ema", "--sync-bn"])
def test_lr_find_takes_only_the_flags_it_uses(flag, capsys):
    "The range test ignores the schedule, the evaluation and compilation: lr-find refuses their flags."
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["lr-find", flag, "1"] if flag not in ("--tta", "--compile", "--sync-bn")
                                  else ["lr-find", flag])
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    a = build_parser().parse_args(["lr-find", "--bs", "64", "--wd", "0.4", "--cutout", "0", "--lr-rule", "valley"])
    assert (a.bs, a.wd, a.cutout, a.lr_rule) == (64, 0.4, 0, "valley")


def test_a_malformed_flag_value_names_the_flag(capsys):
    from fastresnet.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", "--bs", "lots"])
    assert e.value.code == 2 and "--bs" in capsys.readouterr().err


def test_auto_derives_and_0_2s_zero_reads_as_auto(tmp_path):
    """settings.ini: `auto` for LRMAX (the range test), LRMIN (LRMAX / lr_min_div) and lr_end (LRMIN); run folders
    of 0.2 wrote 0.0 for the same, which reads as auto (never a usable LR), so their runs resume unchanged."""
    old = tmp_path / "old.ini"
    old.write_text("[schedule]\nlr_max = 0.0\nlr_min = 0\nlr_end = 0.0\n")
    assert (load_settings(old).lr_max, load_settings(old).lr_min, load_settings(old).lr_end) == (None, None, None)
    new = tmp_path / "new.ini"
    new.write_text("[schedule]\nlr_max = 0.4\nlr_min = auto\nlr_end = 1e-9\n")
    assert (load_settings(new).lr_max, load_settings(new).lr_min, load_settings(new).lr_end) == (0.4, None, 1e-9)
    assert "lr_max = auto " in recipe_to_ini(Recipe()) and "lr_end = 1e-09 " in recipe_to_ini(load_settings(new))
    assert Recipe.from_dict({"lr_max": 0.0, "lr_end": None}, "w").lr_max is None   # a 0.2 weights file's recipe
    with pytest.raises(UserError, match="must be above 0"):
        Recipe(lr_max=-1.0).validate()

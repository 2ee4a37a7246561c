from dataclasses import fields
from pathlib import Path

import pytest

from fastresnet.cli import build_parser, recipe_from_args
from fastresnet.config import PACKAGED_SETTINGS, Recipe, SettingsError, load_settings, recipe_to_ini

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_settings_equal_code_defaults():
    assert load_settings(PACKAGED_SETTINGS) == Recipe()


def test_every_field_is_written_in_the_settings_file():
    text = PACKAGED_SETTINGS.read_text()
    for f in fields(Recipe):
        assert f"\n{f.name} =" in text, f"{f.name} is missing from settings.ini"


def test_repo_root_settings_is_the_packaged_file():
    assert (ROOT / "settings.ini").read_text() == PACKAGED_SETTINGS.read_text()


def test_round_trip_through_ini(tmp_path):
    r = Recipe(bs=64, wd=0.1, decouple_wd=False, shape="cos")
    p = tmp_path / "s.ini"
    p.write_text(recipe_to_ini(r))
    assert load_settings(p) == r


@pytest.mark.parametrize("text, match", [
    ("[train]\nbatch = 3\n", "unknown key `batch`"),
    ("[trian]\nbs = 3\n", r"unknown section \[trian\]"),
    ("[train]\nbs = many\n", "not a valid int"),
    ("[train]\nepochs = 0\n", "at least 1"),
    ("[train]\nbs = -4\n", "at least 1"),
    ("[train]\nepochs = 5\npeak_epoch = 5\n", "peak_epoch"),
    ("[schedule]\nlr_max = 0.01\nlr_min = 0.02\n", "LRMIN"),
    ("[schedule]\nshape = square\n", "choose one of"),
    ("[optimizer]\ndecouple_wd = maybe\n", "not a valid bool"),
    ("bs = 3\n", "not a valid settings file"),
])
def test_bad_settings_are_named(tmp_path, text, match):
    p = tmp_path / "s.ini"
    p.write_text(text)
    with pytest.raises(SettingsError, match=match):
        load_settings(p)


def test_missing_settings_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.ini")


def test_flags_override_settings_file(tmp_path):
    p = tmp_path / "s.ini"
    p.write_text("[train]\nbs = 64\nepochs = 10\n")
    a = build_parser().parse_args(["train", "--settings", str(p), "--epochs", "7", "--set", "cutout=0"])
    r = recipe_from_args(a)
    assert (r.bs, r.epochs, r.cutout, r.peak_epoch) == (64, 7, 0, 5)


def test_bad_set_flag():
    a = build_parser().parse_args(["train", "--set", "colour=red"])
    with pytest.raises(SettingsError, match="unknown setting"):
        recipe_from_args(a)


def test_short_runs_scale_the_peak_unless_it_is_given(capsys):
    r = recipe_from_args(build_parser().parse_args(["train", "--epochs", "2"]))
    assert (r.epochs, r.peak_epoch) == (2, 1) and "peaks at the end of epoch 1" in capsys.readouterr().err
    r = recipe_from_args(build_parser().parse_args(["train", "--epochs", "12"]))
    assert r.peak_epoch == 5                                      # still possible: unchanged
    with pytest.raises(SettingsError, match="peak_epoch"):
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


def test_a_malformed_flag_value_names_the_flag(capsys):
    from fastresnet.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", "--bs", "lots"])
    assert e.value.code == 2 and "--bs" in capsys.readouterr().err

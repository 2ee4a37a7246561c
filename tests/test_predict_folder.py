"""`fastresnet predict DIR --csv FILE`: every image under a folder, batched, one row per file with the top 3,
unreadable files listed and skipped, the same answers as `learn.predict`, nothing lost on interruption."""
import csv
import shutil
import signal

import numpy as np
import pytest
from fastai.learner import load_learner
from PIL import Image

from fastresnet import inference
from fastresnet.cli import main
from fastresnet.config import UserError
from interrupt import signal_at

pytestmark = pytest.mark.slow


@pytest.fixture
def run(trained_run):
    "The session's trained run (read only)."
    return trained_run


@pytest.fixture
def photos(tiny_folder, tmp_path):
    "A nested folder: 8 good images at two depths, one corrupt `.png`, one text file, one large grayscale image."
    root = tmp_path / "photos"
    for i, f in enumerate(sorted((tiny_folder / "test").glob("*/*.png"))[:8]):
        d = root / ("a" if i < 4 else "b/c")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, d / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "b" / "readme.txt").write_text("not an image, and not named like one")
    Image.fromarray(np.full((96, 64), 128, np.uint8), "L").save(root / "gray.jpg")
    return root


def _rows(path):
    with open(path, newline="") as f: return list(csv.DictReader(f))


def test_csv_has_a_row_per_readable_image_with_learn_predicts_answer(run, photos, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    code = main(["predict", str(photos), "--model", str(run / "model.safetensors"), "--csv", str(out)])
    cap = capsys.readouterr()
    assert code == 1                                                    # one file was skipped
    assert "broken.png is corrupt or not an image" in cap.err and "readme" not in cap.err + cap.out
    assert "9 predictions written" in cap.out and "1 file(s) skipped" in cap.out
    rows = _rows(out)
    assert list(rows[0]) == ["path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"]
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows) and len(rows) == 9
    assert any(r["path"].endswith("b/c/7.png") for r in rows)          # found recursively
    learn = load_learner(run / "model.pkl")
    for r in rows:
        cls, _, probs = learn.predict(r["path"])
        p = [float(r[k]) for k in ("probability", "probability_2", "probability_3")]
        assert r["class"] == cls and p == sorted(p, reverse=True) and abs(p[0] - float(probs.max())) < 1e-4
        assert len({r["class"], r["class_2"], r["class_3"]}) == 3
    assert not (tmp_path / "preds.csv.partial").exists()


def test_batches_give_the_same_answers_as_one_by_one(run, photos):
    learn = load_learner(run / "model.pkl")
    files = inference.image_files([photos])
    batched = [r for r in inference.iter_predictions(learn, files, bs=512) if "error" not in r]
    small = [r for r in inference.iter_predictions(learn, files, bs=3) if "error" not in r]
    assert [(r["file"], r["class"]) for r in batched] == [(r["file"], r["class"]) for r in small]
    assert all(abs(a["probability"] - b["probability"]) < 1e-5 for a, b in zip(batched, small))


def test_an_interrupted_csv_keeps_the_rows_done_so_far(run, tiny_folder, tmp_path, capsys):
    """A real Ctrl-C (SIGINT to this process) while the second batch's images are read: the first batch's rows
    (INFER_BS of them) are in the .partial file, the final name is not taken. (A SIGTERM from outside with rows
    still coming: test_hostile.py.)"""
    many = tmp_path / "many"
    many.mkdir()
    png = (tiny_folder / "test" / "cat" / "0003.png").read_bytes()
    for i in range(inference.INFER_BS + 40): (many / f"{i:04d}.png").write_bytes(png)
    out = tmp_path / "preds.csv"
    with signal_at("image_read", inference.INFER_BS + 20, signal.SIGINT):
        code = main(["predict", str(many), "--model", str(run / "model.safetensors"), "--csv", str(out)])
    assert code == 130
    assert f"the {inference.INFER_BS} predictions made so far are in {out}.partial" in capsys.readouterr().err
    rows = _rows(tmp_path / "preds.csv.partial")
    assert [r["path"] for r in rows] == [str(many / f"{i:04d}.png") for i in range(inference.INFER_BS)]
    assert not out.exists()


def test_ctrl_c_while_predicting_to_the_screen_keeps_the_printed_lines(run, photos, capsys):
    "A real Ctrl-C while the images are read: the command stops with 130 and says so, no traceback."
    with signal_at("image_read", 3, signal.SIGINT):
        code = main(["predict", str(photos), "--model", str(run / "model.safetensors")])
    cap = capsys.readouterr()
    assert code == 130 and "Interrupted." in cap.err and "Traceback" not in cap.err and cap.out == ""


@pytest.mark.parametrize("case, match", [("empty_folder", "holds no image files"),
                                         ("missing_csv_folder", "does not exist"),
                                         ("csv_is_a_folder", "is a folder")])
def test_bad_folders_and_csv_paths_exit_2(run, tmp_path, capsys, case, match, tiny_folder):
    images, out = str(tiny_folder / "test"), tmp_path / "preds.csv"
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        images = str(tmp_path / "empty")
    elif case == "missing_csv_folder": out = tmp_path / "nowhere" / "preds.csv"
    else: out = tmp_path
    assert main(["predict", images, "--model", str(run / "model.safetensors"), "--csv", str(out)]) == 2
    assert match in capsys.readouterr().err


def test_a_run_folder_is_a_model_its_safetensors_first(run, tmp_path, tiny_folder, capsys):
    from fastresnet.learner import model_file
    assert model_file(run) == run / "model.safetensors" == model_file(run / "model.pkl")  # the same weights, no pickle
    (tmp_path / "pkl").mkdir()
    shutil.copy(run / "model.pkl", tmp_path / "pkl" / "model.pkl")
    assert model_file(tmp_path / "pkl") == tmp_path / "pkl" / "model.pkl"  # a pickle alone: load_model asks first
    img = str(sorted((tiny_folder / "test" / "cat").iterdir())[0])
    assert main(["predict", img, "--model", str(run)]) == 0
    by_folder = capsys.readouterr().out
    assert main(["predict", img, "--model", str(run / "model.pkl")]) == 0
    assert capsys.readouterr().out == by_folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither model.safetensors nor model.pkl"): model_file(tmp_path / "empty")

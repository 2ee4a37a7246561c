"""Own data as fastai users also keep it (issue 48): a CSV of file names and classes beside the images, as
`ImageDataLoaders.from_csv` reads it, with an optional `is_valid` column, through the same `--data` and checks."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import pictures
from fastresnet.cli import main
from fastresnet.config import UserError
from fastresnet.data import load_arrays, read_folder


@pytest.fixture
def flat(tmp_path):
    "Pictures of three classes in class folders, listed again in labels.csv (rows in another order)."
    pictures(tmp_path / "img", ["red", "green", "blue"], 5)
    rows = sorted(f"{p.relative_to(tmp_path / 'img')},{p.parent.name}" for p in (tmp_path / "img").rglob("*.png"))
    (tmp_path / "img" / "labels.csv").write_text("fname,label\n" + "\n".join(reversed(rows)) + "\n")
    return tmp_path / "img"


def test_a_csv_reads_as_the_class_folders_it_describes(flat):
    by_csv, by_folders = load_arrays(flat / "labels.csv"), read_folder(flat)
    assert by_csv.vocab == by_folders.vocab == ["blue", "green", "red"]
    assert by_csv.valid_files == by_folders.valid_files  # the same stratified split, the same held-out files
    assert np.array_equal(by_csv.images.numpy(), by_folders.images.numpy())
    assert by_csv.labels.tolist() == by_folders.labels.tolist()


def test_an_is_valid_column_is_the_split(flat):
    rows = [f"{c}/{i}.png,{c},{'true' if i == 4 else 'false'}" for c in ("red", "green", "blue") for i in range(5)]
    (flat / "split.csv").write_text("name,label,is_valid\n" + "\n".join(rows) + "\n")
    d = load_arrays(flat / "split.csv")
    assert (d.n_train, d.n_valid) == (12, 3) and d.valid_files is None  # held out by the file, not drawn
    held = d.images[d.n_train:].numpy()
    want = [np.asarray(Image.open(flat / c / "4.png")).transpose(2, 0, 1) for c in ("blue", "green", "red")]
    assert all(np.array_equal(h, w) for h, w in zip(held, want))


@pytest.mark.parametrize("rows, match", [
    ("fname,label\nred/0.png,red\nred/9.png,red\n", r"line 3: red/9.png does not exist"),
    ("fname,label\nred/0.png\n", r"line 2: 'red/0.png' is not file name, class"),
    ("fname,label\n../outside.png,red\n", r"outside"),
    ("fname,label,is_valid\nred/0.png,red,maybe\n", r"is_valid \(true or false\)"),
    ("fname,label,is_valid\nred/0.png,red,false\ngreen/0.png,green,true\n",
     r"training rows and its is_valid rows differ"),
])
def test_bad_rows_are_refused_and_listed(flat, rows, match):
    (flat / "bad.csv").write_text(rows)
    with pytest.raises(UserError, match=match): load_arrays(flat / "bad.csv")


def test_train_takes_the_csv_and_a_resume_checks_it(flat, tmp_path, capsys):
    args = ["--bs", "6", "--epochs", "2", "--lr-max", "1e-3", "--width", "0.25", "--no-tta"]
    assert main(["train", "--data", str(flat / "labels.csv"), "--out", str(tmp_path / "r"), *args]) == 0
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["data"] == str((flat / "labels.csv").resolve()) and info["vocab"] == ["blue", "green", "red"]
    assert (tmp_path / "r" / "split.json").is_file()

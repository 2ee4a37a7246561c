"""The package on its own (issue 48): `python -m fastresnet`, advice a wheel user can follow, the same run giving
the same weights file byte for byte, a license in the metadata."""
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import make_arrays
from fastresnet.config import Recipe
from fastresnet.learner import build_learner, read_weights, save_weights
from fastresnet.data import recipe_dls

ROOT = Path(__file__).resolve().parents[1]


def test_python_dash_m_fastresnet_is_the_command():
    p = subprocess.run([sys.executable, "-m", "fastresnet", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "usage: fastresnet" in p.stdout and "train" in p.stdout


def test_the_same_weights_give_the_same_file_byte_for_byte(tmp_path):
    learn = build_learner(recipe_dls(make_arrays(), Recipe(bs=10)), Recipe(bs=10, width=0.125))
    files = [tmp_path / f"{i}.safetensors" for i in range(8)]
    for f in files: save_weights(learn, f)
    assert len({f.read_bytes() for f in files}) == 1  # the writer's metadata order was random: 8 files, 8 orders
    sd, vocab, r, _ = read_weights(files[0])  # still a file the reader (and its SHA-256 check) takes
    assert r.width == 0.125 and vocab == list(learn.dls.vocab)


def test_installation_advice_is_a_wheel_users():
    for module in ("cli", "serve", "distributed", "learner"):
        text = (ROOT / "fastresnet" / f"{module}.py").read_text()
        assert "in the project folder" not in text
        assert 'pip install -e ".[' not in text.replace('(in a clone: pip install -e ".[', "")


def test_the_license_ships_and_is_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0" and (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert "Programming Language :: Python :: 3.11" in meta["classifiers"]


def test_a_pipe_is_told_what_is_decoded_and_cached(tiny_folder, capsys, tmp_path, monkeypatch):
    from fastresnet.data import read_folder
    monkeypatch.setenv("FASTRESNET_CACHE", str(tmp_path / "c"))
    read_folder(tiny_folder)
    out = capsys.readouterr().err  # pytest's captured stdout is not a terminal, as a pipe is not
    assert f"Decoding 60 image files under {tiny_folder}, once: caching them (0 MB) in {tmp_path / 'c'}" in out
    read_folder(tiny_folder)
    assert "Decoding" not in capsys.readouterr().err  # from the cache: nothing to say


def test_an_extra_brings_jupyter_and_the_notebooks_default_to_a_quick_look():
    import json
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("jupyterlab") for r in meta["optional-dependencies"]["notebooks"])
    for nb in ("01_lr_find", "02_train"):
        cells = json.loads((ROOT / "nbs" / f"{nb}.ipynb").read_text())["cells"]
        params = {}
        exec("".join(next(c for c in cells if c["cell_type"] == "code")["source"]), params)
        assert (params["FULL"], params["SUBSET"], params["WIDTH"]) == (False, 2000, 0.25), nb

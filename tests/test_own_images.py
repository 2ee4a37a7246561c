"""Your own images: a real data set (scikit-learn's copy of the UCI handwritten digits, 1,797 8x8 images) as class
folders with no test folder, trained with the recipe through the command; and 3 classes of generated pictures of
mixed sizes and modes through train → export → `load_learner().predict` → `predict --csv` → `serve`."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fastai.learner import load_learner
from PIL import Image

from conftest import script_module

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(fork_server):
    "`fastresnet ARGS` as a real process (forked after the imports: tests/forkserver.py)."
    return lambda *args: fork_server.run(list(args), timeout=1200)


def test_handwritten_digits_reach_90_percent_on_the_held_out_split(tmp_path, cli):
    from sklearn.datasets import load_digits
    digits = load_digits()
    root = tmp_path / "digits"
    for i, (img, y) in enumerate(zip(digits.images, digits.target)):   # 0-16 grey levels → 8-bit PNG, 8x8
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8), "L").save(root / str(y) / f"{i:04d}.png")
    run = tmp_path / "run"
    p = cli("train", "--data", root, "--out", run, "--width", "0.25", "--bs", "64", "--epochs", "6", "--no-tta")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "1797 image(s) under" in p.stderr and "were not 32x32 and were resized" in p.stderr
    final, info = json.loads((run / "final.json").read_text()), json.loads((run / "run.json").read_text())
    split = json.loads((run / "split.json").read_text())
    # round-half-up(0.2 n) of each digit's n images is held out
    counts = np.bincount(digits.target)
    assert len(split["valid"]) == final["n_images"] == sum(int(0.2 * n + 0.5) for n in counts)
    assert info["vocab"] == [str(d) for d in range(10)] and info["n_train"] == 1797 - final["n_images"]
    print(f"digits: {final['accuracy']:.4f} on {final['n_images']} held-out images in {info['seconds']:.0f} s")
    assert final["accuracy"] >= 0.90
    held = root / split["valid"][0]
    assert load_learner(run / "model.pkl").predict(held)[0] in info["vocab"]


def picture(cls: int, w: int, h: int, mode: str, seed: int) -> Image.Image:
    "Class 0 reddish, 1 greenish, 2 bluish, with noise; any size, then converted to `mode`."
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3)) + rng.integers(0, 60, (h, w, 3))
    base[..., cls] += 160
    return Image.fromarray(base.clip(0, 255).astype(np.uint8)).convert(mode)


def test_three_classes_of_mixed_pictures_from_training_to_the_page(tmp_path, cli):
    names, root = ["red fox", "green frog", "blue jay"], tmp_path / "mine"
    sizes = [(20, 17), (300, 200), (64, 64), (33, 90), (128, 40)]
    modes = ["RGB", "L", "RGBA", "RGB", "P"]
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(24):
            w, h = sizes[i % len(sizes)]
            picture(c, w, h, modes[i % len(modes)], 100 * c + i).save(root / name / f"{i}.png")
    run = tmp_path / "run"
    p = cli("train", "--data", root, "--out", run, "--width", "0.25", "--bs", "16", "--epochs", "4",
            "--lr-max", "0.003", "--no-tta")
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["vocab"] == sorted(names) and info["stats"] != [[0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]]
    new = tmp_path / "new.png"
    picture(2, 250, 120, "RGBA", 999).save(new)                     # a blue picture it has not seen
    label, _, probs = load_learner(run / "model.pkl").predict(new)
    assert label == "blue jay"
    out = tmp_path / "p.csv"
    p = cli("predict", root, "--model", run / "model.safetensors", "--csv", out)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 72 and {r["class"] for r in rows} <= set(names) and {r["class_3"] for r in rows} <= set(names)
    bench = script_module("benchmarks/bench_serve.py")
    proc, url = bench.start_server(run, tmp_path / "serve-tmp")
    try: rec = bench.load(url, [[new]])[0]
    finally: bench.stop_server(proc)
    assert rec["label"] == "blue jay" and {c["label"] for c in rec["confidences"]} == set(names), rec

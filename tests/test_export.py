"""Taking a trained model elsewhere (issue 47): the network through torch.export, the ONNX file run by onnxruntime
alone (no torch, no fastai) against `fastresnet predict`, the README's onnxruntime snippet run as written, and the
Hub folder loaded by the real commands."""
import copy
import csv
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.vision.core import TensorImage
from PIL import Image

from conftest import make_arrays, make_folder, pictures
from fastresnet.cli import main
from fastresnet.config import Recipe
from fastresnet.data import recipe_dls
from fastresnet.export import ONNX_SNIPPET
from fastresnet.inference import predict_images
from fastresnet.learner import build_learner, load_model
from fastresnet.model import CustomResNet
from fastresnet.train import run as train_run


@pytest.mark.parametrize("training", [False, True])
def test_torch_export_takes_the_network_in_eval_and_train_mode(training):
    torch.manual_seed(0)
    net = CustomResNet(width=0.25).train(training)
    x = torch.randn(4, 3, 32, 32)
    twin = copy.deepcopy(net)  # train mode updates BatchNorm's running statistics: each copy runs once
    program = torch.export.export(net, (x,))
    assert torch.allclose(program.module()(x), twin(x), atol=1e-5)


def test_the_learners_model_gets_plain_tensors_and_its_inputs_keep_fastais_type():
    "The cast the network no longer makes is fastai's CastToTensor's, on every path a Learner calls the model."
    seen = []
    learn = build_learner(recipe_dls(make_arrays(), Recipe(bs=10)), Recipe(bs=10, width=0.25, precision="fp32"))
    learn.model.register_forward_pre_hook(lambda m, args: seen.append(type(args[0])))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    inputs, _, _ = learn.get_preds(with_input=True)
    assert seen and set(seen) == {torch.Tensor}  # training and the test pass: no TensorImage in the forward pass
    assert isinstance(inputs, TensorImage)       # what fastai's top losses and show_results read


# ---------------------------------------------------------------- the ONNX file and the Hub folder
ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = ("import sys\n"  # a python in which torch, fastai and fastresnet cannot be imported: onnxruntime alone
            "for m in ('torch', 'fastai', 'fastresnet'): sys.modules[m] = None\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tiny_folder, tmp_path_factory):
    "A run whose model tells the images apart (100% on its test images; conftest's source_run answers one class)."
    d = tmp_path_factory.mktemp("export") / "run"
    r = Recipe(bs=10, epochs=4, peak_epoch=1, lr_max=3e-3, width=0.25, bn_momentum=0.5, tta=False)
    train_run(r, d, str(tiny_folder), log=lambda *a: None)
    return d


@pytest.fixture(scope="module")
def hub(run):
    "`fastresnet export RUN --hub DIR --onnx`, the command a user runs."
    out = run.parent / "hub"
    assert main(["export", str(run), "--hub", str(out), "--onnx"]) == 0
    return out


@pytest.fixture(scope="module")
def images(tiny_folder, tmp_path_factory):
    "Real image files: the tiny data's test PNGs, CIFAR-like JPEGs, and pictures of other sizes and modes."
    d = tmp_path_factory.mktemp("images")
    make_folder(d / "jpeg", n_train=1, n_test=10, ext=".jpg")
    pictures(d / "big", ["a", "b"], 2, seed=3, size=(48, 40))  # resized to 32x32 on the way in
    Image.open(d / "big" / "a" / "0.png").convert("L").save(d / "grey.png")
    Image.open(d / "big" / "b" / "0.png").convert("P").save(d / "palette.png")
    return sorted((tiny_folder / "test").rglob("*.png")) + sorted((d / "jpeg" / "test").rglob("*.jpg")) + sorted(
        (d / "big").rglob("*.png")) + [d / "grey.png", d / "palette.png"]


def _readme_snippet() -> str:
    "The README's onnxruntime snippet, as a reader copies it."
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "onnxruntime" in b)


def _run_snippet(code: str, cwd: Path, files: list[Path]) -> list[list[float]]:
    "`code` in a python without torch and fastai, on `files`; the probabilities it computed."
    code = code.replace('["cat.png"]', repr([str(f) for f in files]))
    trailer = ("\nimport json as _j\nprint('PROBS', _j.dumps(probs.tolist()))\n"
               "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'fastai') and sys.modules[m]]\n")
    res = subprocess.run([sys.executable, "-c", NO_TORCH + code + trailer], cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(next(line for line in res.stdout.splitlines() if line.startswith("PROBS "))[6:])


@pytest.mark.slow
def test_onnxruntime_alone_gives_fastresnet_predicts_probabilities(hub, images, tmp_path):
    "The README's snippet, run where neither torch nor fastai can be imported, against `fastresnet predict --csv`."
    assert _readme_snippet() == ONNX_SNIPPET  # the model card holds the same text (test below)
    probs = np.array(_run_snippet(ONNX_SNIPPET, hub, images))
    assert main(["predict", *map(str, images), "--model", str(hub), "--csv", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    vocab = json.loads((hub / "config.json").read_text())["classes"]
    assert [r["path"] for r in rows] == [str(f) for f in images] and len(images) == 36
    for row, p in zip(rows, probs):
        top = np.argsort(-p)[:3]
        assert [row["class"], row["class_2"], row["class_3"]] == [vocab[i] for i in top], row["path"]
        got = [float(row[k]) for k in ("probability", "probability_2", "probability_3")]
        assert np.allclose(got, p[top], atol=1e-4, rtol=0), (row["path"], got, p[top])
    learn = load_model(hub)  # every class's probability, not only the CSV's four decimals of three
    assert np.abs(predict_images(learn, images).numpy() - probs).max() < 1e-4
    assert len({row["class"] for row in rows}) > 1  # a model that tells the images apart, not a constant answer


@pytest.mark.slow
def test_the_onnx_file_says_what_it_takes_and_takes_any_batch(hub):
    import onnxruntime as ort
    s = ort.InferenceSession(str(hub / "model.onnx"))
    meta = s.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == json.loads((hub / "config.json").read_text())["classes"]
    assert meta["image_size"] == "32" and "RGB, 0-255" in meta["input"]
    (inp,) = s.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(uint8)", ["batch", 32, 32, 3])
    assert [o.name for o in s.get_outputs()] == ["probabilities", "logits"]
    for n in (1, 5):
        p, logits = s.run(None, {"image": np.full((n, 32, 32, 3), 128, np.uint8)})
        assert p.shape == logits.shape == (n, 10) and np.allclose(p.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_the_hub_folder_is_what_a_model_repo_holds_and_its_card_runs(hub, run, images, tmp_path):
    assert sorted(p.name for p in hub.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors"]
    assert (hub / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    card, final = (hub / "README.md").read_text(), json.loads((run / "final.json").read_text())
    assert card.startswith("---\npipeline_tag: image-classification\n") and ONNX_SNIPPET in card
    assert f"Test accuracy **{final['accuracy']:.4f}** on {final['n_images']} test images" in card
    assert "hf upload YOUR_NAME/REPO_NAME ." in card
    work = tmp_path / "repo"  # a copy, as `snapshot_download` gives it, with an image to classify
    shutil.copytree(hub, work)
    shutil.copy(images[0], work / "cat.png")
    want = np.array(_run_snippet(ONNX_SNIPPET, work, [work / "cat.png"]))[0]
    vocab = json.loads((hub / "config.json").read_text())["classes"]
    line = f"{vocab[want.argmax()]} {want.max():.4f}"
    bash, torch_code = re.search(r"```bash\n(.*?)```", card, re.S)[1], re.findall(r"```python\n(.*?)```", card, re.S)[1]
    assert bash.strip() == "fastresnet predict cat.png --model ."
    res = subprocess.run([sys.executable, "-m", *bash.split()], cwd=work, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.split() == ["cat.png", *line.split()], res.stderr[-2000:]
    no_fastai = "import sys\nsys.modules['fastai'] = None\n"  # plain torch: fastresnet's network file, no fastai
    res = subprocess.run([sys.executable, "-c", no_fastai + torch_code], cwd=work, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == line, res.stderr[-2000:]


@pytest.mark.slow
def test_evaluate_and_serve_read_the_hub_folder(hub, run, tiny_folder, images, tmp_path, capsys):
    def evaluate(model):
        capsys.readouterr()
        assert main(["evaluate", "--model", str(model), "--data", str(tiny_folder), "--json"]) == 0
        return json.loads(capsys.readouterr().out)
    assert evaluate(hub) == evaluate(run)
    port, log = _free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fastresnet", "serve", "--model", str(hub), "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):  # up to 120 s: Gradio and fastai import slowly on two cores
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
        from gradio_client import Client, handle_file
        label, _ = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(str(images[0])),
                                                                              api_name="/predict")
    finally:
        proc.terminate()
        proc.wait(30)
    p = predict_images(load_model(hub), images[:1])[0]
    assert label["label"] == json.loads((hub / "config.json").read_text())["classes"][int(p.argmax())]
    assert abs(label["confidences"][0]["confidence"] - float(p.max())) < 1e-4


@pytest.mark.slow
def test_a_hub_folder_whose_config_disagrees_with_its_weights_is_refused(hub, tmp_path, capsys):
    work = tmp_path / "edited"
    shutil.copytree(hub, work)
    cfg = json.loads((work / "config.json").read_text())
    cfg["classes"] = cfg["classes"][::-1]
    (work / "config.json").write_text(json.dumps(cfg))
    assert main(["summary", "--model", str(work)]) == 2
    err = capsys.readouterr().err
    assert "config.json says classes" in err and "belong to different models" in err


@pytest.mark.slow
def test_hub_export_takes_only_a_new_empty_or_own_folder(run, tmp_path, capsys):
    run = str(run)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", run, "--hub", str(foreign)]) == 2
    assert "notes.txt" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "hub"
    assert main(["export", run, "--hub", str(out)]) == 0
    assert main(["export", run, "--hub", str(out)]) == 2 and "--overwrite" in capsys.readouterr().err
    (out / "model.onnx").write_bytes(b"an older export's file")
    assert main(["export", run, "--hub", str(out), "--overwrite"]) == 0  # replaced as a whole: no stale ONNX file
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "mine"]  # no temporary folder left beside it
    (tmp_path / "empty").mkdir()
    assert main(["export", run, "--hub", str(tmp_path / "empty")]) == 0
    assert main(["export", str(out), "--hub", str(tmp_path / "again")]) == 2  # a Hub folder has no final.json
    assert "final.json" in capsys.readouterr().err


def test_export_without_the_extra_or_a_target_is_one_paragraph(tmp_path, monkeypatch, capsys):
    "Both said before any model is read (this one does not exist)."
    assert main(["export", str(tmp_path / "run")]) == 2 and "Nothing to export" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert main(["export", str(tmp_path / "run"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "needs onnxscript" in err and 'pip install "fastresnet[export]"' in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_onnx_benchmark_runs_and_prints_its_table(tiny_folder):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_onnx.py"), "--data", str(tiny_folder),
                          "--n", "20", "--bs", "8", "--bs-one", "3", "--width", "0.125", "--repeats", "1", "--force",
                          "--wait", "0"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| onnxruntime") or line.startswith("| torch")]
    assert len(rows) == 2 and "top class equal on 20 of 20 images" in res.stdout
    assert "The onnxruntime child imported torch or fastai: no." in res.stdout

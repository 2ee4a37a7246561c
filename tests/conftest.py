"""Tiny synthetic CIFAR-shaped data, made fresh in each test session: no network, no shared data."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: a core each, for the worker and every process it starts
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from fastresnet.data import CIFAR_CLASSES, ImageArrays

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)


def synthetic_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    "n (32, 32, 3) uint8 images whose mean colour depends on the class, so a model can learn them."
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    base = rng.integers(0, 80, size=(n, 32, 32, 3))
    colour = np.stack([labels * 17, (9 - labels) * 17, (labels % 3) * 60], 1)[:, None, None, :]
    return (base + colour).clip(0, 255).astype(np.uint8), labels


def make_folder(root: Path, n_train: int = 40, n_test: int = 20, ext: str = ".png") -> Path:
    "fastai's CIFAR layout: root/{train,test}/<class>/<n>.png."
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        imgs, labels = synthetic_images(n, seed)
        for i, (im, y) in enumerate(zip(imgs, labels)):
            d = root / split / CIFAR_CLASSES[y]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(d / f"{i:04d}{ext}")
    return root


def make_python_archive(root: Path, per_batch: int = 10, n_test: int = 10) -> Path:
    "The official `cifar-10-batches-py` format: pickled dicts of flat CHW bytes."
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    def dump(name, obj):
        with open(folder / name, "wb") as f: pickle.dump(obj, f)
    dump("batches.meta", {b"label_names": [c.encode() for c in CIFAR_CLASSES]})
    for i, n in enumerate([per_batch] * 5 + [n_test]):
        imgs, labels = synthetic_images(n, seed=i)
        flat = imgs.transpose(0, 3, 1, 2).reshape(n, -1)
        dump(f"data_batch_{i + 1}" if i < 5 else "test_batch", {b"data": flat, b"labels": labels.tolist()})
    return folder


def script_module(relpath: str):
    "A script of the repository (not part of the package), imported from its file: `benchmarks/common.py`."
    import importlib.util
    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_arrays(n_train: int = 40, n_valid: int = 20) -> ImageArrays:
    tr, ytr = synthetic_images(n_train, 0)
    va, yva = synthetic_images(n_valid, 1)
    imgs = torch.from_numpy(np.concatenate([tr, va])).permute(0, 3, 1, 2).contiguous()
    return ImageArrays(imgs, torch.from_numpy(np.concatenate([ytr, yva])).long(), list(CIFAR_CLASSES), n_train)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    "Decoded-data caches go to the test's temporary folder, never to the user's."
    monkeypatch.setenv("FASTRESNET_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("cifar"))


@pytest.fixture
def arrays() -> ImageArrays:
    return make_arrays()


def pictures(root, classes, n, seed=0, size=(32, 32)):
    "n noisy pictures per class, class k's colour set apart, written as root/<class>/<i>.png."
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (size[1], size[0], 3)) + np.array([k * 37 % 200, k * 71 % 200, k * 13 % 200])
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / c / f"{i}.png")


def file_digests(folder: Path) -> dict:
    "Every file under `folder` with its size and SHA-256: what a test that only reads the folder must leave."
    import hashlib
    return {str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_folder):
    """The one finished run the session's tests read (the CLI, predict, serve, reports, fine-tuning's source): width
    0.25 (412,954 parameters: a 5 MB checkpoint, where width 1 writes 79 MB), two epochs, the range test, no TTA.
    Tests that change a run work on a copy: the session ends with an error if a file of it changed."""
    from fastresnet.cli import main
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), "--epochs", "2", "--width", "0.25",
                 "--bs", "10", "--lr-find-iters", "6", "--lr-find-end", "1", "--no-tta"]) == 0
    before = file_digests(run)
    yield run
    assert file_digests(run) == before, "a test changed the shared trained run: work on a copy (shutil.copytree)"


@pytest.fixture(scope="session")
def source_run(trained_run):
    "A CIFAR-10-shaped run to start from (fine-tuning): the session's trained run."
    return trained_run


@pytest.fixture(scope="session")
def fork_server():
    """tests/forkserver.py: real `fastresnet` processes forked from one that has done the imports (6 s each
    otherwise). Started at its first use in a session, ended with it."""
    from forkserver import ForkServer
    server = ForkServer()
    yield server
    server.close()


@pytest.fixture
def mount_tmpfs(tmp_path):
    """A real small file system: `mount_tmpfs(size_bytes)` mounts a tmpfs of that size on a new folder and returns it
    (unmounted after the test). What runs out on it is the kernel's space, not a mock; mounting needs root with
    CAP_SYS_ADMIN (as CI has), and a machine without it fails these tests rather than skipping them."""
    import subprocess
    made = []
    def mount(size: int, name: str = "disk") -> Path:
        d = tmp_path / name
        d.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                           text=True)
        if p.returncode:
            pytest.fail(f"this test mounts a small tmpfs and needs root with CAP_SYS_ADMIN (as CI has): {p.stderr}")
        made.append(d)
        return d
    yield mount
    for d in reversed(made): subprocess.run(["umount", "-l", str(d)], check=True)


def leave_free(disk: Path, free: int) -> None:
    "Fill `disk` with a ballast file until `free` bytes are left (0: full)."
    import os
    (disk / "ballast").unlink(missing_ok=True)
    st = os.statvfs(disk)
    with open(disk / "ballast", "wb") as f: f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))


def accuracy_by_hand(model_pkl: Path, test_folder: Path) -> dict:
    """Test results counted as a user would, independently of `evaluate_learner`: each image of test/<class>/
    predicted alone with fastai's `learn.predict`, plain and as its mirror (the tensor flipped here); flip-TTA is the
    mean of the two softmaxes. Accuracy, flip-TTA accuracy, the confusion matrix (rows: actual), per-class accuracy."""
    from fastai.learner import load_learner
    from fastresnet.data import load_image
    learn = load_learner(model_pkl)
    vocab, files = list(learn.dls.vocab), sorted(Path(test_folder).glob("*/*.png"))
    cm, plain, tta = [[0] * len(vocab) for _ in vocab], 0, 0
    with learn.no_bar():
        for f in files:
            x, y = load_image(f), vocab.index(f.parent.name)
            p, q = learn.predict(x)[2], learn.predict(x.flip(-1))[2]
            k = int(p.argmax())
            cm[y][k] += 1
            plain, tta = plain + (k == y), tta + (int(((p + q) / 2).argmax()) == y)
    return {"n_images": len(files), "accuracy": plain / len(files), "accuracy_tta": tta / len(files),
            "confusion": cm, "per_class": {c: cm[i][i] / max(1, sum(cm[i])) for i, c in enumerate(vocab)}}

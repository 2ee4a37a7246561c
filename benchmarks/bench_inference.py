"""Inference throughput on the 10,000 test images: fastresnet's `evaluate` and `predict` paths against bare
PyTorch on the same weights, side by side in one process.

  bare, tensors     the images already in memory as one uint8 tensor: normalise, model in eval mode,
                    channels_last, `torch.inference_mode`, softmax, batches of `--bs`; also with
                    `torch.no_grad` instead, and with the model's default (contiguous) memory format
  evaluate          `fastresnet evaluate`'s pass: the Learner loaded from model.safetensors, its test
                    DataLoader over the in-memory images, `get_preds` (one pass; the command makes two for TTA)
  bare, files       each image file decoded with PIL, then as "bare, tensors"
  predict           `fastresnet predict`'s path: image files → top-3 classes, in batches
  evaluate + TTA    the same with flip-TTA (two passes), and with multi-crop TTA (`--tta-crops`: six passes)

    python benchmarks/bench_inference.py --data ../shared/data/cifar10-jpeg
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import numpy as np
import torch
from fastai.vision.all import cifar_stats
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import OtherLoad, add_machine_args, forward_flops, header, wait_for_idle  # noqa: E402
from fastresnet.config import Recipe  # noqa: E402
from fastresnet.data import ImageArrays, load_arrays  # noqa: E402
from fastresnet.inference import evaluate_learner, labelled_dl, iter_predictions  # noqa: E402
from fastresnet.learner import load_model, save_weights, stub_learner  # noqa: E402
from fastresnet.model import CustomResNet  # noqa: E402


def bare_probs(model: CustomResNet, images: torch.Tensor, bs: int, mode=torch.inference_mode) -> torch.Tensor:
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in cifar_stats)
    out = []
    with mode():
        for i in range(0, len(images), bs):
            out.append(model((images[i:i + bs].float() / 255 - mean) / std).softmax(1))
    return torch.cat(out)


def decode(files: list[Path]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 in fastai's folder layout (image files)")
    ap.add_argument("--n", type=int, default=10000, help="test images to use")
    ap.add_argument("--bs", type=int, default=512, help="batch of the bare PyTorch loops")
    ap.add_argument("--repeats", type=int, default=1)
    add_machine_args(ap)
    a = ap.parse_args()
    full = load_arrays(a.data)
    keep = slice(full.n_train - 10, full.n_train + a.n)  # the first n test images (and 10 as a token training set)
    data = ImageArrays(full.images[keep], full.labels[keep], full.vocab, 10)
    files = sorted(Path(a.data, "test").glob("*/*"))[:a.n]
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    learn = stub_learner(list(full.vocab), Recipe())
    save_weights(learn, tmp / "model.safetensors")  # untrained weights: the arithmetic is the same
    condition = wait_for_idle(a)
    print(header("fastresnet inference benchmark", condition))
    fwd = forward_flops(CustomResNet())[0]
    print(f"{a.n} test images, bare batch {a.bs}, {a.repeats} interleaved repeat(s), {fwd / 1e9:.3f} GFLOP per image")
    other = OtherLoad()
    learn = load_model(tmp / "model.safetensors")
    bare = CustomResNet(n_out=len(full.vocab)).eval().to(memory_format=torch.channels_last)
    bare.load_state_dict(learn.model.state_dict())
    plain = CustomResNet(n_out=len(full.vocab)).eval()
    plain.load_state_dict(learn.model.state_dict())
    test = data.images[data.n_train:]
    res = {k: [] for k in ("bare_t", "evaluate", "bare_f", "predict", "no_grad", "contiguous", "tta", "crops")}
    for _ in range(a.repeats):
        s, p_bare = timed(lambda: bare_probs(bare, test, a.bs))
        res["bare_t"].append(s)
        res["no_grad"].append(timed(lambda: bare_probs(bare, test, a.bs, torch.no_grad))[0])
        res["contiguous"].append(timed(lambda: bare_probs(plain, test, a.bs))[0])
        with learn.no_bar(): s, (ev, _) = timed(lambda: evaluate_learner(learn, labelled_dl(learn, data), tta=False))
        res["evaluate"].append(s)
        res["bare_f"].append(timed(lambda: bare_probs(bare, decode(files), a.bs))[0])
        with learn.no_bar(): s, rows = timed(lambda: list(iter_predictions(learn, files)))
        res["predict"].append(s)
        for k, crops in (("tta", False), ("crops", True)):
            with learn.no_bar():
                res[k].append(timed(lambda: evaluate_learner(learn, labelled_dl(learn, data), True, crops))[0])
    print(other.report())
    same = sum(r["class"] == full.vocab[int(i)] for r, i in zip(rows, p_bare.argmax(1)))
    print(f"predict and bare PyTorch agree on {same} of {len(rows)} classes; evaluate saw {ev['n_images']} images\n")
    names = {"bare_t": "bare PyTorch, in-memory tensors", "evaluate": "fastresnet evaluate (one pass)",
             "bare_f": "bare PyTorch, image files (PIL decode)", "predict": "fastresnet predict, image files",
             "no_grad": "bare PyTorch, in-memory tensors, no_grad instead of inference_mode",
             "contiguous": "bare PyTorch, in-memory tensors, contiguous model instead of channels_last",
             "tta": "fastresnet evaluate with flip-TTA (2 passes)",
             "crops": "fastresnet evaluate with flip-TTA and multi-crop TTA (6 passes)"}
    m = {k: a.n / statistics.median(v) for k, v in res.items()}
    print("| path | images/s | ms per image | GFLOP/s | ratio to the row it is compared with |")
    print("|---|---|---|---|---|")
    for k, bare_k in (("bare_t", None), ("evaluate", "bare_t"), ("bare_f", None), ("predict", "bare_f"),
                      ("no_grad", "bare_t"), ("contiguous", "bare_t"), ("tta", "evaluate"), ("crops", "evaluate")):
        ratio = f"{m[k] / m[bare_k]:.2f} ({bare_k})" if bare_k else ""
        passes = {"tta": 2, "crops": 6}.get(k, 1)
        print(f"| {names[k]} | {m[k]:.0f} | {1000 / m[k]:.2f} | {m[k] * fwd * passes / 1e9:.0f} | {ratio} |")


if __name__ == "__main__":
    main()

"""onnxruntime against PyTorch on the 10,000 test images, side by side in one run: the ONNX file `fastresnet export
--onnx` writes, and the module it is exported from (fastresnet.export.Classifier: uint8 images in, the normalisation
inside, probabilities out) in eval mode, channels_last, under `torch.inference_mode`. The same full-width weights
(random: the arithmetic is a trained model's), the same uint8 images (decoded once, as `fastresnet predict` decodes
them, outside the timing), batches of `--bs`; then single images (`--bs-one` of them). Each backend runs in its own
child process, so its images/s and peak memory (VmHWM: the process's highest resident memory, the 30 MB of decoded
images included) are its own: the onnxruntime child imports neither torch nor fastai. Repeats alternate the two.

    python benchmarks/bench_onnx.py --data ../shared/data/cifar10-jpeg
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _run_batches(predict, images: np.ndarray, bs: int) -> tuple[float, np.ndarray]:
    "Seconds for all of `images` in batches of `bs` (after one warm-up batch), and the probabilities."
    predict(images[:bs])
    t = time.perf_counter()
    out = [predict(images[i:i + bs]) for i in range(0, len(images), bs)]
    return time.perf_counter() - t, np.concatenate(out)


def child(argv: list[str]) -> None:
    "One backend on the decoded images: prints a JSON line of its figures, saves its probabilities."
    ap = argparse.ArgumentParser()
    for k in ("--child", "--images", "--model", "--out"): ap.add_argument(k)
    for k in ("--bs", "--bs-one"): ap.add_argument(k, type=int)
    a = ap.parse_args(argv)
    images = np.load(a.images)
    if a.child == "onnxruntime":
        import onnxruntime as ort
        session = ort.InferenceSession(str(Path(a.model) / "model.onnx"), providers=["CPUExecutionProvider"])
        predict = lambda x: session.run(["probabilities"], {"image": x})[0]  # noqa: E731
        version = f"onnxruntime {ort.__version__} (its default threads)"
    else:
        import torch
        from safetensors import safe_open
        from fastresnet.export import Classifier
        from fastresnet.model import CustomResNet
        with safe_open(Path(a.model) / "model.safetensors", framework="pt") as f:  # the weights and their record
            meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        net = CustomResNet(len(json.loads(meta["vocab"])), width=json.loads(meta["recipe"])["width"])
        net.load_state_dict(sd)
        model = Classifier(net, json.loads(meta["stats"])).eval().to(memory_format=torch.channels_last)
        def predict(x):
            with torch.inference_mode(): return model(torch.from_numpy(x))[0].numpy()
        version = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    banned = [m for m in ("torch", "fastai") if m in sys.modules] if a.child == "onnxruntime" else []
    seconds, probs = _run_batches(predict, images, a.bs)
    one, _ = _run_batches(predict, images[:a.bs_one], 1)
    np.save(a.out, probs)
    peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1024
    print(json.dumps({"version": version, "rate": len(images) / seconds, "rate_one": a.bs_one / one,
                      "peak_mb": peak, "banned": banned}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="CIFAR-10 in fastai's folder layout: its test/ images are used")
    ap.add_argument("--n", type=int, default=10000, help="test images (the first n, in file order)")
    ap.add_argument("--bs", type=int, default=512, help="batch size of the main figure")
    ap.add_argument("--bs-one", type=int, default=1000, help="images run one at a time (latency)")
    ap.add_argument("--width", type=float, default=1.0, help="network width (1: the spec's)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each backend, alternated")
    sys.path.insert(0, str(Path(__file__).parent))
    from common import OtherLoad, add_machine_args, header, wait_for_idle  # imports torch: not in a child
    add_machine_args(ap)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from fastresnet.cli import main as fastresnet
    from fastresnet.config import Recipe
    from fastresnet.data import CIFAR_CLASSES, load_image
    from fastresnet.learner import save_weights, stub_learner
    tmp = Path(tempfile.mkdtemp())
    files = sorted(Path(a.data, "test").glob("*/*"))[:a.n]
    images = np.stack([load_image(f, resize=True).permute(1, 2, 0).numpy() for f in files])  # (n, 32, 32, 3) uint8
    np.save(tmp / "images.npy", images)
    torch.manual_seed(0)
    save_weights(stub_learner(CIFAR_CLASSES, Recipe(width=a.width)), tmp / "model.safetensors")
    assert fastresnet(["export", str(tmp / "model.safetensors"), "--onnx"]) == 0  # tmp/model.onnx
    condition = wait_for_idle(a)
    print(header("onnxruntime against PyTorch, fastresnet's exported model", condition))
    print(f"{len(images)} test images from {a.data}, width {a.width:g}, batch {a.bs}; then {a.bs_one} images one at "
          f"a time; {a.repeats} alternated repeat(s), each backend in its own process")
    other, res = OtherLoad(), {"onnxruntime": [], "torch": []}
    for i in range(a.repeats):
        for name in res:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--images", str(tmp / "images.npy"),
                                  "--model", str(tmp), "--out", str(tmp / f"{name}.npy"), "--bs", str(a.bs),
                                  "--bs-one", str(a.bs_one)], capture_output=True, text=True)
            if out.returncode: raise SystemExit(f"the {name} child failed:\n{out.stderr[-3000:]}")
            res[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\n| backend | images/s, batch %d | images/s, one at a time | peak memory (MB) |\n|---|---|---|---|" % a.bs)
    for name, runs in res.items():
        rates = " / ".join(f"{r['rate']:.0f}" for r in runs)
        ones = " / ".join(f"{r['rate_one']:.0f}" for r in runs)
        print(f"| {runs[0]['version']} | {rates} | {ones} | {max(r['peak_mb'] for r in runs):.0f} |")
    rate = {name: statistics.median(r["rate"] for r in runs) for name, runs in res.items()}
    p, q = np.load(tmp / "onnxruntime.npy"), np.load(tmp / "torch.npy")
    same = int((p.argmax(1) == q.argmax(1)).sum())
    print(f"\nonnxruntime / torch, batch {a.bs}: {rate['onnxruntime'] / rate['torch']:.2f}x (medians). Same answers: "
          f"probabilities within {np.abs(p - q).max():.1e}, top class equal on {same} of {len(p)} images. The "
          f"onnxruntime child imported torch or fastai: {'yes' if res['onnxruntime'][0]['banned'] else 'no'}.")
    print(other.report())


if __name__ == "__main__":
    child(sys.argv[1:]) if sys.argv[1:2] == ["--child"] else main()

"""Training throughput at the recipe's batch against this machine's measured limit, side by side in one process:

  (a) floor:      bare PyTorch forward + backward + fused AdamW step of CustomResNet on pre-made tensors
  (b) fastresnet: the recipe's fastai training step with in-memory data and on-device augmentation
  (c) naive:      a plain fastai pipeline (image files from disk, PIL item transforms, default workers)
  (d) data only:  batches/s of (b)'s and (c)'s pipelines with no model

and the physical limit in the same run: the sustained fp32 FLOP/s of this network's own convolutions
(each layer's shapes at the recipe's batch, channels_last, forward + both gradients) and of a large matmul.

Each training figure is images/s over `--steps` timed batches after `--warmup` untimed ones; the three
are interleaved `--repeats` times and the median is reported, so the ratios compare runs under the same
load. The benchmark waits for an idle machine and refuses a busy one (see common.py).

    python benchmarks/bench_epoch.py --data ../shared/data/cifar10-jpeg
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelFitException, CancelValidException
from fastai.vision.all import (CrossEntropyLossFlat, FlipItem, ImageDataLoaders, Learner, Normalize, RandomCrop,
                               accuracy, cifar_stats)
from fastai.optimizer import Adam

sys.path.insert(0, str(Path(__file__).parent))
from common import OtherLoad, add_machine_args, forward_flops, header, train_flops, wait_for_idle  # noqa: E402
from fastresnet.config import Recipe  # noqa: E402
from fastresnet.data import ImageArrays, balanced_subset, recipe_dls, load_arrays  # noqa: E402
from fastresnet.learner import build_learner  # noqa: E402
from fastresnet.model import CustomResNet  # noqa: E402


class BatchClock(Callback):
    "Wall time at the end of every training batch: the interval between two includes loading the next batch."
    order = 99
    def __init__(self): self.stamps = []
    def after_batch(self):
        if self.training: self.stamps.append(time.perf_counter())
    def before_validate(self): raise CancelValidException()


def rate(stamps: list[float], warmup: int, bs: int) -> float:
    s = stamps[warmup - 1:] if warmup else stamps
    return (len(s) - 1) * bs / (s[-1] - s[0])


def bench_floor(bs: int, n_batches: int, warmup: int) -> float:
    "The least a training step can be: the model, the recipe's loss and fused AdamW on tensors made in advance."
    torch.manual_seed(0)
    model = CustomResNet().to(memory_format=torch.channels_last).train()
    decay, plain = [p for p in model.parameters() if p.ndim > 1], [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": plain, "weight_decay": 0.0}], lr=1e-4,
                            betas=(0.95, 0.99), eps=1e-5, weight_decay=0.8, fused=True)
    x = torch.randn(bs, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    stamps = []
    for _ in range(n_batches):
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return rate(stamps, warmup, bs)


def fit_rate(learn: Learner, warmup: int, bs: int) -> float:
    clock = BatchClock()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-4, cbs=clock)
    return rate(clock.stamps, warmup, bs)


def data_rate(dl, warmup: int) -> float:
    it, stamps = iter(dl), []
    for xb, yb in it: stamps.append(time.perf_counter())
    return rate(stamps, warmup, dl.bs)


def conv_peak(bs: int, reps: int = 2) -> tuple[float, list[str]]:
    """Sustained FLOP/s of the network's convolutions alone: each layer's own shapes at batch `bs`, channels_last,
    forward + weight gradient + input gradient (none for the first layer), summed FLOPs over summed time."""
    _, convs = forward_flops(CustomResNet())
    total_flop, total_s, rows = 0.0, 0.0, []
    for c in convs:
        conv = c["layer"].to(memory_format=torch.channels_last)
        first = c is convs[0]
        x = torch.randn(bs, *c["in_shape"][1:]).contiguous(memory_format=torch.channels_last).requires_grad_(not first)
        flop = bs * c["flops"] * (2 if first else 3)
        ts = []
        for _ in range(reps + 1):
            t = time.perf_counter()
            out = conv(x)
            out.backward(torch.ones_like(out))
            ts.append(time.perf_counter() - t)
            conv.zero_grad(set_to_none=True)
            x.grad = None
        s = min(ts[1:])
        total_flop, total_s = total_flop + flop, total_s + s
        rows.append(f"{tuple(c['in_shape'][1:])} -> {conv.out_channels}: {flop / s / 1e9:.0f} GFLOP/s")
    return total_flop / total_s, rows


def matmul_peak(n: int = 4096, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps): a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


class StopAfter(Callback):
    def __init__(self, n): self.n = n
    def after_batch(self):
        if self.training and self.iter + 1 >= self.n:
            raise CancelFitException()


def memory(data_path: str, steps: int) -> None:
    "The real configuration (all 60,000 images in memory, batch 512): peak RSS after `steps` steps."
    t = time.time()
    r = Recipe()
    learn = build_learner(recipe_dls(load_arrays(data_path), r), r)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=StopAfter(steps))
    gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"full data (60,000 images), batch {r.bs}, first {steps} training steps: "
          f"peak resident memory {gib:.2f} GiB ({time.time() - t:.0f} s)")


def naive_learner(data_dir: str, n_img: int, bs: int) -> Learner:
    "A plain fastai pipeline over the same number of image files (as symlinks): PIL item transforms, default workers."
    tmp = Path(tempfile.mkdtemp())
    for split, n in (("train", n_img), ("test", 10)):
        files = sorted(Path(data_dir, split).glob("*/*"))
        for f in files[::max(1, len(files) // n)][:n]:
            (tmp / split / f.parent.name).mkdir(parents=True, exist_ok=True)
            (tmp / split / f.parent.name / f.name).symlink_to(f.resolve())
    dls = ImageDataLoaders.from_folder(tmp, train="train", valid="test", bs=bs, item_tfms=[RandomCrop(32), FlipItem()],
                                       batch_tfms=[Normalize.from_stats(*cifar_stats)])
    return Learner(dls, CustomResNet(), loss_func=CrossEntropyLossFlat(), opt_func=Adam, metrics=accuracy)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 in fastai's folder layout (image files)")
    ap.add_argument("--bs", type=int, default=512, help="batch size (the recipe's: 512)")
    ap.add_argument("--steps", type=int, default=3, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches before them")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory-steps", type=int, default=0, metavar="N",
                    help="instead: peak resident memory of the first N training steps on the full data at batch 512")
    add_machine_args(ap)
    a = ap.parse_args()
    if a.memory_steps: return memory(a.data, a.memory_steps)
    n_img = a.bs * (a.steps + a.warmup)
    full = load_arrays(a.data)  # decoded (or read from the cache) before the idle check: not part of any figure
    data = balanced_subset(full, n_img)
    data = ImageArrays(data.images[:n_img + 10], data.labels[:n_img + 10], data.vocab, n_img)  # tiny valid split
    condition = wait_for_idle(a)
    print(header("fastresnet epoch benchmark", condition))
    print(f"batch {a.bs}, {a.warmup} warm-up + {a.steps} timed batches, {a.repeats} interleaved repeats, "
          f"{n_img} training images")
    other = OtherLoad()
    r = Recipe(bs=a.bs)
    learn_b = build_learner(recipe_dls(data, r), r)
    learn_c = naive_learner(a.data, n_img, a.bs)

    peak_conv, conv_rows = conv_peak(a.bs)
    peak_mm = matmul_peak()
    res = {"a": [], "b": [], "c": []}
    for _ in range(a.repeats):
        res["a"].append(bench_floor(a.bs, a.steps + a.warmup, a.warmup))
        res["b"].append(fit_rate(learn_b, a.warmup, a.bs))
        res["c"].append(fit_rate(learn_c, a.warmup, a.bs))
    d_b = data_rate(learn_b.dls.train, a.warmup)
    d_c = data_rate(learn_c.dls.train, a.warmup)
    print(other.report())
    m = {k: statistics.median(v) for k, v in res.items()}
    flop = train_flops(CustomResNet())

    print(f"\nthe limit: this network's convolutions alone {peak_conv / 1e9:.0f} GFLOP/s "
          f"({'; '.join(conv_rows)}); a 4096x4096 fp32 matmul {peak_mm / 1e9:.0f} GFLOP/s")
    print(f"work: {flop / 1e9:.3f} GFLOP per training image (counted from the layers: forward and both gradients)\n")
    print("| measurement | images/s | GFLOP/s | of the conv limit | all repeats (images/s) |")
    print("|---|---|---|---|---|")
    names = {"a": "(a) floor: bare PyTorch fwd+bwd+fused AdamW, pre-made tensors",
             "b": "(b) fastresnet training step, data + augmentation included",
             "c": "(c) naive fastai pipeline (files, PIL item tfms, workers)"}
    for k in "abc":
        print(f"| {names[k]} | {m[k]:.1f} | {m[k] * flop / 1e9:.0f} | {m[k] * flop / peak_conv:.0%} | "
              f"{', '.join(f'{v:.1f}' for v in res[k])} |")
    print(f"| (d) data only, fastresnet pipeline | {d_b:.0f} | | | |")
    print(f"| (d) data only, naive pipeline | {d_c:.0f} | | | |")
    print(f"\n(b)/(a) = {m['b'] / m['a']:.3f}   (b)/(c) = {m['b'] / m['c']:.3f}")
    print(f"one 50,000-image epoch at (b)'s rate: {50000 / m['b'] / 60:.1f} min")
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()

"""Throughput of one training epoch, side by side in one process:

  (a) floor:      bare PyTorch forward + backward + Adam step of CustomResNet on pre-made tensors
  (b) fastresnet: the full fastai training step with in-memory data and on-device augmentation
  (c) naive:      a plain fastai pipeline (image files from disk, PIL item transforms, default workers)
  (d) data only:  batches/s of (b)'s and (c)'s pipelines with no model

Each figure is images/s over `--steps` timed batches after `--warmup` untimed ones; the three
training measurements are interleaved `--repeats` times and the median is reported, so that the
ratios compare runs made under the same machine load.

    python benchmarks/bench_epoch.py --data ../shared/data/cifar10-jpeg
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
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

from fastresnet.config import Recipe
from fastresnet.data import CifarArrays, balanced_subset, cifar_dls, load_cifar
from fastresnet.learner import build_learner
from fastresnet.model import CustomResNet

GFLOP_PER_IMAGE = 2.3  # forward 0.76 GFLOP (379 M multiply-adds) x 3 for forward + backward


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
    torch.manual_seed(0)
    model = CustomResNet().to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(bs, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    stamps = []
    for _ in range(n_batches):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        stamps.append(time.perf_counter())
    return rate(stamps, warmup, bs)


def fit_rate(learn: Learner, warmup: int, bs: int) -> float:
    clock = BatchClock()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=clock)
    return rate(clock.stamps, warmup, bs)


def data_rate(dl, warmup: int) -> float:
    it, stamps = iter(dl), []
    for xb, yb in it: stamps.append(time.perf_counter())
    return rate(stamps, warmup, dl.bs)


class StopAfter(Callback):
    def __init__(self, n): self.n = n
    def after_batch(self):
        if self.training and self.iter + 1 >= self.n:
            raise CancelFitException()


def memory(data_path: str, steps: int) -> None:
    "The real configuration (all 60,000 images in memory, batch 512): peak RSS after `steps` steps."
    t = time.time()
    r = Recipe()
    learn = build_learner(cifar_dls(load_cifar(data_path), r), r)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=StopAfter(steps))
    gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"full data (60,000 images), batch {r.bs}, first {steps} training steps: "
          f"peak resident memory {gib:.2f} GiB ({time.time() - t:.0f} s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 in fastai's folder layout (image files)")
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches before them")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory-steps", type=int, default=0, metavar="N",
                    help="instead: peak resident memory of the first N training steps on the full data at batch 512")
    a = ap.parse_args()
    if a.memory_steps: return memory(a.data, a.memory_steps)
    n_img = a.bs * (a.steps + a.warmup)
    print(f"# fastresnet epoch benchmark — {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; batch {a.bs}, {a.warmup} warm-up + {a.steps} timed batches, "
          f"{a.repeats} interleaved repeats, {n_img} training images")

    # (b) fastresnet: in-memory uint8 tensor, DataBlock, batch augmentation on the device
    full = load_cifar(a.data)
    data = balanced_subset(full, n_img)
    data = CifarArrays(data.images[:n_img + 10], data.labels[:n_img + 10], data.vocab, n_img)  # tiny valid split
    r = Recipe(bs=a.bs)
    learn_b = build_learner(cifar_dls(data, r), r)

    # (c) naive fastai: the image files, PIL item transforms, default workers, default memory format
    tmp = Path(tempfile.mkdtemp())
    for split, n in (("train", n_img), ("test", 10)):          # the same number of images, as symlinks
        files = sorted(Path(a.data, split).glob("*/*"))
        for f in files[::max(1, len(files) // n)][:n]:
            (tmp / split / f.parent.name).mkdir(parents=True, exist_ok=True)
            (tmp / split / f.parent.name / f.name).symlink_to(f.resolve())
    dls_c = ImageDataLoaders.from_folder(tmp, train="train", valid="test", bs=a.bs,
                                         item_tfms=[RandomCrop(32), FlipItem()],
                                         batch_tfms=[Normalize.from_stats(*cifar_stats)])
    learn_c = Learner(dls_c, CustomResNet(), loss_func=CrossEntropyLossFlat(), opt_func=Adam, metrics=accuracy)

    res = {"a": [], "b": [], "c": []}
    for _ in range(a.repeats):
        res["a"].append(bench_floor(a.bs, a.steps + a.warmup, a.warmup))
        res["b"].append(fit_rate(learn_b, a.warmup, a.bs))
        res["c"].append(fit_rate(learn_c, a.warmup, a.bs))
    d_b = data_rate(learn_b.dls.train, a.warmup)
    d_c = data_rate(learn_c.dls.train, a.warmup)
    m = {k: statistics.median(v) for k, v in res.items()}

    print()
    print("| measurement | images/s | all repeats |")
    print("|---|---|---|")
    names = {"a": "(a) floor: bare PyTorch fwd+bwd+Adam, pre-made tensors",
             "b": "(b) fastresnet training step, data + augmentation included",
             "c": "(c) naive fastai pipeline (files, PIL item tfms, workers)"}
    for k in "abc": print(f"| {names[k]} | {m[k]:.1f} | {', '.join(f'{v:.1f}' for v in res[k])} |")
    print(f"| (d) data only, fastresnet pipeline | {d_b:.0f} | |")
    print(f"| (d) data only, naive pipeline | {d_c:.0f} | |")
    print()
    print(f"(b)/(a) = {m['b'] / m['a']:.3f}   (b)/(c) = {m['b'] / m['c']:.3f}")
    print(f"achieved: floor {m['a'] * GFLOP_PER_IMAGE:.1f} GFLOP/s, fastresnet {m['b'] * GFLOP_PER_IMAGE:.1f} GFLOP/s "
          f"(at {GFLOP_PER_IMAGE} GFLOP per training image)")
    print(f"one 50,000-image epoch at (b)'s rate: {50000 / m['b'] / 60:.1f} min")
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()

"""Per-step overhead: the fixed cost of one training step once the network's arithmetic is taken away.

On a GPU an epoch of this network's arithmetic takes about a second, so what a step costs besides it
(the optimizer's Python, fastai's callbacks, the batch's assembly and augmentation) decides the wall
time. Here the model is `NoCompute`: CustomResNet's 6.6 M parameters, so that the optimizer updates
all of them, but a forward pass that is one sum per parameter tensor. Side by side, interleaved:

  bare PyTorch   an in-memory uint8 batch, crop/flip/normalise/Cutout as tensor operations, the recipe's
                 loss, torch's fused AdamW with the LR and beta1 set every step: the least a step can do
  fastresnet     the recipe's fastai Learner (DataBlock, batch transforms, callbacks, one-cycle scheduler,
                 checkpoint bookkeeping), with `adam_impl` = fused (the default), foreach and fastai; and
                 the same Learner in a plain `fit` without the recipe's callbacks
  data alone     fastresnet's DataLoader with its batch transforms against the bare loop's data lines

Overhead = the step's milliseconds minus those of `NoCompute`'s own forward and backward (measured apart).

    python benchmarks/bench_overhead.py [--bs 512] [--steps 30] [--repeats 3]
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
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelFitException, CancelValidException
from fastai.vision.all import cifar_stats
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import OtherLoad, add_machine_args, header, wait_for_idle  # noqa: E402
from fastresnet.config import Recipe  # noqa: E402
from fastresnet.data import ImageArrays, recipe_dls  # noqa: E402
from fastai.torch_core import trainable_params  # noqa: E402
from fastresnet.callbacks import StopOnNaN  # noqa: E402
from fastresnet.learner import build_learner  # noqa: E402
from fastresnet.model import CustomResNet  # noqa: E402
from fastresnet.resume import RunCheckpoint  # noqa: E402

IMPLS = ("fused", "foreach", "fastai")


class NoCompute(nn.Module):
    "CustomResNet's parameters without its arithmetic: logits from the mean colour, every parameter in the graph."
    def __init__(self, width: float = 1.0):
        super().__init__()
        self.net, self.head = CustomResNet(width=width), nn.Linear(3, 10)
    def forward(self, x):
        x = x.as_subclass(torch.Tensor)  # as CustomResNet does with fastai's TensorImage
        touch = torch.stack([p.sum() for p in self.net.parameters()]).sum() * 0  # gradients (zeros) for all of them
        return self.head(x.mean((2, 3))) + touch


def synthetic(n: int) -> ImageArrays:
    g = torch.Generator().manual_seed(0)
    return ImageArrays(torch.randint(0, 256, (n + 10, 3, 32, 32), dtype=torch.uint8, generator=g),
                       torch.arange(n + 10) % 10, [str(i) for i in range(10)], n)


def augment(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, pad: int = 4, cut: int = 8) -> torch.Tensor:
    "The recipe's augmentation in bare tensor operations: random crop after padding, flip, normalise, Cutout."
    n, c, h, w = x.shape
    xp = F.pad(x.float() / 255, (pad,) * 4)
    dy, dx = (torch.randint(0, 2 * pad + 1, (n, 1, 1, 1)) for _ in range(2))
    x = xp[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
           dy + torch.arange(h).view(1, 1, h, 1), dx + torch.arange(w).view(1, 1, 1, w)]
    x = torch.where(torch.rand(n, 1, 1, 1) < 0.5, x.flip(-1), x)
    x = (x - mean) / std
    cy, cx = (torch.randint(0, h, (n, 1, 1)) - cut // 2 for _ in range(2))
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    return x.masked_fill(((ys >= cy) & (ys < cy + cut) & (xs >= cx) & (xs < cx + cut)).unsqueeze(1), 0.0)


def bare_steps(data: ImageArrays, bs: int, steps: int, width: float = 1.0) -> list[float]:
    "Wall-clock stamps of `steps` bare PyTorch training steps."
    torch.manual_seed(0)
    model = NoCompute(width).to(memory_format=torch.channels_last).train()
    decay = [p for p in model.parameters() if p.dim() > 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": [p for p in model.parameters() if p.dim() <= 1],
                                                 "weight_decay": 0.0}], lr=1e-4, betas=(0.95, 0.99), eps=1e-5,
                            weight_decay=0.8, fused=True)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in cifar_stats)
    images, labels = data.images[:data.n_train], data.labels[:data.n_train]
    perm, stamps = torch.randperm(data.n_train), []
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        x = augment(images[idx], mean, std)  # the model is channels_last; the input stays as made, as in fastai
        for g in opt.param_groups: g["lr"], g["betas"] = 1e-4 + i * 1e-5, (0.95 - i * 1e-3, 0.99)
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)  # fastresnet's divergence check reads the loss every step; so does any training loop's log
        stamps.append(time.perf_counter())
    return stamps


class Clock(Callback):
    "Wall time at the end of every training batch; stops the fit after `steps` and skips validation."
    order = 99
    def __init__(self, steps: int): self.steps, self.stamps = steps, []
    def after_batch(self):
        if not self.training: return
        self.stamps.append(time.perf_counter())
        if len(self.stamps) >= self.steps: raise CancelFitException()
    def before_validate(self): raise CancelValidException()


def fastresnet_steps(data: ImageArrays, bs: int, steps: int, impl: str, run_dir: Path,
                     width: float = 1.0, recipe_cbs: bool = True) -> list[float]:
    """Wall-clock stamps of `steps` steps of the recipe's Learner and callbacks, as `fastresnet train` runs them;
    `recipe_cbs=False`: a plain `learn.fit` (no scheduler, checkpoint bookkeeping or divergence check)."""
    torch.manual_seed(0)
    r = Recipe(bs=bs, adam_impl=impl)
    learn = build_learner(recipe_dls(data, r), r, path=run_dir)
    learn.model, learn.splitter = NoCompute(width), trainable_params  # one layer group: the stand-in has no head
    clock = Clock(steps)
    with learn.no_bar(), learn.no_logging():
        if recipe_cbs: learn.fit_one_cycle_peak(2, 1e-4, 1e-2, 1, cbs=[StopOnNaN(), RunCheckpoint(run_dir), clock])
        else: learn.fit(2, 1e-3, cbs=clock)
    return clock.stamps


def data_ms(data: ImageArrays, bs: int, steps: int) -> tuple[float, float]:
    "Milliseconds a batch for the data alone: fastresnet's DataLoader with its batch transforms, and the bare loop's."
    dl, mean, std = recipe_dls(data, Recipe(bs=bs)).train, *(torch.tensor(s).view(1, 3, 1, 1) for s in cifar_stats)
    t = time.perf_counter()
    for _, (xb, yb) in zip(range(steps), dl): pass
    fastai_ms = 1e3 * (time.perf_counter() - t) / steps
    perm, t = torch.randperm(data.n_train), time.perf_counter()
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        augment(data.images[idx], mean, std), data.labels[idx]
    return fastai_ms, 1e3 * (time.perf_counter() - t) / steps


def model_only_ms(bs: int, width: float = 1.0, reps: int = 20) -> float:
    "Milliseconds of NoCompute's forward + backward alone: what is subtracted to leave the overhead."
    model, x = NoCompute(width).to(memory_format=torch.channels_last), torch.randn(bs, 3, 32, 32)
    y = torch.randint(0, 10, (bs,))
    x = x.contiguous(memory_format=torch.channels_last)
    ts = []
    for _ in range(reps + 3):
        t = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts[3:])


def ms_per_step(stamps: list[float], warmup: int) -> float:
    s = stamps[warmup - 1:]
    return 1e3 * (s[-1] - s[0]) / (len(s) - 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bs", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    ap.add_argument("--width", type=float, default=1.0,
                    help="NoCompute's parameters as CustomResNet's at this width: with a small batch (e.g. --bs 16 "
                    "--width 0.02) the same 26 tensors but almost no bytes, so what is left is the host's time per "
                    "step (Python, dispatch), the part a GPU does not speed up")
    add_machine_args(ap)
    a = ap.parse_args()
    condition = wait_for_idle(a)
    n = a.bs * (a.steps + a.warmup)
    data = synthetic(n)
    print(header("fastresnet per-step overhead", condition))
    print(f"batch {a.bs}, {a.warmup} warm-up + {a.steps} timed steps, {a.repeats} interleaved repeats, "
          f"random uint8 images; model: NoCompute (width {a.width:g}: "
          f"{sum(p.numel() for p in NoCompute(a.width).parameters()) / 1e6:.3f} M parameters, no convolutions)")
    other = OtherLoad()
    res = {k: [] for k in ("bare",) + IMPLS + ("fit",)}
    data_res = {"fastai": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):
            res["bare"].append(ms_per_step(bare_steps(data, a.bs, a.steps + a.warmup, a.width), a.warmup))
            for impl in IMPLS:
                res[impl].append(ms_per_step(fastresnet_steps(data, a.bs, a.steps + a.warmup, impl, Path(tmp),
                                                              a.width), a.warmup))
            res["fit"].append(ms_per_step(fastresnet_steps(data, a.bs, a.steps + a.warmup, "fused", Path(tmp),
                                                           a.width, recipe_cbs=False), a.warmup))
            for k, v in zip(("fastai", "bare"), data_ms(data, a.bs, a.steps)): data_res[k].append(v)
    base = model_only_ms(a.bs, a.width)
    print(other.report())
    m = {k: statistics.median(v) for k, v in res.items()}
    names = {"bare": "bare PyTorch (fused AdamW)", "fused": "fastresnet, adam_impl = fused (default)",
             "foreach": "fastresnet, adam_impl = foreach", "fastai": "fastresnet, adam_impl = fastai (fastai's Adam)",
             "fit": "fastresnet's Learner, plain `fit` (no recipe callbacks, no scheduler), fused"}
    print(f"\nNoCompute forward + backward alone: {base:.1f} ms (subtracted below)\n")
    print("| step | ms/step | overhead ms/step | overhead / bare | all repeats (ms/step) |")
    print("|---|---|---|---|---|")
    for k, v in m.items():
        print(f"| {names[k]} | {v:.1f} | {v - base:.1f} | {(v - base) / (m['bare'] - base):.2f}x | "
              f"{', '.join(f'{x:.1f}' for x in res[k])} |")
    d = {k: statistics.median(v) for k, v in data_res.items()}
    print(f"\ndata alone, ms a batch: fastresnet's DataLoader + batch transforms {d['fastai']:.1f} "
          f"({', '.join(f'{x:.1f}' for x in data_res['fastai'])}); the bare loop's gather + augmentation "
          f"{d['bare']:.1f} ({', '.join(f'{x:.1f}' for x in data_res['bare'])})")


if __name__ == "__main__":
    main()

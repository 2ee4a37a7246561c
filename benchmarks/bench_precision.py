"""Training step in fp32 against bf16 (and torch.compile) on this CPU, side by side in one process.

  bare:       CustomResNet forward + backward + fused AdamW on tensors made in advance (channels_last),
              fp32, and bf16 through torch.autocast("cpu") with fp32 weights
  fastresnet: the recipe's whole training step, in-memory data and on-device augmentation included,
              `--precision fp32` and `--precision bf16`
  compiled:   (with --compile MODE...) the fastresnet step through torch.compile in each mode and precision;
              its first steps (compilation) are timed apart from the steady rate

Each rate is images/s over `--steps` timed batches after `--warmup` untimed ones; the uncompiled rows are
interleaved `--repeats` times and the median is reported. Waits for an idle machine (common.py).

    python benchmarks/bench_precision.py                                 # batch 512, about 4 min here
    python benchmarks/bench_precision.py --compile default max-autotune  # + compiled rows (minutes each)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_epoch import fit_rate, rate  # noqa: E402
from common import OtherLoad, add_machine_args, header, train_flops, wait_for_idle  # noqa: E402
from fastresnet.config import Recipe  # noqa: E402
from fastresnet.data import ImageArrays, recipe_dls  # noqa: E402
from fastresnet.device import CompileModel, cpu_native_bf16  # noqa: E402
from fastresnet.learner import build_learner  # noqa: E402
from fastresnet.model import CustomResNet  # noqa: E402


def bare(bs: int, steps: int, warmup: int, bf16: bool) -> float:
    "Forward + backward + fused AdamW on pre-made tensors, in fp32 or under bf16 autocast (weights stay fp32)."
    torch.manual_seed(0)
    model = CustomResNet().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.99), eps=1e-5, weight_decay=0.8, fused=True)
    x = torch.randn(bs, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    stamps = []
    for _ in range(steps + warmup):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return rate(stamps, warmup, bs)


def synthetic(n: int) -> ImageArrays:
    g = torch.Generator().manual_seed(0)
    return ImageArrays(torch.randint(0, 256, (n + 10, 3, 32, 32), dtype=torch.uint8, generator=g),
                       torch.arange(n + 10) % 10, [str(i) for i in range(10)], n)


def learner(data: ImageArrays, bs: int, precision: str, mode: str | None = None):
    r = Recipe(bs=bs, precision=precision)
    learn = build_learner(recipe_dls(data, r), r)
    if mode: learn.add_cb(CompileModel(mode=None if mode == "default" else mode))
    return learn


def compiled_rate(data: ImageArrays, bs: int, precision: str, mode: str, steps: int, warmup: int):
    "Compilation time (the first `warmup` steps) and the steady rate after it."
    learn = learner(data, bs, precision, mode)
    torch._dynamo.reset()
    t0 = time.perf_counter()
    from bench_epoch import BatchClock
    clock = BatchClock()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-4, cbs=clock)
    return clock.stamps[warmup - 1] - t0, rate(clock.stamps, warmup, bs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bs", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", nargs="*", default=[], metavar="MODE", help="torch.compile modes to add: "
                    "default, max-autotune, reduce-overhead")
    add_machine_args(ap)
    a = ap.parse_args()
    data = synthetic(a.bs * (a.steps + a.warmup))
    print(header("fastresnet precision benchmark", wait_for_idle(a)))
    print(f"batch {a.bs}, {a.warmup} warm-up + {a.steps} timed batches, {a.repeats} interleaved repeats; "
          f"fastresnet reads this CPU as {'having' if cpu_native_bf16() else 'lacking'} bf16 units; oneDNN says "
          f"bf16 {'is' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'is not'} supported")
    other = OtherLoad()
    learners = {p: learner(data, a.bs, p) for p in ("fp32", "bf16")}
    res = {k: [] for k in ("bare fp32", "bare bf16", "fastresnet fp32", "fastresnet bf16")}
    for _ in range(a.repeats):
        res["bare fp32"].append(bare(a.bs, a.steps, a.warmup, False))
        res["bare bf16"].append(bare(a.bs, a.steps, a.warmup, True))
        for p, learn in learners.items(): res[f"fastresnet {p}"].append(fit_rate(learn, a.warmup, a.bs))
    compiled = {}
    for mode in a.compile:
        for p in ("fp32", "bf16"):
            compiled[f"fastresnet {p} + compile ({mode})"] = compiled_rate(data, a.bs, p, mode, a.steps, a.warmup)
    print(other.report())
    flop = train_flops(CustomResNet())
    m = {k: statistics.median(v) for k, v in res.items()}
    print("\n| step | images/s | GFLOP/s | vs fastresnet fp32 | first steps (compile) s | all repeats |\n"
          "|---|---|---|---|---|---|")
    for k, v in m.items():
        print(f"| {k} | {v:.1f} | {v * flop / 1e9:.0f} | {v / m['fastresnet fp32']:.2f}x | | "
              f"{', '.join(f'{x:.1f}' for x in res[k])} |")
    for k, (compile_s, v) in compiled.items():
        print(f"| {k} | {v:.1f} | {v * flop / 1e9:.0f} | {v / m['fastresnet fp32']:.2f}x | {compile_s:.0f} | |")
    print(f"\nbf16 / fp32, the whole fastresnet step: {m['fastresnet bf16'] / m['fastresnet fp32']:.2f}x; "
          f"bare: {m['bare bf16'] / m['bare fp32']:.2f}x")


if __name__ == "__main__":
    main()

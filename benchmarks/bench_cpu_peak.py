"""How close the bf16 training step comes to what this CPU can do, and where the rest of the step's time goes.

  peak:     a bf16 4096x4096 matmul; each of the network's convolutions at its own shapes and batch `--bs` in bf16:
            forward, input gradient and weight gradient timed apart, channels_last and contiguous (NCHW). The
            practical peak is the step's convolution FLOPs over the sum of each one's best time: the step's rate if
            nothing but its convolutions cost anything.
  step:     the recipe's whole training step in bf16 (in-memory data and augmentation included), images/s
  profile:  that step's wall time by op kind (torch.profiler, self time of each op): convolution, BatchNorm,
            pooling, elementwise (ReLU, adds, casts, copies), loss, optimizer, data and augmentation (everything
            between one step's end and the next one's start), and what no op accounts for (Python, fastai)
  oneDNN:   which ISA oneDNN's convolution kernels use here (ONEDNN_VERBOSE=1 in a child process): on a CPU with
            `amx_bf16`, whether every convolution pass of the step runs on AMX (`avx512_core_amx`)

Waits for an idle machine (common.py). Needs a CPU with bf16 units (avx512_bf16 or amx_bf16).

    python benchmarks/bench_cpu_peak.py            # batch 512, about 3 min on 2 cores
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

sys.path.insert(0, str(Path(__file__).parent))
from bench_epoch import BatchClock, rate  # noqa: E402
from bench_precision import learner, synthetic  # noqa: E402
from common import OtherLoad, add_machine_args, forward_flops, header, train_flops, wait_for_idle  # noqa: E402
from fastresnet.device import cpu_native_bf16  # noqa: E402
from fastresnet.model import CustomResNet  # noqa: E402

PASSES = ("forward", "input grad", "weight grad")
# Each profiled op's kind, by the first pattern its name matches (aten's names; oneDNN's convolutions are mkldnn_*).
KINDS = [("convolution", r"conv"), ("BatchNorm", r"batch_norm"), ("pooling", r"pool"),
         ("loss", r"softmax|nll_loss|cross_entropy"), ("optimizer", r"adam|_foreach|sgd"),
         ("elementwise", r".")]


def best(fn, reps: int) -> float:
    "The fastest of `reps` calls after one warm-up, in seconds."
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_bf16(n: int = 4096, reps: int = 5) -> float:
    a, b = (torch.randn(n, n, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n ** 3 / best(lambda: a @ b, reps)


def conv_passes(bs: int, reps: int) -> list[dict]:
    """Each convolution of the network in bf16 at batch `bs`: seconds of its forward, input-gradient and
    weight-gradient passes in each memory layout, and the FLOPs of one pass."""
    rows = []
    for c in forward_flops(CustomResNet())[1]:
        m = c["layer"]
        conv_args = (m.stride, m.padding, m.dilation, False, [0, 0], m.groups)
        row = {"shape": f"{c['in_shape'][1]}->{m.out_channels} at {c['in_shape'][2]}x{c['in_shape'][3]}",
               "flop": bs * c["flops"], "first": not rows}
        for layout in (torch.channels_last, torch.contiguous_format):
            x = torch.randn(bs, *c["in_shape"][1:], dtype=torch.bfloat16).contiguous(memory_format=layout)
            w = m.weight.detach().to(torch.bfloat16).contiguous(memory_format=layout)
            out = F.conv2d(x, w, None, m.stride, m.padding)
            g = torch.randn_like(out).contiguous(memory_format=layout)
            back = lambda mask: torch.ops.aten.convolution_backward(g, x, w, None, *conv_args, mask)
            name = "channels_last" if layout is torch.channels_last else "NCHW"
            row[name] = {"forward": best(lambda: F.conv2d(x, w, None, m.stride, m.padding), reps),
                         "input grad": best(lambda: back([True, False, False]), reps),
                         "weight grad": best(lambda: back([False, True, False]), reps)}
        rows.append(row)
    return rows


def practical_peak(rows: list[dict]) -> float:
    "The step's convolution FLOPs (no input gradient for the first layer) over the sum of each pass's best time."
    flop = seconds = 0.0
    for r in rows:
        for p in PASSES:
            if r["first"] and p == "input grad":
                continue  # the images need no gradient
            flop += r["flop"]
            seconds += min(r["channels_last"][p], r["NCHW"][p])
    return flop / seconds


class Spans(Callback):
    """Profiler ranges over a fit: "step" from a training batch's start to its end, "data" from one step's end (or the
    epoch's start) to the next one's start: the loading and augmenting of the batch."""
    order = 100
    span = None
    def before_epoch(self): self._open("data")
    def before_batch(self): self._open("step")
    def after_batch(self): self._open("data")
    def after_epoch(self): self._close()

    def _open(self, name: str):
        self._close()
        self.span = torch.profiler.record_function(name)
        self.span.__enter__()

    def _close(self):
        if self.span is not None:
            self.span.__exit__(None, None, None)
            self.span = None


def profile_step(data, bs: int) -> tuple[dict, float, float, dict]:
    """After a warm-up epoch of bf16 training steps, one timed epoch (its images/s) and one profiled: milliseconds a
    step by kind (the ops inside the steps by their self time, the data spans whole, the rest of the wall time apart)
    and the profiled step's wall time; and the ops other than convolutions, costliest first (ms a step)."""
    learn = learner(data, bs, "bf16")
    clock = BatchClock()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4, cbs=[BatchClock()])  # warm-up: oneDNN picks and caches its kernels
        learn.fit(1, 1e-4, cbs=[clock])         # the rate, without the profiler's overhead
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            learn.fit(1, 1e-4, cbs=[BatchClock(), Spans()])
    events = prof.events()
    spans = {k: [e for e in events if e.name == k] for k in ("step", "data")}
    inside = [(e.time_range.start, e.time_range.end) for e in spans["step"]]
    in_step = lambda e: any(a <= e.time_range.start < b for a, b in inside)
    ms = collections.Counter({"data and augmentation": sum(e.cpu_time_total for e in spans["data"]) / 1e3})
    ops = collections.Counter()  # each op's own, for the list of what besides the convolutions costs most
    for e in events:
        if e.name.startswith("aten::") and in_step(e):
            ms[next(k for k, pattern in KINDS if re.search(pattern, e.name[6:]))] += e.self_cpu_time_total / 1e3
            ops[e.name] += e.self_cpu_time_total / 1e3
    first, last = min(e.time_range.start for e in spans["data"]), max(b for _, b in inside)
    n = len(inside)
    wall_ms = (last - first) / 1e3
    ms["Python and fastai (no op)"] = wall_ms - sum(ms.values())
    top = {k: v / n for k, v in ops.most_common() if not re.search(KINDS[0][1], k)}
    return {k: v / n for k, v in ms.items()}, wall_ms / n, rate(clock.stamps, 1, bs), top


def onednn_isa(bs: int) -> str:
    "oneDNN's kernels for one bf16 channels_last convolution's three passes, as ONEDNN_VERBOSE=1 names them."
    code = ("import torch, torch.nn.functional as F\n"
            f"x = torch.randn({bs}, 256, 8, 8, dtype=torch.bfloat16, requires_grad=True)"
            ".contiguous(memory_format=torch.channels_last)\n"
            "w = torch.randn(512, 256, 3, 3, dtype=torch.bfloat16, requires_grad=True)"
            ".contiguous(memory_format=torch.channels_last)\n"
            "F.conv2d(x, w, None, 1, 1).sum().backward()\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                         capture_output=True, text=True).stdout
    kernels = collections.Counter()
    for line in out.splitlines():
        f = line.split(",")
        if f[0] == "onednn_verbose" and "exec" in f and "convolution" in f:
            i = f.index("convolution")
            kernels[f"{f[i + 2]}: {f[i + 1]}"] += 1  # the pass (prop kind): the implementation and its ISA
    return "; ".join(f"{k} ({v}x)" for k, v in kernels.items()) or "no convolution lines (oneDNN not used?)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bs", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4, help="training steps an epoch: one epoch to warm up, one profiled")
    ap.add_argument("--reps", type=int, default=3, help="timed calls of each convolution pass (the best is kept)")
    add_machine_args(ap)
    a = ap.parse_args()
    if not cpu_native_bf16():
        print("bench_cpu_peak: this CPU has no bf16 units (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo), where "
              "bf16 is emulated: nothing here applies to it. Run it on a CPU that has them.", file=sys.stderr)
        sys.exit(2)
    print(header("fastresnet bf16 peak and profile", wait_for_idle(a)))
    other = OtherLoad()
    mm = matmul_bf16()
    rows = conv_passes(a.bs, a.reps)
    peak = practical_peak(rows)
    data = synthetic(a.bs * a.steps)
    ms, step_ms, step_rate, top = profile_step(data, a.bs)
    isa = onednn_isa(a.bs)
    print(other.report())
    step_gflops = step_rate * train_flops(CustomResNet()) / 1e9
    print(f"\nbf16 matmul 4096x4096: {mm / 1e9:.0f} GFLOP/s")
    print(f"\n| convolution (batch {a.bs}, bf16) | pass | channels_last GFLOP/s | NCHW GFLOP/s |\n|---|---|---|---|")
    for r in rows:
        for p in PASSES:
            if r["first"] and p == "input grad":
                continue
            print(f"| {r['shape']} | {p} | {r['flop'] / r['channels_last'][p] / 1e9:.0f} | "
                  f"{r['flop'] / r['NCHW'][p] / 1e9:.0f} |")
    print(f"\npractical peak (the step's convolutions alone, each pass in its faster layout): {peak / 1e9:.0f} GFLOP/s")
    print(f"the training step ({a.steps - 1} timed after 1): {step_rate:.1f} images/s, {step_gflops:.0f} GFLOP/s = "
          f"{100 * step_gflops * 1e9 / peak:.0f}% of the practical peak; an epoch of 50,000 images: "
          f"{50_000 / step_rate / 60:.1f} min")
    print(f"\n| the step's time by kind (profiled: {step_ms:.0f} ms a step) | ms a step | share |\n|---|---|---|")
    for k, v in sorted(ms.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.1f} | {100 * v / step_ms:.1f}% |")
    print("\nthe costliest ops besides the convolutions (ms a step): " +
          ", ".join(f"{k[6:]} {v:.1f}" for k, v in list(top.items())[:10]))
    print(f"\noneDNN's kernels for a bf16 convolution (256->512 at 8x8): {isa}")


if __name__ == "__main__":
    main()

"""What every benchmark here shares: the idle-machine check, a record of other processes' CPU use during
the measurement, the network's FLOPs counted from its own layers, and the header line.

On this kind of machine the kernel shares the cores between sessions (autogroup), so `nice` does not
keep another job out of a measurement's way: a benchmark waits for an idle machine, refuses a busy one
unless told `--force` (and then says so in its output), and reports the CPU time other processes took.
"""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["add_machine_args", "wait_for_idle", "OtherLoad", "train_flops", "forward_flops", "cpu_name", "header",
           "untrained_model", "rss_mb"]


def add_machine_args(ap) -> None:
    ap.add_argument("--max-load", type=float, default=0.5, help="highest 1-minute load average counted as idle")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for an idle machine before refusing")
    ap.add_argument("--force", action="store_true", help="measure on a busy machine anyway (flagged in the output)")


def _load() -> tuple[float, int]:
    "1-minute load average and the number of runnable tasks besides this one."
    fields = open("/proc/loadavg").read().split()
    return float(fields[0]), int(fields[3].split("/")[0]) - 1


def wait_for_idle(a) -> str:
    "Wait until the machine is idle (1-minute load ≤ --max-load, nothing else runnable); a one-line condition."
    t0 = time.time()
    while True:
        load, running = _load()
        if load <= a.max_load and running == 0:
            return f"idle machine: 1-minute load {load:.2f} at the start (waited {time.time() - t0:.0f} s)"
        if time.time() - t0 > a.wait:
            if a.force: return f"BUSY MACHINE (--force): 1-minute load {load:.2f}, {running} other runnable task(s)"
            raise SystemExit(f"The machine is busy (1-minute load {load:.2f}, {running} other runnable task(s)) after "
                             f"{a.wait:.0f} s of waiting: a benchmark would measure a share of the cores. Stop the "
                             "other work, or pass --force to measure anyway (the output will say so).")
        time.sleep(5)


def _busy_cpu_s() -> float:
    "CPU-seconds all processes have spent since boot (user, nice, system, irq, softirq, steal)."
    ticks = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    "CPU-seconds spent by other processes while the benchmark ran: all busy time minus this process's own."
    def __init__(self): self.t, self.busy, self.own = time.time(), _busy_cpu_s(), sum(os.times()[:4])
    def report(self) -> str:
        wall = time.time() - self.t
        other = max(0.0, (_busy_cpu_s() - self.busy) - (sum(os.times()[:4]) - self.own))
        return (f"other processes used {other:.1f} CPU-s during the {wall:.0f} s of measurement "
                f"({100 * other / wall:.1f}% of one core)")


@contextmanager
def _hooks(model: nn.Module, fn):
    hs = [m.register_forward_hook(fn) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try: yield
    finally:
        for h in hs: h.remove()


def forward_flops(model: nn.Module, shape=(1, 3, 32, 32)) -> tuple[float, list[dict]]:
    """FLOPs (2 per multiply-add) of one forward pass of the convolutions and linear layers, counted from the
    layers themselves on an input of `shape`; with each convolution's shapes for the peak measurement."""
    convs, total = [], 0.0
    def count(m, inp, out):
        nonlocal total
        k = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features  # multiply-adds per output value
        total += 2.0 * out.numel() * k
        if isinstance(m, nn.Conv2d):
            convs.append({"layer": m, "in_shape": tuple(inp[0].shape), "flops": 2.0 * out.numel() * k / shape[0]})
    was = model.training
    model.eval()
    with _hooks(model, count), torch.no_grad(): model(torch.zeros(shape))
    model.train(was)
    return total / shape[0], convs


def train_flops(model: nn.Module) -> float:
    """FLOPs of one training image: forward, the weights' gradients (as many again) and the inputs' gradients
    (as many again, except for the first layer, whose input needs none)."""
    fwd, convs = forward_flops(model)
    return 3 * fwd - convs[0]["flops"]


def cpu_name() -> str:
    "The processor as the kernel names it, its family/model and whether it has bf16 units (the flags fastresnet reads)."
    try: info = open("/proc/cpuinfo").read()
    except OSError: return platform.processor() or "unknown CPU"
    field = lambda k: next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith(k)), "?")
    flags = field("flags").split()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags] or ["no bf16 flags"]
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{field('model name')} (family {field('cpu family')}, model {field('model')}; {isa}; {', '.join(bf16)})"


def header(title: str, condition: str) -> str:
    return (f"# {title} — {time.strftime('%Y-%m-%d %H:%M')}\n"
            f"machine: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}\n{condition}")


def untrained_model(folder) -> "Path":
    """A full-width model with random weights, saved as a run's model.safetensors and model.pkl (returned: the commands
    read the safetensors beside it): inference costs what a trained one's does."""
    from pathlib import Path

    from fastresnet.config import Recipe
    from fastresnet.data import CIFAR_CLASSES
    from fastresnet.learner import save_weights, stub_learner
    learn = stub_learner(CIFAR_CLASSES, Recipe())
    save_weights(learn, Path(folder) / "model.safetensors")
    learn.export(Path(folder) / "model.pkl")
    return Path(folder) / "model.pkl"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    "A process's resident memory (`VmHWM`: its peak so far), from /proc, in MB."
    line = next(x for x in open(f"/proc/{pid}/status") if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024

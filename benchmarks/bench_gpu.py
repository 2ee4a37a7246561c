"""The speed ladder of the recipe's training step on one GPU, each rung the whole fastresnet step (fastai
Learner, in-memory data, on-device augmentation, fused Adam) at the recipe's batch:

  fp32 (no TF32) → tf32 → bf16 → + channels_last → + torch.compile → + mode="reduce-overhead" (CUDA graphs)

each in s/epoch, images/s, TFLOP/s and % of the device's peak, the peak measured in the same run (a large
matmul in the rung's precision). Each rung trains `--epochs` epochs without a test pass; the first (cuDNN
autotuning, compilation) is reported apart. `--profile` adds a torch.profiler summary of one epoch: the top
kernels, host against device time and the host-device synchronisations a step. On a CPU (`--device cpu`,
for a dry run) the same rungs run where they apply and print the same figures.

    python benchmarks/bench_gpu.py --data PATH [--rungs fp32,tf32,...] [--profile] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

warnings.filterwarnings("ignore")
import torch
from fastai.callback.core import Callback, CancelValidException

from fastresnet.config import Recipe
from fastresnet.data import balanced_subset, recipe_dls, load_arrays
from fastresnet.learner import build_learner
from fastresnet.model import CustomResNet

RUNGS = {  # name: (precision, tf32, channels_last, compile mode or None)
    "fp32": ("fp32", False, False, None), "tf32": ("fp32", True, False, None), "bf16": ("bf16", True, False, None),
    "bf16+cl": ("bf16", True, True, None), "bf16+cl+compile": ("bf16", True, True, "default"),
    "bf16+cl+compile-ro": ("bf16", True, True, "reduce-overhead")}


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


class EpochClock(Callback):
    "Seconds per training epoch, the device's queue drained at both ends; no test pass."
    order = 99
    def __init__(self, device): self.device, self.times = device, []
    def before_epoch(self): sync(self.device); self.t = time.perf_counter()
    def before_validate(self):
        sync(self.device)
        self.times.append(time.perf_counter() - self.t)
        raise CancelValidException()


def matmul_peak(device, dtype, n: int = 8192, reps: int = 20) -> float:
    "FLOP/s of an n x n matmul in `dtype` (fp32 obeys the TF32 switch): the device's practical peak."
    if device.type == "cpu": n, reps = 2048, 3
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps): a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def set_tf32(on: bool):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def rung(data, name: str, epochs: int, bs: int, device, profile: bool = False) -> dict:
    precision, tf32, cl, mode = RUNGS[name]
    if device.type == "cpu" and precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return {"rung": name, "skipped": "no bf16 on this CPU"}
    set_tf32(tf32)
    r = Recipe(bs=bs, epochs=epochs, peak_epoch=1, precision=precision, channels_last=cl, lr_max=0.0026)
    learn = build_learner(recipe_dls(data, r, device=device), r, path="/tmp")
    if mode:
        from fastresnet.device import CompileModel
        learn.add_cb(CompileModel(mode=None if mode == "default" else mode))
    clock = EpochClock(device)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle_peak(epochs, r.lr_max / 100, r.lr_max, 1, cbs=[clock])
    steady = sorted(clock.times[1:])[len(clock.times[1:]) // 2]  # median of the epochs after the warm-up
    n = len(learn.dls.train) * bs
    flop = n * train_flop_per_image()
    peak = matmul_peak(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    out = {"rung": name, "first_epoch_s": round(clock.times[0], 2), "epoch_s": round(steady, 3),
           "images_per_s": round(n / steady), "tflops": round(flop / steady / 1e12, 2),
           "peak_tflops": round(peak / 1e12, 1), "pct_of_peak": round(100 * flop / steady / peak, 1),
           "total_s": round(time.perf_counter() - t0, 1)}
    if device.type == "cuda": out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if profile: out["profile"] = profile_epoch(learn, device)
    return out


def train_flop_per_image() -> float:
    "Forward, weight and input gradients of the convolutions and fc (counted from the layers: 2.27 GFLOP)."
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from common import train_flops
    return train_flops(CustomResNet())


def profile_epoch(learn, device) -> dict:
    "torch.profiler over one training epoch: top kernels by device time, host vs device time, syncs a step."
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof, learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4, cbs=EpochClock(device))
    ev = prof.key_averages()
    dev = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    top = sorted(ev, key=lambda e: getattr(e, dev), reverse=True)[:12]
    steps = len(learn.dls.train)
    count = lambda *names: round(sum(e.count for e in ev if any(n in e.key for n in names)) / steps, 2)
    return {"steps": steps, "cuda_syncs_per_step": count("cudaStreamSynchronize", "cudaDeviceSynchronize"),
            "scalar_reads_per_step": count("aten::_local_scalar_dense"),  # .item() and friends: a sync on a GPU
            "host_ms_per_step": round(sum(e.self_cpu_time_total for e in ev) / 1e3 / steps, 2),
            "device_ms_per_step": round(sum(getattr(e, "self_device_time_total", 0) for e in ev) / 1e3 / steps, 2),
            "top": [{"name": e.key[:80], "ms": round(getattr(e, dev) / 1e3, 1), "calls": e.count} for e in top]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rungs", default=",".join(RUNGS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--bs", type=int, default=512)
    ap.add_argument("--subset", type=int, help="training images (a dry run on a CPU)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", action="store_true", help="profile one epoch of the last rung")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available(): raise SystemExit("No CUDA GPU here (--device cpu).")
    data = load_arrays(a.data)
    if a.subset: data = balanced_subset(data, a.subset)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    head = {"device": name, "torch": torch.__version__, "batch": a.bs, "n_train": data.n_train, "epochs": a.epochs}
    print(json.dumps(head))
    out, rungs = [], a.rungs.split(",")
    for i, n in enumerate(rungs):
        if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
        out.append(rung(data, n, a.epochs, a.bs, device, profile=a.profile and i == len(rungs) - 1))
        print(json.dumps(out[-1]), flush=True)
        if a.json: open(a.json, "w").write(json.dumps({**head, "rungs": out}, indent=1))
    base = next((r for r in out if "epoch_s" in r), None)
    for r in out:
        if "epoch_s" in r:
            print(f"{r['rung']:>20}: {r['epoch_s']:.3f} s/epoch, {r['images_per_s']} images/s, {r['tflops']} TFLOP/s "
                  f"= {r['pct_of_peak']}% of {r['peak_tflops']}, {base['epoch_s'] / r['epoch_s']:.2f}x {base['rung']}, "
                  f"first epoch {r['first_epoch_s']} s")


if __name__ == "__main__":
    main()

"""Training throughput of the recipe on a CUDA GPU: fp32 (TF32 convolutions), bf16 mixed precision,
and either with `torch.compile`, each the full fastresnet training step (fastai Learner, in-memory
data, on-device augmentation, Adam) at the recipe's batch.

Each configuration trains `--epochs` epochs with no test pass; the first is a warm-up (cuDNN
autotuning, compilation) and is reported apart. A CUDA synchronise closes every timed epoch.

    python benchmarks/bench_gpu.py --data PATH [--configs fp32,bf16,bf16+compile] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

warnings.filterwarnings("ignore")
import torch
from fastai.callback.core import Callback, CancelValidException
from fastai.torch_core import set_seed

from fastresnet.config import Recipe
from fastresnet.data import cifar_dls, load_cifar
from fastresnet.learner import build_learner

GFLOP_PER_IMAGE = 2.3  # forward 0.76 GFLOP x 3 for forward + backward (benchmarks/bench_epoch.py)


class EpochClock(Callback):
    "Seconds per training epoch, the GPU's queue drained at both ends; no validation pass."
    order = 99
    def __init__(self): self.times = []
    def before_epoch(self): torch.cuda.synchronize(); self.t = time.perf_counter()
    def before_validate(self):
        torch.cuda.synchronize(); self.times.append(time.perf_counter() - self.t)
        raise CancelValidException()


def bench(data, config: str, epochs: int, bs: int) -> dict:
    precision, _, comp = config.partition("+")
    r = Recipe(bs=bs, epochs=epochs, peak_epoch=1, precision=precision, compile=comp == "compile", lr_max=0.0026)
    set_seed(0, reproducible=True)  # as `fastresnet train` does: deterministic cuDNN algorithms
    learn = build_learner(cifar_dls(data, r, device=torch.device("cuda")), r, path="/tmp")
    clock = EpochClock()
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle_peak(epochs, r.lr_max / 100, r.lr_max, 1, cbs=[clock])
    steady = sorted(clock.times[1:])[len(clock.times[1:]) // 2]  # median of the epochs after the warm-up
    n = len(learn.dls.train) * bs
    return {"config": config, "first_epoch_s": round(clock.times[0], 2), "epoch_s": round(steady, 3),
            "images_per_s": round(n / steady), "tflops": round(n / steady * GFLOP_PER_IMAGE / 1e3, 1),
            "total_s": round(time.perf_counter() - t0, 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--configs", default="fp32,bf16,fp32+compile,bf16+compile")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--bs", type=int, default=512)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if not torch.cuda.is_available(): raise SystemExit("bench_gpu.py needs a CUDA GPU.")
    data = load_cifar(a.data)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {a.bs}, {data.n_train} training images")
    out = []
    for c in a.configs.split(","):
        torch.cuda.reset_peak_memory_stats()
        res = bench(data, c, a.epochs, a.bs)
        out.append(res)
        print(json.dumps(res), flush=True)
        if a.json: open(a.json, "w").write(json.dumps(out, indent=1))
    base = out[0]["epoch_s"]
    for r in out: print(f"{r['config']:>14}: {r['epoch_s']:.2f} s/epoch, {r['images_per_s']} images/s, "
                        f"{r['tflops']} TFLOP/s, {base / r['epoch_s']:.2f}x {out[0]['config']}, "
                        f"first epoch {r['first_epoch_s']} s")


if __name__ == "__main__":
    main()

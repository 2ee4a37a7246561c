"""One optimizer step alone on CustomResNet's 26 parameter tensors (6.57 M numbers), random gradients, side by side:
fastai's `Adam` (per-parameter Python) and torch's AdamW with its for-loop, foreach and fused kernels.

    python benchmarks/bench_optimizer.py [--steps 20] [--repeats 3]
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
from fastai.optimizer import Adam

sys.path.insert(0, str(Path(__file__).parent))
from common import OtherLoad, add_machine_args, header, wait_for_idle  # noqa: E402
from fastresnet.model import CustomResNet  # noqa: E402

KINDS = {"fastai Adam (decoupled wd)": lambda ps: Adam(ps, lr=1e-3, wd=0.8, decouple_wd=True),
         "torch AdamW, for-loop": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.8, foreach=False),
         "torch AdamW, foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.8, foreach=True),
         "torch AdamW, fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.8, fused=True)}


def step_ms(make, steps: int) -> float:
    torch.manual_seed(0)
    params = list(CustomResNet().parameters())
    for p in params: p.grad = torch.randn_like(p)
    opt = make(params)
    for _ in range(3): opt.step()
    t = time.perf_counter()
    for _ in range(steps): opt.step()
    return 1e3 * (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    add_machine_args(ap)
    a = ap.parse_args()
    print(header("one optimizer step, 26 tensors / 6.57 M parameters", wait_for_idle(a)))
    other = OtherLoad()
    res = {k: [] for k in KINDS}
    for _ in range(a.repeats):
        for k, make in KINDS.items(): res[k].append(step_ms(make, a.steps))
    print(other.report() + "\n\n| optimizer | ms/step | repeats |\n|---|---|---|")
    for k, v in res.items(): print(f"| {k} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} |")


if __name__ == "__main__":
    main()

"""What a full-data 24-epoch run costs on this machine at each width: times training steps of the
real pipeline (in-memory data, on-device augmentation, Adam) at the recipe's batch and a test pass.

    python experiments/width_cost.py --data ../shared/data/cifar10-jpeg [--widths 0.25,0.5,1] [--steps 6]

Run it on an idle machine (check `cat /proc/loadavg`): the figures are wall time.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

warnings.filterwarnings("ignore")
import torch
from fastai.callback.core import Callback, CancelFitException

from fastresnet.data import load_arrays
from fastresnet.learner import recipe_learner


class StepClock(Callback):
    "Wall time at the end of each training batch; stops the fit after `n` batches."
    order = 99
    def __init__(self, n: int): self.n, self.stamps = n, []
    def after_batch(self):
        self.stamps.append(time.perf_counter())
        if len(self.stamps) >= self.n: raise CancelFitException()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--widths", default="0.25,0.5,1")
    ap.add_argument("--steps", type=int, default=6, help="timed steps after 2 warm-up steps")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads")
    data = load_arrays(a.data)
    for w in map(float, a.widths.split(",")):
        learn = recipe_learner(data, width=w, lr_max=0.002)
        clock = StepClock(a.steps + 2)
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=clock)
        step = (clock.stamps[-1] - clock.stamps[1]) / a.steps            # after the first two steps
        xb = next(iter(learn.dls.valid))[0]
        t0 = time.perf_counter()
        with torch.inference_mode(): learn.model.eval()(xb)
        valid = (time.perf_counter() - t0) * len(learn.dls.valid)
        n = len(learn.dls.train)
        run_h = 24 * (n * step + valid) / 3600
        print(f"width {w:g}: {step:.2f} s/step, {512 / step:.0f} images/s, epoch {n * step / 60:.1f} min "
              f"+ test pass {valid / 60:.1f} min, 24-epoch run ~{run_h:.1f} h", flush=True)


if __name__ == "__main__":
    main()

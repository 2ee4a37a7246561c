"""Issue 24's LRMIN candidate "the LR where the range test's loss starts to fall", read off saved curves.

The reading: the first LR at which fastai's smoothed loss has fallen `f` of the way from its first value to its
lowest, on the part of the curve fastai's suggestions use (the first num_it//10 and the last 5 points dropped).
It prints the reading for several `f` next to LRMAX (the `minimum` suggestion) and the divisor LRMAX/reading,
so it can be compared with the `lr_min_div` settings the GPU list runs (100, 1000, 10^4).

    python experiments/lr_min_reading.py docs/figures/lr_find_full.json RUN/lr_find.json ...
"""
from __future__ import annotations

import argparse
import json

import numpy as np

FRACTIONS = (0.01, 0.02, 0.05, 0.10)


def fall_lr(lrs, losses, f: float) -> float:
    "The first LR whose loss is at or below first - f * (first - lowest)."
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    threshold = losses[0] - f * (losses[0] - losses.min())
    return float(lrs[np.argmax(losses <= threshold)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("curves", nargs="+", help="lr_find.json files (a run folder's, or fastresnet lr-find's)")
    a = ap.parse_args(argv)
    print("curve | first LR kept | LRMAX (minimum) | " + " | ".join(f"f={f:g}: LR (LRMAX/LR)" for f in FRACTIONS))
    for path in a.curves:
        d = json.loads(open(path).read())
        lrs, losses = d["lrs"], d["losses"]
        n = len(lrs)
        lrs, losses = lrs[n // 10:-5], losses[n // 10:-5]   # what fastai's lr_find gives its suggestion functions
        lr_max = d["suggestions"]["minimum"]
        cells = [f"{fall_lr(lrs, losses, f):.2g} ({lr_max / fall_lr(lrs, losses, f):.0f})" for f in FRACTIONS]
        print(f"{path} | {lrs[0]:.2g} | {lr_max:.3g} | " + " | ".join(cells))


if __name__ == "__main__":
    main()

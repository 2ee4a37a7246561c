"""Put proxy runs side by side: training-loss curves and final test accuracy in one figure.

    python experiments/compare.py runs/proxy/lrmax-0.0026 runs/proxy/wd1 ... --out compare.png

Reads only what every run folder holds (metrics.json, final.json), so it works on any finished
`fastresnet train` run, proxy or full.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fastresnet.folder import FINAL, METRICS_JSON


def load_run(run: Path) -> dict:
    "The per-epoch history and final test figures of one run folder."
    for name in (METRICS_JSON, FINAL):
        if not (run / name).is_file():
            raise SystemExit(f"{run} is not a finished run: {name} is missing")
    final = json.loads((run / FINAL).read_text())
    return {"name": run.name, "history": json.loads((run / METRICS_JSON).read_text()),
            "acc": final["accuracy"], "acc_tta": final.get("accuracy_tta")}


def plot(runs: list[dict], out: Path) -> None:
    "Left: how fast each run fits its data. Right: what that bought on the test set."
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(12, 0.45 * len(runs) + 3.5))
    for r in runs:
        ax_l.plot([h["epoch"] + 1 for h in r["history"]], [h["train_loss"] for h in r["history"]], label=r["name"])
    ax_l.set(xlabel="epoch", ylabel="training loss (smoothed)", title="fit")
    ax_l.legend(fontsize=8)
    ys = range(len(runs))
    ax_r.barh(ys, [r["acc"] for r in runs], color="tab:blue", label="plain")
    tta = [r["acc_tta"] for r in runs]
    if any(t is not None for t in tta):  # flip-TTA only where the run measured it
        ax_r.scatter([t for t in tta if t is not None], [y for y, t in zip(ys, tta) if t is not None],
                     color="tab:orange", zorder=3, label="flip-TTA")
    for y, r in zip(ys, runs):
        ax_r.text(r["acc"], y, f"{r['acc']:.4f} ", va="center", ha="right", color="white", fontsize=8)
    lo = min(r["acc"] for r in runs)
    ax_r.set(yticks=list(ys), yticklabels=[r["name"] for r in runs], xlim=(lo - 0.02, max(lo + 0.05, max(
        max(r["acc"], r["acc_tta"] or 0) for r in runs) + 0.01)), xlabel="test accuracy", title="result")
    ax_r.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    p.add_argument("--out", type=Path, default=Path("compare.png"))
    args = p.parse_args(argv)
    plot([load_run(r) for r in args.runs], args.out)


if __name__ == "__main__":
    main()

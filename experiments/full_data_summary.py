"""Table and figure of full-data runs recorded in a JSON file (docs/gpu/gpu-h200-full-data.json):
every run's settings, LR bounds and test accuracy, grouped by configuration with the mean over seeds.

    python experiments/full_data_summary.py docs/gpu/gpu-h200-full-data.json --out docs/figures/gpu_full_data.png
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt


def config_name(r: dict) -> str:
    parts = [f"wd {r['wd']:g}"]
    if r["label_smoothing"]: parts.append(f"ls {r['label_smoothing']:g}")
    if r["wd_bn_bias"]: parts.append("decay on BN")
    if r["lr_source"] == "given": parts.append(f"LRMAX {r['lr_max']:g}")
    return ", ".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_json")
    ap.add_argument("--out", help="figure file (png)")
    a = ap.parse_args()
    d = json.loads(Path(a.runs_json).read_text())
    groups = defaultdict(list)
    for name, r in d["runs"].items(): groups[config_name(r)].append((name, r))
    print(f"{d['device']}\n{d['data']}\n")
    print("| configuration | run | seed | LRMAX (source) | train acc | test acc | flip-TTA | "
          "wall s (concurrent runs) |")
    print("|---|---|---|---|---|---|---|---|")
    order = sorted(groups, key=lambda g: statistics.mean(r["accuracy"] for _, r in groups[g]))
    for g in order:
        for name, r in sorted(groups[g], key=lambda x: x[1]["seed"]):
            print(f"| {g} | {name} | {r['seed']} | {r['lr_max']:.2g} ({r['lr_source']}) | {r['train_accuracy']:.4f} | "
                  f"{r['accuracy']:.4f} | {r['accuracy_tta']:.4f} | {r['seconds']:.0f} ({r['concurrent_runs']}) |")
    print("\n| configuration | seeds | mean test acc | mean flip-TTA |\n|---|---|---|---|")
    for g in order:
        rs = [r for _, r in groups[g]]
        print(f"| {g} | {len(rs)} | {statistics.mean(r['accuracy'] for r in rs):.4f} | "
              f"{statistics.mean(r['accuracy_tta'] for r in rs):.4f} |")
    if a.out:
        fig, ax = plt.subplots(figsize=(8, 0.42 * len(order) + 1.2))
        for i, g in enumerate(order):
            rs = [r for _, r in groups[g]]
            ax.scatter([100 * r["accuracy"] for r in rs], [i] * len(rs), color="C0", label="test" if i == 0 else None)
            ax.scatter([100 * r["accuracy_tta"] for r in rs], [i] * len(rs), color="C1", marker="x",
                       label="flip-TTA" if i == 0 else None)
            ax.plot([100 * statistics.mean(r["accuracy"] for r in rs)] * 2, [i - 0.3, i + 0.3], color="C0")
        ax.set_yticks(range(len(order)), order)
        ax.axvline(90, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("test accuracy, % (10,000 images; bar: mean over seeds)")
        ax.set_title("Full data, full width, 24 epochs, one run per dot", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(a.out, dpi=110)
        print(f"\nfigure: {a.out}")


if __name__ == "__main__":
    main()

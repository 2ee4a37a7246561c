"""Table and figure of full-data runs recorded in a JSON file (docs/gpu/gpu-h200-full-data.json):
every run's settings, LR bounds and test accuracy, grouped by configuration with the mean over seeds.

    python experiments/full_data_summary.py docs/gpu/gpu-h200-full-data.json --out docs/figures/gpu_full_data.png

The runs of experiments/gpu_runs.txt are named `CONFIG-sSEED`: `--by name` groups them by CONFIG, and
`--epochs-out FILE` draws the epoch budget (the runs named `default` and `epochsN`: accuracy against epochs).
"""
from __future__ import annotations

import argparse
import json
import re
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


def run_group(name: str) -> str: return re.sub(r"-s\d+$", "", name)  # gpu_runs.txt's names: CONFIG-sSEED


def spread(xs: list[float]) -> float: return max(xs) - min(xs)


def acc(x: float | None) -> str: return "-" if x is None else f"{x:.4f}"  # a run without that TTA


def mean(rs: list[dict], key: str) -> float | None:
    "The mean of `key` over runs, or None unless every run has it."
    xs = [r.get(key) for r in rs]
    return None if None in xs else statistics.mean(xs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_json")
    ap.add_argument("--out", help="figure file (png)")
    ap.add_argument("--by", choices=("settings", "name"), default="settings",
                    help="group runs by their wd/smoothing/LR settings (section 7) or by name without -sSEED")
    ap.add_argument("--epochs-out", help="epoch-budget figure file (png): runs named default and epochsN")
    a = ap.parse_args(argv)
    d = json.loads(Path(a.runs_json).read_text())
    groups = defaultdict(list)
    for name, r in d["runs"].items(): groups[run_group(name) if a.by == "name" else config_name(r)].append((name, r))
    print(f"{d['device']}\n{d['data']}\n")
    print("| configuration | run | seed | LRMAX (source) | train acc | test acc | flip-TTA | "
          "wall s (concurrent runs) |")
    print("|---|---|---|---|---|---|---|---|")
    order = sorted(groups, key=lambda g: statistics.mean(r["accuracy"] for _, r in groups[g]))
    for g in order:
        for name, r in sorted(groups[g], key=lambda x: x[1]["seed"]):
            print(f"| {g} | {name} | {r['seed']} | {r['lr_max']:.2g} ({r['lr_source']}) | {acc(r['train_accuracy'])} | "
                  f"{acc(r['accuracy'])} | {acc(r['accuracy_tta'])} | {r['seconds']:.0f} "
                  f"({r.get('concurrent_runs', '?')}) |")
    print("\n| configuration | seeds | mean test acc (spread) | mean flip-TTA | mean multi-crop TTA |")
    print("|---|---|---|---|---|")
    for g in order:
        rs = [r for _, r in groups[g]]
        print(f"| {g} | {len(rs)} | {mean(rs, 'accuracy'):.4f} ({spread([r['accuracy'] for r in rs]):.4f}) | "
              f"{acc(mean(rs, 'accuracy_tta'))} | {acc(mean(rs, 'accuracy_tta_crops'))} |")
    if a.out:
        fig, ax = plt.subplots(figsize=(8, 0.42 * len(order) + 1.2))
        for i, g in enumerate(order):
            rs = [r for _, r in groups[g]]
            ax.scatter([100 * r["accuracy"] for r in rs], [i] * len(rs), color="C0", label="test" if i == 0 else None)
            tta = [100 * r["accuracy_tta"] for r in rs if r.get("accuracy_tta") is not None]
            ax.scatter(tta, [i] * len(tta), color="C1", marker="x", label="flip-TTA" if i == 0 else None)
            ax.plot([100 * statistics.mean(r["accuracy"] for r in rs)] * 2, [i - 0.3, i + 0.3], color="C0")
        ax.set_yticks(range(len(order)), order)
        ax.axvline(90, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("test accuracy, % (10,000 images; bar: mean over seeds)")
        ax.set_title("Full data, full width, 24 epochs, one run per dot", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(a.out, dpi=110)
        print(f"\nfigure: {a.out}")
    if a.epochs_out: epoch_budget(groups, d["device"], a.epochs_out)


def epoch_budget(groups: dict, device: str, out: str) -> None:
    "Test accuracy against the number of epochs (the default recipe, peak at 5/24 of them): one dot a seed."
    runs = [r for g, rs in groups.items() if g == "default" or re.fullmatch(r"epochs\d+", g) for _, r in rs]
    by_epochs = defaultdict(list)
    for r in runs: by_epochs[r["epochs"]].append(r)
    es = sorted(by_epochs)
    print("\n| epochs | seeds | mean test acc (spread) | mean flip-TTA | mean wall s |\n|---|---|---|---|---|")
    for e in es:
        rs = by_epochs[e]
        print(f"| {e} | {len(rs)} | {mean(rs, 'accuracy'):.4f} ({spread([r['accuracy'] for r in rs]):.4f}) | "
              f"{acc(mean(rs, 'accuracy_tta'))} | {mean(rs, 'seconds'):.0f} |")
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, colour, label in (("accuracy", "C0", "test"), ("accuracy_tta", "C1", "flip-TTA")):
        if any(mean(by_epochs[e], key) is None for e in es): continue
        for e in es: ax.scatter([e] * len(by_epochs[e]), [100 * r[key] for r in by_epochs[e]], color=colour, s=14)
        ax.plot(es, [100 * statistics.mean(r[key] for r in by_epochs[e]) for e in es], color=colour, label=label)
    ax.set_xticks(es)
    ax.set_xlabel("epochs (LR peak at 5/24 of them)")
    ax.set_ylabel("test accuracy, % (10,000 images)")
    ax.set_title(f"Epoch budget of the default recipe, full data and width\n{device}; dots: seeds, line: mean",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"\nfigure: {out}")


if __name__ == "__main__":
    main()

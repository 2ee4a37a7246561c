"""Finished run folders into one JSON of the shape docs/gpu/gpu-h200-full-data.json has (what
experiments/full_data_summary.py reads): each run's settings, LR bounds, test accuracy and curves.

    python experiments/collect_runs.py RUNS_DIR --device "NVIDIA H200" --out runs.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fastresnet.config import load_settings


def run_record(d: Path) -> dict:
    r = load_settings(d / "settings.ini")
    final, info = json.loads((d / "final.json").read_text()), json.loads((d / "run.json").read_text())
    bounds, history = json.loads((d / "lr_bounds.json").read_text()), json.loads((d / "metrics.json").read_text())
    return {**dataclasses.asdict(r), "lr_max": bounds["lr_max"], "lr_min": bounds["lr_min"],
            "lr_source": bounds["rule"],
            "accuracy": final["accuracy"], "accuracy_tta": final.get("accuracy_tta"),
            "accuracy_tta_crops": final.get("accuracy_tta_crops"), "recipe": info.get("recipe"),
            "train_accuracy": history[-1].get("train_accuracy"), "final_train_loss": history[-1]["train_loss"],
            "seconds": info.get("seconds"), "torch": info.get("torch"), "history": history}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir")
    ap.add_argument("--device", default="unknown")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    runs, failed = {}, {}
    for d in sorted(p for p in Path(a.runs_dir).iterdir() if p.is_dir()):
        if (d / "final.json").is_file(): runs[d.name] = run_record(d)
        else: failed[d.name] = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else []
    Path(a.out).write_text(json.dumps({"device": a.device, "data": "see the agenda's command", "runs": runs,
                                       "unfinished": failed}, indent=1))
    for name, r in runs.items():
        print(f"{name}: {r['accuracy']:.4f} (flip-TTA {r['accuracy_tta']}), LRMAX {r['lr_max']:.3g}, {r['seconds']} s")
    if failed: print(f"unfinished (see their .log): {', '.join(failed)}")


if __name__ == "__main__":
    main()

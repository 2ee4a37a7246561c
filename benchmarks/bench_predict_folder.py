"""`fastresnet predict FOLDER --csv` on a large folder: `--n` generated 32x32 PNGs (100,000 by default) in ten
sub-folders. Predicts one sub-folder, then the whole folder, each as its own process (the command as users run
it), sampling the process's resident memory; reports time per 1,000 images at both sizes (linear growth: equal
figures), the peak resident memory at both sizes (bounded: equal figures), and checks the CSV has every row.

    python benchmarks/bench_predict_folder.py            # ~10 min on 2 cores; an untrained full-width model
    python benchmarks/bench_predict_folder.py --n 20000 --model runs/X/model.safetensors
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import OtherLoad, add_machine_args, header, rss_mb, untrained_model, wait_for_idle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n: int, parts: int = 10) -> list[Path]:
    "`n` distinct random 32x32 PNGs in `parts` sub-folders."
    rng = np.random.default_rng(0)
    subs = [root / f"part{i}" for i in range(parts)]
    for i in range(n):
        d = subs[i % parts]
        if i < parts: d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:06d}.png")
    return subs


def predict(folder: Path, model: Path, out: Path) -> dict:
    "One `fastresnet predict` process: seconds, peak resident memory (sampled and the kernel's high-water mark), rows."
    cmd = [sys.executable, "-m", "fastresnet.cli", "predict", str(folder), "--model", str(model), "--csv", str(out)]
    t0, peak, hwm = time.perf_counter(), 0.0, 0.0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    samples = []
    while proc.poll() is None:
        try:
            rss, hwm = rss_mb(proc.pid), rss_mb(proc.pid, "VmHWM")
            samples.append((time.perf_counter() - t0, rss))
            peak = max(peak, rss)
        except (OSError, StopIteration): pass
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode: raise SystemExit(f"predict failed ({proc.returncode}): {err[-2000:]}")
    with open(out, newline="") as f: rows = sum(1 for _ in csv.reader(f)) - 1
    late = [r for t, r in samples if t > seconds / 2]  # the second half: steady state
    return {"seconds": seconds, "rows": rows, "peak_rss_mb": max(peak, hwm), "rss_mb_second_half_max": max(late or [0]),
            "rss_mb_second_half_min": min(late or [0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="images in all (ten sub-folders of n/10)")
    ap.add_argument("--model", help="model file or run folder (default: an untrained full-width model)")
    ap.add_argument("--json", help="also write the figures here")
    add_machine_args(ap)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as work:
        work = Path(work)
        t = time.perf_counter()
        subs = make_folder(work / "images", a.n)
        made = time.perf_counter() - t
        model = Path(a.model) if a.model else untrained_model(work)
        condition = wait_for_idle(a)
        other = OtherLoad()
        small = predict(subs[0], model, work / "part0.csv")
        big = predict(work / "images", model, work / "all.csv")
    n_small = len(range(0, a.n, 10))
    res = {"n_small": n_small, "n": a.n, "small": small, "all": big, "generation_s": made}
    print(header("fastresnet predict on a large folder", condition))
    print(f"model: {a.model or 'untrained full-width (random weights)'}; {a.n:,} generated 32x32 PNGs "
          f"({made:.0f} s to write); each size a `fastresnet predict DIR --csv` process")
    for name, n, r in (("one sub-folder", n_small, small), ("all", a.n, big)):
        print(f"{name}: {n:,} images in {r['seconds']:.1f} s = {1000 * r['seconds'] / n:.2f} s per 1,000 "
              f"({n / r['seconds']:.0f} images/s); CSV rows {r['rows']:,} (expected {n:,}); peak resident memory "
              f"{r['peak_rss_mb']:.0f} MB (second half of the run: {r['rss_mb_second_half_min']:.0f}-"
              f"{r['rss_mb_second_half_max']:.0f} MB)")
    ratio = (big["seconds"] / a.n) / (small["seconds"] / n_small)
    marginal = (big["seconds"] - small["seconds"]) / (a.n - n_small)  # start-up (imports, model) cancels out
    res["marginal_s_per_1000"] = 1000 * marginal
    print(f"time per image, all / one sub-folder: {ratio:.2f} (1.00 = linear; the fixed start-up cost counts more "
          f"in the smaller run); the extra {a.n - n_small:,} images took {1000 * marginal:.2f} s per 1,000; peak "
          f"memory, all / one sub-folder: {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}")
    print(other.report())
    if a.json: Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Every figure the README and docs/usage.md quote from a record, computed from that record and looked up in the
text: a run folder in docs/runs, the GPU runs in docs/gpu, a command's output in docs/records. A record that
changes turns this red (and `tests/test_docs.py` with it) instead of leaving the docs stale.

    python experiments/doc_figures.py        # one line per figure; exit 1 if a doc does not say what its record does
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_RUNS = json.loads((ROOT / "docs/gpu/gpu-h200-full-data.json").read_text())["runs"]


def run(name: str, file: str = "final.json"):
    "A file of a committed run folder, docs/runs/NAME/."
    return json.loads((ROOT / "docs/runs" / name / file).read_text())


def hours(name: str) -> float: return run(name, "run.json")["seconds"] / 3600  # wall time, all sessions


def acc(x: float) -> str: return f"{x:.4f}"


def pct(x: float, digits: int = 1) -> str: return f"{100 * x:.{digits}f}"


def seeds(*names: str) -> tuple[float, float, float]:
    "Mean plain accuracy, spread (max - min) and mean flip-TTA accuracy of runs of one configuration."
    plain = [run(n)["accuracy"] for n in names]
    return statistics.mean(plain), max(plain) - min(plain), statistics.mean(run(n)["accuracy_tta"] for n in names)


def gpu(name: str) -> dict: return GPU_RUNS[name]


def gpu_config(run_name: str) -> str: return re.sub(r"-s\d+$", "", run_name)


def gpu_spread() -> float:
    "The largest spread between seeds of one configuration among the GPU runs."
    by = {}
    for name, r in GPU_RUNS.items(): by.setdefault(gpu_config(name), []).append(r["accuracy"])
    return max(max(a) - min(a) for a in by.values() if len(a) > 1)


def tta_gains() -> tuple[float, float]:
    gains = [r["accuracy_tta"] - r["accuracy"] for r in GPU_RUNS.values()]
    return min(gains), max(gains)


def first_run() -> dict:
    "The README's first command, as docs/records/first-run.txt recorded it: its wall seconds and test accuracy."
    text = (ROOT / "docs/records/first-run.txt").read_text()
    return {"seconds": int(re.search(r"^wall: (\d+) s", text, re.M).group(1)),
            "accuracy": float(re.search(r"Test accuracy ([0-9.]+)", text).group(1))}


def digits() -> tuple[float, int]:
    "The handwritten-digits test's accuracy and seconds, as docs/records/digits.txt recorded its printed line."
    text = (ROOT / "docs/records/digits.txt").read_text()
    m = re.search(r"digits: ([0-9.]+) on \d+ held-out images in (\d+) s", text)
    return float(m.group(1)), int(m.group(2))


def suite_minutes() -> int:
    "The README's test command as docs/records/test-suite.txt recorded it (pytest's closing line), in minutes."
    text = (ROOT / "docs/records/test-suite.txt").read_text()
    return round(float(re.search(r" in ([0-9.]+)s", text).group(1)) / 60)


def claims():
    "(document, what, the text it must hold) for every figure quoted from a record."
    m, s, t = seeds("default-bf16-s42", "default-bf16-s1")
    r42, r1 = run("default-bf16-s42"), run("default-bf16-s1")
    fp32 = [gpu("wd0.8-ls0.1"), gpu("wd0.8-ls0.1-s1")]
    old = [gpu("default-s42"), gpu("default-s1"), gpu("default-s2")]
    lo, hi = tta_gains()
    first = first_run()
    yield "README.md", "headline: default, official data, bf16, two seeds", f"{pct(m)}% on the official CIFAR-10"
    yield "README.md", "headline: its flip-TTA mean", f"({pct(t)}% with flip-TTA"
    yield "README.md", "headline: the fp32 GPU pair on the JPEG copy", \
        f"{pct(statistics.mean(r['accuracy'] for r in fp32))}% in fp32 on a JPEG copy"
    yield "README.md", "results: seed 42 and seed 1", (
        f"{acc(r42['accuracy'])} ({acc(r42['accuracy_tta'])}; multi-crop {acc(r42['accuracy_tta_crops'])}) / "
        f"{acc(r1['accuracy'])} ({acc(r1['accuracy_tta'])}; multi-crop {acc(r1['accuracy_tta_crops'])})")
    yield "README.md", "results: their mean and spread", f"mean {acc(m)}, spread {acc(s)} (flip-TTA {acc(t)})"
    for name in ("adam-933", "page-sgd"):
        r = run(f"{name}-bf16-s42")
        yield "README.md", f"results: {name}", f"{name} {acc(r['accuracy'])} ({acc(r['accuracy_tta'])})"
    yield "README.md", "results: the fp32 GPU pair", " / ".join(
        f"{acc(r['accuracy'])} ({acc(r['accuracy_tta'])})" for r in fp32)
    yield "README.md", "results: the previous defaults, three seeds", (
        " / ".join(acc(r["accuracy"]) for r in old) + " (" + " / ".join(acc(r["accuracy_tta"]) for r in old) + ")")
    secs = [r["seconds"] for r in GPU_RUNS.values() if r["call"] == "call1"]  # alone on the GPU, three at a time
    yield "README.md", "time: a whole run on one H200", f"{min(secs):.0f}–{max(secs):.0f} s on one H200"
    xeon = sorted(hours(n) for n in ("default-bf16-s42", "default-bf16-s1"))
    yield "README.md", "time: the AMX Xeon (default runs)", \
        f"{xeon[0]:.1f}–{xeon[-1]:.1f} hours on a 2-core Intel Xeon"
    zen4 = hours("adam-933-bf16-s42")  # another recipe, the same arithmetic a step
    yield "README.md", "time: the Zen 4 (adam-933)", f"{zen4:.1f} hours on a 2-core AMD"
    yield "README.md", "the first command: wall time", f"in {first['seconds']} s on"
    yield "README.md", "the first command: accuracy", f"({pct(first['accuracy'])}%)"
    yield "README.md", "the test suite", f"about {suite_minutes()} min on"
    d_acc, d_s = digits()
    yield "docs/usage.md", "own images: the digits", f"reached **{pct(d_acc)}%** on the held-out split"
    yield "docs/usage.md", "own images: the digits' time", f"in {d_s} s on a 2-core"
    yield "docs/usage.md", "the seed spread of the GPU runs", f"up to {pct(gpu_spread(), 2)} points"
    yield "docs/usage.md", "flip-TTA's gain over the 19 GPU runs", f"+{pct(lo, 2)} to +{pct(hi, 2)} points"
    yield "docs/experiments.md", "flip-TTA's gain over the 19 GPU runs", f"+{pct(lo, 2)} to +{pct(hi, 2)} points"
    jpeg = run("default-bf16-jpeg-s42")
    yield "docs/usage.md", "precision on the JPEG copy: bf16 (one seed)", f"bf16 {pct(jpeg['accuracy'], 2)} (1)"
    yield "docs/usage.md", "precision on the JPEG copy: the fp32 pair", \
        f"fp32 {pct(statistics.mean(r['accuracy'] for r in fp32), 2)} (2)"


def main() -> int:
    texts, bad = {}, 0
    for doc, what, text in claims():
        body = texts.setdefault(doc, " ".join((ROOT / doc).read_text().split()))  # line breaks as spaces
        ok = text in body
        bad += not ok
        print(f"{'ok ' if ok else 'NOT'} {doc}: {what}: {text!r}")
    print(f"{bad} figure(s) differ from their record" if bad else "every figure matches its record")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

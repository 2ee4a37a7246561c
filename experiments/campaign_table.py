"""The CPU campaign's table (issue 34), regenerated from the committed run folders docs/runs/NAME/ and written
between the markers of docs/experiments.md; no figure in it is typed by hand.

    python experiments/campaign_table.py docs/runs --into docs/experiments.md [--figure docs/figures/campaign.png]

Runs are named CONFIG-bf16-sSEED (experiments/cpu_runs.txt); a configuration's mean is over its seeds, shown
with the sample standard deviation and min-max; its spread is max - min. The reference is the fp32 GPU pair of the
default (docs/gpu/gpu-h200-full-data.json, JPEG copy).
A difference of means counts only beyond the larger of the two seed spreads (the brief: smaller is not a result).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from collect_runs import run_record  # noqa: E402  (one reader of a run folder)

BEGIN = "<!-- campaign table: experiments/campaign_table.py, do not edit by hand -->"
END = "<!-- end campaign table -->"
ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "docs/gpu/gpu-h200-full-data.json:wd0.8-ls0.1,wd0.8-ls0.1-s1"  # the default's fp32 GPU pair (section 7)
DATA = {"cifar-10-batches-py": "official", "cifar10-jpeg": "JPEG q75"}


def config(name: str) -> str: return re.sub(r"-s\d+$", "", name)


def pct(x: float | None) -> str: return "-" if x is None else f"{100 * x:.2f}"


def mean(xs: list) -> float | None: return None if not xs or None in xs else statistics.mean(xs)


def spread(xs: list[float]) -> float: return max(xs) - min(xs)


def epoch_hours(r: dict) -> float:
    """The run's hours as the sum of its epochs' times (metrics.json's `time`, fastai's m:ss or h:mm:ss): the same
    measure for a run in one session and one resumed across several, where run.json's `seconds` counted only the
    last session before fastresnet carried the clock over in the checkpoint. run.json's figure without the times."""
    times = [row.get("time") for row in r["history"]]
    if not times or None in times: return r["seconds"] / 3600
    return sum(sum(int(x) * 60 ** i for i, x in enumerate(reversed(t.split(":")))) for t in times) / 3600


def cpus(d: Path) -> str:
    "The CPU model(s) of the run's starts and resumes (cpu.txt: `DATE TIME start|resume MODEL (FLAGS)`)."
    lines = (d / "cpu.txt").read_text().split("\n") if (d / "cpu.txt").is_file() else []
    return "; ".join(dict.fromkeys(" ".join(ln.split()[3:]) for ln in lines if ln.strip())) or "?"


def load(runs_dir: Path) -> dict[str, dict]:
    out = {}
    for d in sorted(p for p in runs_dir.glob("*") if (p / "final.json").is_file()):
        r, info = run_record(d), json.loads((d / "run.json").read_text())
        r["data_name"] = DATA.get(Path(info.get("data") or "").name, info.get("data"))
        r["cpu"] = cpus(d)
        out[d.name] = r
    return out


def load_reference(spec: str) -> tuple[str, list[dict]]:
    "`FILE:RUN,RUN` (FILE from the repo's root unless absolute) as a label and the runs' records."
    file, names = spec.rsplit(":", 1)
    runs = json.loads((ROOT / file).read_text())["runs"]
    return f"reference: the default in fp32 on the JPEG copy, GPU ({names.replace(',', ', ')} in {file})", \
        [runs[n] for n in names.split(",")]


def table(runs: dict[str, dict], reference: tuple[str, list[dict]] | None = None) -> str:
    rows = ["| run | seed | data | precision | epochs | LRMAX (source) | LRMIN | train acc % (last epoch, augmented) | "
            "test acc % | flip-TTA % | multi-crop % | hours (sum of epochs) | CPU |", "|---" * 13 + "|"]
    for name, r in runs.items():
        rows.append(f"| {name} | {r['seed']} | {r['data_name']} | {r['precision']} | {r['epochs']} | {r['lr_max']:.3g} "
                    f"({r['lr_source']}) | {r['lr_min']:.3g} | {pct(r['train_accuracy'])} | {pct(r['accuracy'])} | "
                    f"{pct(r['accuracy_tta'])} | {pct(r['accuracy_tta_crops'])} | {epoch_hours(r):.2f} | "
                    f"{r['cpu']} |")
    groups: dict[str, list[dict]] = {}
    for name, r in runs.items(): groups.setdefault(config(name), []).append(r)
    if reference: groups[reference[0]] = reference[1]
    rows += ["", "| configuration | seeds | mean test % ± sd (min-max) | mean flip-TTA % | mean multi-crop % |",
             "|---|---|---|---|---|"]
    for g, rs in sorted(groups.items(), key=lambda kv: -statistics.mean(r["accuracy"] for r in kv[1])):
        acc = [r["accuracy"] for r in rs]
        tta, crops = mean([r.get("accuracy_tta") for r in rs]), mean([r.get("accuracy_tta_crops") for r in rs])
        sd = pct(statistics.stdev(acc) if len(acc) > 1 else None)  # the sample standard deviation
        rows.append(f"| {g} | {len(rs)} | {pct(mean(acc))} ± {sd} ({pct(min(acc))}-{pct(max(acc))}) | {pct(tta)} | "
                    f"{pct(crops)} |")
    base = groups.get("default-bf16")
    rows.append("")
    if not base or len(base) < 2:
        rows.append("Comparisons need two seeds of `default-bf16`; until then no difference is read off this table.")
        return "\n".join(rows)
    for g, rs in groups.items():
        if g == "default-bf16" or len(rs) < 2: continue
        d = mean([r["accuracy"] for r in base]) - mean([r["accuracy"] for r in rs])
        s = max(spread([r["accuracy"] for r in base]), spread([r["accuracy"] for r in rs]))
        verdict = "beyond the spread" if abs(d) > s else "within the spread: not a result"
        rows.append(f"- default-bf16 minus {g}: {100 * d:+.2f} points, larger seed spread {100 * s:.2f}: {verdict}.")
    return "\n".join(rows)


def figure(runs: dict[str, dict], out: str) -> None:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, r) in enumerate(runs.items()):
        ep = [h for h in r["history"] if h.get("valid_accuracy") is not None]  # valid = the test set
        ax.plot([h["epoch"] + 1 for h in ep], [100 * h["valid_accuracy"] for h in ep], label=name, color=f"C{i % 10}")
    ax.axhline(90, color="grey", lw=0.8, ls="--")
    ax.set_ylim(40, 96)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy, % (10,000 images)")
    ax.set_title("CPU campaign: full width, all 50,000 training images, 24 epochs", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir")
    ap.add_argument("--into", help="markdown file whose campaign markers the table replaces (else: printed)")
    ap.add_argument("--figure", help="per-epoch test accuracy of every run (png)")
    ap.add_argument("--reference", default=REFERENCE, help="FILE:RUN,RUN of a runs JSON (docs/gpu) to compare with; "
                    "'' for none (default: %(default)s)")
    a = ap.parse_args(argv)
    runs = load(Path(a.runs_dir))
    text = table(runs, load_reference(a.reference) if a.reference else None)
    if a.figure and runs:
        figure(runs, a.figure)
        text += f"\n\n![per-epoch test accuracy]({os.path.relpath(a.figure, Path(a.into).parent)})" if a.into else ""
    if not a.into:
        print(text)
        return
    doc = Path(a.into).read_text()
    if BEGIN not in doc: sys.exit(f"campaign_table: {a.into} has no line `{BEGIN}` (and `{END}` after it): add them "
                                  "where the table belongs.")
    head, rest = doc.split(BEGIN, 1)
    Path(a.into).write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")
    print(f"campaign_table: {len(runs)} runs into {a.into}")


if __name__ == "__main__":
    main()

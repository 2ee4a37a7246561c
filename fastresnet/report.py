"""Pictures of a run, for people who would rather look than read: the LR finder curve with the
chosen bounds, the schedule as applied, loss/accuracy curves, the confusion matrix, the top-loss
test images and a batch of augmented training images, gathered in `report.md`."""
from __future__ import annotations

from pathlib import Path


import matplotlib.pyplot as plt
import numpy as np
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner

from .run import FINAL, LR_BOUNDS, LR_FIND, METRICS_JSON, RUN, SCHEDULE, SETTINGS, read_json_or_none

__all__ = ["plot_lr_find", "plot_schedule", "plot_metrics", "plot_confusion", "plot_top_losses", "plot_augmented",
           "write_report", "make_report", "PLOTS"]

PLOTS = {"lr_find.png": "LR range test", "schedule.png": "Schedule applied per batch",
         "metrics.png": "Loss and accuracy per epoch", "confusion.png": "Confusion matrix (test set)",
         "top_losses.png": "Test images with the highest loss", "augmented.png": "Augmented training images"}


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_lr_find(run_dir: Path) -> Path | None:
    "Loss against LR (log scale) with fastai's suggestions and the chosen LRMIN/LRMAX marked."
    d, b = read_json_or_none(run_dir / LR_FIND), read_json_or_none(run_dir / LR_BOUNDS)
    if d is None: return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(d["lrs"], d["losses"], lw=1.5)
    ax.set_xscale("log"); ax.set_xlabel("learning rate"); ax.set_ylabel("smoothed training loss")
    finite = [x for x in d["losses"] if x == x]
    if finite: ax.set_ylim(min(finite) * 0.95, finite[0] * 1.5)  # the divergence spike would flatten the curve
    for (name, lr), c in zip(d["suggestions"].items(), ["tab:green", "tab:red", "tab:purple", "tab:brown"]):
        if lr == lr: ax.axvline(lr, color=c, ls=":", lw=1, label=f"{name} {lr:.3g}")  # lr == lr: not NaN
    if b:
        ax.axvline(b["lr_max"], color="k", lw=2, label=f"LRMAX {b['lr_max']:.3g}")
        ax.axvline(b["lr_min"], color="gray", lw=2, label=f"LRMIN {b['lr_min']:.3g}")
    ax.legend(fontsize=8); ax.set_title("LR range test")
    return _save(fig, run_dir / "lr_find.png")


def plot_schedule(run_dir: Path) -> Path | None:
    "LR and Adam beta1 per training batch, exactly as the optimizer used them."
    h = read_json_or_none(run_dir / SCHEDULE)
    if not h or not h.get("lr"): return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(h["lr"], color="tab:blue"); ax.set_xlabel("batch"); ax.set_ylabel("LR", color="tab:blue")
    if h.get("mom"):
        ax2 = ax.twinx(); ax2.plot(h["mom"], color="tab:orange"); ax2.set_ylabel("Adam beta1", color="tab:orange")
    ax.set_title("One cycle: LRMIN → LRMAX at the peak epoch → LRMIN", pad=14)  # clear of the axis offset
    return _save(fig, run_dir / "schedule.png")


def plot_metrics(run_dir: Path) -> Path | None:
    "Train vs test loss and accuracy per epoch: the gap between them is the overfitting signal."
    hist = read_json_or_none(run_dir / METRICS_JSON)
    if not hist: return None
    ep = [r["epoch"] + 1 for r in hist]
    col = lambda k: [np.nan if r.get(k) is None else r[k] for r in hist]  # None: a skipped test pass
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(ep, col("train_loss"), "o-", label="train (augmented, smoothed)")
    a1.plot(ep, col("valid_loss"), "o-", label="test")
    a1.set_xlabel("epoch"); a1.set_ylabel("cross-entropy"); a1.legend(); a1.set_title("loss")
    a2.plot(ep, col("train_accuracy"), "o-", label="train (augmented)")
    a2.plot(ep, col("valid_accuracy"), "o-", label="test")
    a2.set_xlabel("epoch"); a2.set_ylabel("accuracy"); a2.legend(); a2.set_title("accuracy")
    return _save(fig, run_dir / "metrics.png")


def plot_confusion(run_dir: Path) -> Path | None:
    f = read_json_or_none(run_dir / FINAL)
    if not f: return None
    cm, vocab = np.array(f["confusion"]), f["vocab"]
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(vocab)), vocab, rotation=90); ax.set_yticks(range(len(vocab)), vocab)
    ax.set_xlabel("predicted"); ax.set_ylabel("actual")
    for i in range(len(vocab)):
        for j in range(len(vocab)):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(f"Confusion matrix, accuracy {f['accuracy']:.4f}")
    return _save(fig, run_dir / "confusion.png")


def plot_top_losses(learn: Learner, losses, run_dir: Path, k: int = 9) -> Path:
    "fastai's own top-loss grid (prediction / actual / loss / probability) from already computed losses."
    interp = ClassificationInterpretation(learn, learn.dls.valid, losses)
    with learn.no_bar(): interp.plot_top_losses(min(k, len(losses)), figsize=(10, 12))
    fig = plt.gcf()
    for ax in fig.axes: ax.title.set_fontsize(8)  # four title lines a tile: small enough not to reach the row above
    fig.tight_layout()
    return _save(fig, run_dir / "top_losses.png")


def plot_augmented(learn: Learner, run_dir: Path, n: int = 16) -> Path:
    "A training batch as the model sees it: crops, flips and Cutout holes (mean colour) visible."
    learn.dls.train.show_batch(max_n=n, figsize=(8, 8))
    return _save(plt.gcf(), run_dir / "augmented.png")


def write_report(run_dir: Path) -> Path:
    "report.md: the final numbers, the settings and every picture the run folder has."
    info, f, b = read_json_or_none(run_dir / RUN) or {}, read_json_or_none(run_dir / FINAL), read_json_or_none(run_dir / LR_BOUNDS)
    hist = read_json_or_none(run_dir / METRICS_JSON) or []
    lines = [f"# Run report: {run_dir.name}", ""]
    if f:
        tta = f" (flip-TTA {f['accuracy_tta']:.4f})" if "accuracy_tta" in f else ""
        lines += [f"**Test accuracy {f['accuracy']:.4f}**{tta} on "
                  f"{f['n_images']} test images, after {len(hist)} epochs.", ""]
    lines += [f"- data: `{info.get('data')}`" + (f", subset {info['subset']}" if info.get("subset") else "") +
              f" ({info.get('n_train')} train / {info.get('n_valid')} test images)",
              f"- wall time: {info.get('seconds', 'n/a')} s on {info.get('device')} ({info.get('machine', '')})"]
    if b: lines.append(f"- LR bounds: LRMIN {b['lr_min']:.4g}, LRMAX {b['lr_max']:.4g} (rule: {b['rule']}, "
                       f"suggestion {b['suggestion']:.4g})")
    lines.append("")
    if f:
        lines += ["| class | accuracy |", "|---|---|"] + [f"| {c} | {v:.3f} |" for c, v in f["per_class"].items()] + [""]
    for name, title in PLOTS.items():
        if (run_dir / name).exists(): lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if (run_dir / SETTINGS).exists():
        lines += ["## Settings", "", "```ini", (run_dir / SETTINGS).read_text().strip(), "```", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return run_dir / "report.md"


def make_report(run_dir: str | Path, learn: Learner | None = None, losses=None) -> Path:
    """All plots and report.md. Plots that need the model and data (top losses, augmented batch)
    are made when `learn` (with data) is given; the rest come from the run folder's files alone."""
    run_dir = Path(run_dir)
    for f in (plot_lr_find, plot_schedule, plot_metrics, plot_confusion): f(run_dir)
    if learn is not None:
        if losses is not None: plot_top_losses(learn, losses, run_dir)
        plot_augmented(learn, run_dir)
    return write_report(run_dir)

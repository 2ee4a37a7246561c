"""Pictures of a run, for people who would rather look than read: the LR finder curve with the
chosen bounds, the schedule as applied, loss/accuracy curves, the confusion matrix, the top-loss
test images and a batch of augmented training images, gathered in `report.md`."""
from __future__ import annotations

from pathlib import Path


import matplotlib.pyplot as plt
import numpy as np
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner

from .folder import (FINAL, LR_BOUNDS, LR_FIND, METRICS_JSON, PLOTS, REPORT, RUN_JSON, SCHEDULE, SETTINGS, atomic_write,
                     read_json_or_none, run_data)

__all__ = ["plot_lr_find", "plot_schedule", "plot_metrics", "plot_confusion", "plot_top_losses", "plot_augmented",
           "chance_note", "write_report", "make_report"]



def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90, bbox_inches="tight"))
    plt.close(fig)
    return path


def plot_lr_find(run_dir: Path) -> Path | None:
    "Loss against LR (log scale) with the range test's points and the chosen LRMIN/LRMAX marked."
    curve, bounds = read_json_or_none(run_dir / LR_FIND), read_json_or_none(run_dir / LR_BOUNDS)
    if curve is None:
        return None  # LRMAX was given: no range test ran
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(curve["lrs"], curve["losses"], lw=1.5)
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed training loss", title="LR range test")
    finite = [x for x in curve["losses"] if x == x]
    if finite:
        ax.set_ylim(min(finite) * 0.95, finite[0] * 1.5)  # the divergence spike would flatten the curve
    colours = ["tab:olive", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for (name, lr), colour in zip(curve["suggestions"].items(), colours):
        if lr == lr:
            ax.axvline(lr, color=colour, ls=":", lw=1, label=f"{name} {lr:.3g}")  # lr == lr: not NaN
    if bounds:
        ax.axvline(bounds["lr_max"], color="k", lw=2, label=f"LRMAX {bounds['lr_max']:.3g}")
        ax.axvline(bounds["lr_min"], color="gray", lw=2, label=f"LRMIN {bounds['lr_min']:.3g}")
    ax.legend(fontsize=8)
    return _save(fig, run_dir / "lr_find.png")


def plot_schedule(run_dir: Path) -> Path | None:
    "LR and beta1 (Adam; momentum for SGD) per training batch, exactly as the optimizer used them."
    hps = read_json_or_none(run_dir / SCHEDULE)
    if not hps or not hps.get("lr"):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(hps["lr"], color="tab:blue")
    ax.set_xlabel("batch")
    ax.set_ylabel("LR", color="tab:blue")
    if hps.get("mom"):
        beta1_ax = ax.twinx()
        beta1_ax.plot(hps["mom"], color="tab:orange")
        beta1_ax.set_ylabel("beta1 (SGD: momentum)", color="tab:orange")
    ax.set_title("One cycle: LRMIN → LRMAX at the peak epoch → LRMIN", pad=14)  # clear of the axis offset
    return _save(fig, run_dir / "schedule.png")


def plot_metrics(run_dir: Path) -> Path | None:
    "Train vs test loss and accuracy per epoch: the gap between them is the overfitting signal."
    history = read_json_or_none(run_dir / METRICS_JSON)
    if not history:
        return None
    epochs = [row["epoch"] + 1 for row in history]
    def column(key):
        return [np.nan if row.get(key) is None else row[key] for row in history]  # None: no test pass
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, column("train_loss"), "o-", label="train (augmented; the training loss)")
    loss_ax.plot(epochs, column("valid_loss"), "o-", label="test (plain cross-entropy)")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.plot(epochs, column("train_accuracy"), "o-", label="train (augmented)")
    acc_ax.plot(epochs, column("valid_accuracy"), "o-", label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.legend()
    return _save(fig, run_dir / "metrics.png")


MAX_GRID = 20  # classes up to which the confusion plot prints its counts


def top_confusions(final: dict, k: int = 10) -> list[tuple[str, str, int]]:
    "The `k` most frequent (actual, predicted, images) mistakes of a test pass, most frequent first."
    counts, vocab = np.array(final["confusion"]), final["vocab"]
    np.fill_diagonal(counts, 0)
    order = np.argsort(-counts, axis=None, kind="stable")[:k]
    return [(vocab[i], vocab[j], int(counts[i, j])) for i, j in zip(*np.unravel_index(order, counts.shape))
            if counts[i, j] > 0]


def chance_note(final: dict, n_train: int | None = None, epochs: int | None = None) -> str | None:
    """A warning when a test pass learned nothing usable: accuracy within 5 points of guessing (1 / classes), or one
    class predicted for more than 90% of the images. None otherwise."""
    counts, vocab = np.array(final["confusion"]), final["vocab"]
    k, n, acc = len(vocab), counts.sum(), final["accuracy"]
    top = int(counts.sum(0).argmax())
    one_class = k > 1 and counts[:, top].sum() > 0.9 * n
    if acc >= 1 / k + 0.05 and not one_class:
        return None
    what = (f"predicts {vocab[top]!r} for {counts[:, top].sum() / n:.0%} of the test images" if one_class else
            f"is at chance (guessing gives {1 / k:.1%})")
    size = f" ({n_train} training images, {epochs} epochs)" if n_train and epochs else ""
    return (f"The model {what}: test accuracy {acc:.1%}. It has not learned the task yet{size}. Likely causes: too "
            "few epochs or images for the model to generalise (a smoke run; the recipe is 24 epochs on 50,000); "
            "BatchNorm's running statistics, which the test pass uses, not yet settled on tiny data (a few batches "
            "an epoch); or an LR too high for the data (look at lr_find.png, or give a smaller --lr-max).")


def plot_confusion(run_dir: Path) -> Path | None:
    final = read_json_or_none(run_dir / FINAL)
    if not final:
        return None
    counts, vocab = np.array(final["confusion"]), final["vocab"]
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(vocab)), vocab, rotation=90)
    ax.set_yticks(range(len(vocab)), vocab)
    ax.set(xlabel="predicted", ylabel="actual", title=f"Confusion matrix, accuracy {final['accuracy']:.4f}")
    if len(vocab) > MAX_GRID:  # a hundred classes: the picture of the grid, its counts in report.md's list
        ax.tick_params(labelsize=max(3, 200 // len(vocab)))
        return _save(fig, run_dir / "confusion.png")
    for i in range(len(vocab)):
        for j in range(len(vocab)):
            ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                    color="white" if counts[i, j] > counts.max() / 2 else "black")
    return _save(fig, run_dir / "confusion.png")


def plot_top_losses(learn: Learner, losses, run_dir: Path, k: int = 9) -> Path:
    "fastai's own top-loss grid (prediction / actual / loss / probability) from already computed losses."
    interp = ClassificationInterpretation(learn, learn.dls.valid, losses)
    with learn.no_bar():
        interp.plot_top_losses(min(k, len(losses)), figsize=(10, 12))
    fig = plt.gcf()
    for ax in fig.axes:
        ax.title.set_fontsize(8)  # four title lines a tile: small enough not to reach the row above
    fig.tight_layout()
    return _save(fig, run_dir / "top_losses.png")


def plot_augmented(learn: Learner, run_dir: Path, n: int = 16) -> Path:
    "A training batch as the model sees it: crops, flips and Cutout holes (mean colour) visible."
    learn.dls.train.show_batch(max_n=n, figsize=(8, 8))
    return _save(plt.gcf(), run_dir / "augmented.png")


def _cell(text: str) -> str:
    "A name (a class folder's, the run's) as one Markdown table cell: line breaks and `|` shown, not obeyed."
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")


def write_report(run_dir: Path) -> Path:
    "report.md: the final numbers, the settings and every picture the run folder has."
    info, final = read_json_or_none(run_dir / RUN_JSON) or {}, read_json_or_none(run_dir / FINAL)
    bounds, history = read_json_or_none(run_dir / LR_BOUNDS), read_json_or_none(run_dir / METRICS_JSON) or []
    lines = [f"# Run report: {_cell(run_dir.name)}", ""]
    if final:
        tta = f" (flip-TTA {final['accuracy_tta']:.4f})" if "accuracy_tta" in final else ""
        lines += [f"**Test accuracy {final['accuracy']:.4f}**{tta} on "
                  f"{final['n_images']} test images, after {len(history)} epochs.", ""]
        note = chance_note(final, info.get("n_train"), len(history))
        if note:
            lines += [f"> **Warning.** {note}", ""]
    subset = f", subset {info['subset']}" if info.get("subset") else ""
    data = run_data(info)
    data = f"`{_cell(data)}`" if data else "CIFAR-10, downloaded by fastai"
    lines += [f"- data: {data}{subset} ({info.get('n_train')} train / {info.get('n_valid')} test images)",
              f"- wall time: {info.get('seconds', 'n/a')} s on {info.get('device')} ({info.get('machine', '')})"]
    if bounds:
        lines.append(f"- LR bounds: LRMIN {bounds['lr_min']:.4g}, LRMAX {bounds['lr_max']:.4g} "
                     f"(rule: {bounds['rule']})")
    lines.append("")
    if final:
        lines += ["| class | accuracy |", "|---|---|"]
        lines += [f"| {_cell(c)} | {v:.3f} |" for c, v in final["per_class"].items()] + [""]
        mistakes = top_confusions(final)
        if mistakes:
            lines += ["## Most frequent confusions", "", "| actual | predicted as | images |", "|---|---|---|"]
            lines += [f"| {_cell(a)} | {_cell(b)} | {n} |" for a, b, n in mistakes] + [""]
    for name, title in PLOTS.items():
        if (run_dir / name).exists():
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if (run_dir / SETTINGS).exists():
        lines += ["## Settings", "", "```ini", (run_dir / SETTINGS).read_text().strip(), "```", ""]
    atomic_write(run_dir / REPORT, lambda f: f.write("\n".join(lines).encode()))
    return run_dir / REPORT


def make_report(run_dir: str | Path, learn: Learner | None = None, losses=None) -> Path:
    """All plots and report.md. Plots that need the model and data (top losses, augmented batch)
    are made when `learn` (with data) is given; the rest come from the run folder's files alone."""
    run_dir = Path(run_dir)
    for f in (plot_lr_find, plot_schedule, plot_metrics, plot_confusion):
        f(run_dir)
    if learn is not None:
        if losses is not None:
            plot_top_losses(learn, losses, run_dir)
        plot_augmented(learn, run_dir)
    return write_report(run_dir)

"""`fastresnet` console script: train, lr-find, evaluate, predict, serve, export, report, summary.

Every recipe flag is a `Recipe` field (`--peak-epoch` for `peak_epoch`, `--tta/--no-tta` for a switch);
flags override `--settings FILE`, which overrides the defaults. Errors the user can fix print one
paragraph and exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

from .config import Recipe, UserError, ini_value, parse_setting, peak_for  # stdlib only: --help stays instant

__all__ = ["main", "build_parser"]

class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, **k):  # no silent prefix-matching: `--epoch` is an error, not `--epochs`
        super().__init__(*a, **{"allow_abbrev": False, **k})


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="PATH", help="train/ and test/ (or valid/) of class folders (fastai's CIFAR-10 "
                   "layout), or class folders alone (split by --valid-pct), or the python archive `cifar-10-batches-py`"
                   "; or a CSV of file names and classes beside the images (fastai's from_csv: header row, file,class"
                   "[,is_valid]); or cifar10 / cifar100: download with fastai's untar_data (default: cifar10)")
    p.add_argument("--subset", type=_count, metavar="N", help="train on N images (N divided by the class count from "
                   "each class; for smoke runs)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _count(raw: str) -> int:
    "argparse type of a count: digits only (Python's int() also reads `2_0` as 20), at least 1."
    if not raw.strip().isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number >= 1")
    return int(raw)


def _setting_type(f):
    "argparse type for one Recipe field: the settings file's parser, its message kept."
    def convert(raw: str):
        try:
            return parse_setting(f, raw, _flag(f.name))
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = str(f.type).split(" ")[0]  # `float | None`: a float, or auto
    return convert


def _add_recipe(p: argparse.ArgumentParser, command: str = "train") -> None:
    "One flag per `Recipe` field the command uses, with the field's help, default and range."
    g = p.add_argument_group("recipe (flags override --settings; defaults: fastresnet/settings.ini)")
    g.add_argument("--recipe", metavar="NAME_OR_FILE", help="a shipped recipe (default, page-sgd, seed, adam-933: "
                   "fastresnet/recipes/) or a settings file, over the defaults")
    g.add_argument("--settings", metavar="FILE", help="a settings file like fastresnet/settings.ini (over --recipe)")
    for f in fields(Recipe):
        md, default = f.metadata, getattr(Recipe(), f.name)
        if command == "lr-find" and not md["lr_find"]:
            continue
        rng = f", one of {', '.join(md['choices'])}" if "choices" in md else ""
        rng += f", at least {md['min']:,}" if "min" in md else ""
        rng += f", above {md['above']:g}" if "above" in md else ""
        rng += f", at most {md['max']:,}" if "max" in md else ""
        help = f"{md['help']} (default {ini_value(default)}{rng})"
        help = help.replace("%", "%%")  # argparse formats help with `%`: a literal one is doubled
        if f.type in ("bool", bool):
            g.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            g.add_argument(_flag(f.name), dest=f.name, type=_setting_type(f), default=None, help=help,
                           metavar=_setting_type(f).__name__.upper())


MODEL_HELP = ("model.safetensors of a run (weights only, safe) or the run folder; a run's model.pkl is read from the "
              "model.safetensors beside it; any other pickle only with --allow-pickle")
PICKLE_HELP = ("also read a model given as a pickle (model.pkl): unpickling runs the code the file holds, so only "
               "for files you trust")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="fastresnet", description="Train and use the fastresnet CIFAR-10 recipe.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="LR range test → one cycle → evaluation → export, into a run folder")
    _add_data(t)
    _add_recipe(t)
    t.add_argument("--out", metavar="DIR", help="run folder (default: runs/<date-time>)")
    t.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run folder")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch")
    t.add_argument("--init", metavar="RUN_OR_WEIGHTS", help="fine-tune a trained model (its run folder, "
                   "model.safetensors or model.pkl) on --data: its body, a new head for the data's classes, then "
                   "fastai's fine_tune (--freeze-epochs of the head alone, then --epochs of the whole net)")
    t.add_argument("--allow-pickle", action="store_true", default=None, help="--init: " + PICKLE_HELP)

    f = sub.add_parser("lr-find", help="run the LR range test alone and print the bounds it gives")
    _add_data(f)
    _add_recipe(f, "lr-find")
    f.add_argument("--out", metavar="DIR", help="folder for lr_find.json (default: runs/lr-find-<date-time>)")

    e = sub.add_parser("evaluate", help="test accuracy (and flip-TTA), per class, confusion matrix of a model")
    e.add_argument("--model", required=True, metavar="FILE_OR_RUN", help=MODEL_HELP)
    e.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    e.add_argument("--data", metavar="PATH", help="CIFAR-10 folder (as for train); its test split is used")
    e.add_argument("--json", action="store_true", help="print the full result as JSON")
    e.add_argument("--tta-crops", action="store_true", help="also multi-crop TTA: one-pixel diagonal shifts x mirror, "
                   "six test passes (3x flip-TTA's time)")

    pr = sub.add_parser("predict", help="class and probability for image files, or every image under folders")
    pr.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                    help="image files and/or folders (searched recursively)")
    pr.add_argument("--csv", metavar="FILE", help="write path, class, probability and the top 3 to FILE (with a "
                    "progress bar) instead of printing one line per image")
    pr.add_argument("--model", required=True, metavar="FILE_OR_RUN", help=MODEL_HELP)
    pr.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    sv = sub.add_parser("serve", help="a Gradio page that classifies uploaded images (needs the [serve] extra)")
    sv.add_argument("--model", required=True, metavar="FILE_OR_RUN", help=MODEL_HELP)
    sv.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                    "0.0.0.0 serves everyone who can reach this machine, with no password)")
    sv.add_argument("--port", type=_count, default=7860, help="port (default 7860)")
    sv.add_argument("--max-queue", type=_count, metavar="N", help="requests that may wait while one is "
                    "answered (default 64); beyond that a client is told the queue is full and to try again")
    sv.add_argument("--examples", metavar="DIR", help="folder of example images for the page (default: one test "
                    "image per class from the run's data, else generated pictures)")
    ex = sub.add_parser("export", help="the model as an ONNX file for onnxruntime alone, and/or a folder for the "
                        "Hugging Face Hub (model card, weights, config.json); ONNX needs the [export] extra")
    ex.add_argument("model", metavar="RUN_OR_WEIGHTS", help="a finished run folder, its model.safetensors, or a "
                    "folder --hub wrote (no pickle is read unless --allow-pickle)")
    ex.add_argument("--onnx", nargs="?", const=True, metavar="FILE", help="write an ONNX file: uint8 RGB images "
                    "(batch, size, size, 3), 0-255, in; class probabilities and logits out; normalisation inside, "
                    "class names in its metadata (default FILE: model.onnx beside the weights; with --hub, in DIR)")
    ex.add_argument("--hub", metavar="DIR", help="write the folder a Hugging Face model repository holds: README.md "
                    "(a model card with the run's figures), model.safetensors, config.json, and model.onnx with "
                    "--onnx; upload it with `hf upload YOUR_NAME/REPO_NAME DIR`")
    ex.add_argument("--overwrite", action="store_true", help="--hub: replace a folder an earlier export wrote")
    ex.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    rp = sub.add_parser("report", help="regenerate a run folder's plots and report.md without retraining")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.add_argument("--data", metavar="PATH", help="data for the top-loss and augmentation plots "
                    "(default: the run's own; without data those two plots are skipped)")

    sm = sub.add_parser("summary", help="layers, output shapes and parameter counts of the model (a batch of one "
                        "image per class)")
    which = sm.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="FILE_OR_RUN", help="a trained model's network (its width and classes): "
                       + MODEL_HELP)
    sm.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    which.add_argument("--width", type=float, default=1.0, help="channel-width multiplier of a new network "
                       "(default 1.0), for CIFAR-10's 10 classes")
    return ap


def recipe_from_args(a: argparse.Namespace) -> Recipe:
    "The defaults, then --settings FILE, then the flags; says where a new length moved the peak."
    from .config import load_settings, recipe_file
    base = load_settings(recipe_file(a.recipe)) if a.recipe else Recipe()
    if a.settings:
        base = load_settings(a.settings, base)
    changes = {f.name: getattr(a, f.name) for f in fields(Recipe) if getattr(a, f.name, None) is not None}
    r = base.replace(**changes)
    fine_tune = getattr(a, "init", None)  # fastai's fine_tune schedule has no peak epoch
    moved = r.peak_epoch != Recipe().peak_epoch and r.peak_epoch == peak_for(r.epochs)  # by the rule, not by hand
    if moved and "peak_epoch" not in changes and not fine_tune:  # a flag's or a settings file's epochs
        print(f"note: {r.epochs} epochs: the LR peaks at the end of epoch {r.peak_epoch} (5/24 of training, as "
              "epoch 5 of 24; --peak-epoch to choose).", file=sys.stderr)
    return r


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_train(a) -> int:
    from .train import run
    if a.resume:
        given = [_flag(k) for k, v in vars(a).items() if v is not None and k not in ("command", "resume", "data")]
        if given:
            raise UserError(f"--resume continues a run with the settings it started with; {', '.join(given)} would "
                            "change it. Drop them, or start a new run with --out (only --data may be given, if the "
                            "data moved).")
        return _run_interruptible(lambda: run(None, a.resume, a.data, resume=True), Path(a.resume))
    r = recipe_from_args(a)
    a.out = a.out or f"runs/{_stamp()}"  # named here, so that what stops the run can say where it is
    def new_run():
        return run(r, a.out, a.data, a.subset, a.overwrite, init=a.init,
                   recipe_name=a.recipe or "default", allow_pickle=bool(a.allow_pickle))
    return _run_interruptible(new_run, Path(a.out))


def _kept(run_dir: Path) -> str | None:
    "What a stopped run left in `run_dir`, as a sentence that ends in its resume command; None: nothing yet."
    from .folder import CHECKPOINT, RUN_JSON
    if (run_dir / CHECKPOINT).is_file():
        from .resume import load_checkpoint
        try:
            epoch = f"epoch {load_checkpoint(run_dir / CHECKPOINT)['epoch'] + 1}"
        except Exception:
            epoch = "the last completed epoch"  # the message must not fail: resume says what is wrong
        what = f"the checkpoint of {epoch} is saved; continue with"
    elif (run_dir / RUN_JSON).is_file():
        what = "no epoch had completed; start the run again with its settings:"
    else:
        return None
    return f"{what} fastresnet train --resume {run_dir}"


def _run_interruptible(fn, run_dir: Path) -> int:
    "Ctrl-C or SIGTERM (`main` makes it one) leaves the last epoch's checkpoint and a resume hint."
    try:
        fn()
        return 0
    except KeyboardInterrupt:
        print(f"\nInterrupted: {_kept(run_dir) or 'nothing was written yet; run the same command again.'}",
              file=sys.stderr)
        return 130


def _full_disk(a, e: BaseException) -> UserError | None:
    """A full disk, wherever it struck (the one place that handles it): which disk, how much the file needed,
    what the command left intact and how to go on. None if `e` is not a full disk."""
    from .folder import disk_full_error, is_disk_full
    folder = Path(getattr(a, "resume", None) or getattr(a, "out", None) or ".")  # train's run folder, lr-find's
    if not is_disk_full(e, folder):
        return None
    full = e if getattr(e, "disk_full", False) else disk_full_error(folder / "x", what=f"into {folder}")
    kept = _kept(folder) if a.command == "train" else None
    if kept:
        after = f"The files written before are intact: {kept}, once there is space."
    elif getattr(a, "csv", None):
        after = f"Nothing was written to {a.csv}; free space or give --csv a path on another disk."
    else:
        after = "Free space there and run the same command again."
    return UserError(f"{full.message} {after}")


def cmd_lr_find(a) -> int:
    from .train import lr_find_run
    r = recipe_from_args(a)
    out = Path(a.out or f"runs/lr-find-{_stamp()}")
    b = lr_find_run(r, out, a.data, a.subset)
    print(f"LR bounds: {b.describe()}\nlr_find curve: {out/'lr_find.json'}")
    print(f"Reuse them with: fastresnet train --lr-max {b.lr_max:.4g} --lr-min {b.lr_min:.4g} ...")
    return 0


def cmd_evaluate(a) -> int:
    from .data import load_arrays
    from .inference import evaluate_learner, labelled_dl
    from .learner import load_model
    learn = load_model(a.model, a.allow_pickle)
    r = getattr(learn, "recipe", None) or Recipe()
    data = load_arrays(a.data, r.valid_pct, r.seed, r.size)  # class folders alone: the split the model was tested on
    if list(data.vocab) != list(learn.dls.vocab):
        raise UserError(f"The data's classes {data.vocab} differ from the model's {list(learn.dls.vocab)}.")
    quiet = a.json or not sys.stdout.isatty()  # JSON, a file or a pipe: the results alone, no bar fragments
    with learn.no_bar() if quiet else contextlib.nullcontext():
        res, _ = evaluate_learner(learn, labelled_dl(learn, data), tta=True, crops=a.tta_crops)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    crops = f"   with multi-crop TTA: {res['accuracy_tta_crops']:.4f}" if a.tta_crops else ""
    print(f"Test accuracy: {res['accuracy']:.4f}   with flip-TTA: {res['accuracy_tta']:.4f}{crops}   "
          f"({res['n_images']} images)")
    print("Per class: " + ", ".join(f"{c} {v:.3f}" for c, v in res["per_class"].items()))
    from .report import MAX_GRID, top_confusions
    if len(res["vocab"]) > MAX_GRID:  # a grid of a hundred columns reads as noise: the mistakes that matter
        print("Most frequent confusions (actual → predicted: images): " +
              ", ".join(f"{a} → {b}: {n}" for a, b, n in top_confusions(res)))
        return 0
    w = max(len(c) for c in res["vocab"])
    print("Confusion matrix (rows: actual, columns: predicted):")
    print(" " * (w + 1) + " ".join(f"{c[:5]:>5}" for c in res["vocab"]))
    for c, row in zip(res["vocab"], res["confusion"]):
        print(f"{c:>{w}} " + " ".join(f"{v:5d}" for v in row))
    return 0


def cmd_predict(a) -> int:
    from .inference import image_files, iter_predictions
    from .learner import load_model
    files = image_files(a.images)
    learn = load_model(a.model, a.allow_pickle)
    rows = iter_predictions(learn, files)
    skipped = 0
    try:
        with learn.no_bar():
            if a.csv:
                skipped = _predictions_to_csv(rows, Path(a.csv), len(files))
            else:
                for row in rows:
                    if "error" in row:
                        skipped += 1
                        print(f"skipped: {row['error']}", file=sys.stderr)
                        continue
                    print(f"{row['file']}\t{row['class']}\t{row['probability']:.4f}", flush=True)
                    for n in row["notes"]:
                        print(f"  note: {n}", file=sys.stderr)
    except KeyboardInterrupt:  # the CSV writer has said where its rows are; printed rows are on the screen
        if not a.csv:
            print("\nInterrupted.", file=sys.stderr)
        return 130
    return 1 if skipped else 0


CSV_COLUMNS = ["path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"]


def _predictions_to_csv(rows, path: Path, n: int) -> int:
    """Write rows as they come to PATH.partial (a progress bar on a terminal), rename it to PATH at the end; an
    interruption leaves the rows done so far in PATH.partial. Returns how many files were skipped."""
    import csv
    from fastprogress.fastprogress import progress_bar
    if path.is_dir():
        raise UserError(f"--csv {path} is a folder; give a file name, e.g. {path}/predictions.csv.")
    partial, skipped, done = path.with_name(path.name + ".partial"), [], 0
    try:
        with open(partial, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for row in (progress_bar(rows, total=n) if sys.stdout.isatty() else rows):
                if "error" in row:
                    skipped.append(row["error"])
                    continue
                w.writerow([row["file"]] + [x for c, p in row["top"] for x in (c, f"{p:.4f}")])
                done += 1
    except FileNotFoundError:
        raise UserError(f"--csv {path}: the folder {path.parent} does not exist.") from None
    except OSError:  # a full disk or another failed write: no half-written file is left
        size = partial.stat().st_size if partial.exists() else 0
        partial.unlink(missing_ok=True)
        from .folder import disk_full_error, is_disk_full
        if is_disk_full(sys.exc_info()[1]):
            raise disk_full_error(path, size * n // done if done else None) from None
        raise
    except KeyboardInterrupt:
        print(f"\nInterrupted: the {done} predictions made so far are in {partial}.", file=sys.stderr)
        raise
    partial.replace(path)
    for e in skipped:
        print(f"skipped: {e}", file=sys.stderr)
    print(f"{done} predictions written to {path}" + (f"; {len(skipped)} file(s) skipped (the `skipped:` lines)."
                                                     if skipped else "."), flush=True)
    return len(skipped)


def cmd_serve(a) -> int:
    from .serve import MAX_QUEUE, gradio, serve
    try:
        gradio()
    except ImportError:
        print('fastresnet: error: `fastresnet serve` needs Gradio, an optional extra: pip install "fastresnet[serve]" '
              '(in a clone: pip install -e ".[serve]"; or pip install gradio).', file=sys.stderr)
        return 2
    if not 0 < a.port < 65536:
        raise UserError(f"--port {a.port} is not a port number (1-65535).")
    try:
        serve(a.model, a.host, a.port, a.examples, a.max_queue or MAX_QUEUE, a.allow_pickle)
    except OSError as e:  # Gradio's "Cannot find empty port", an address this machine does not have, ...
        print(f"fastresnet: error: cannot serve on {a.host}:{a.port}: {str(e).splitlines()[0]} "
              "(another --port or --host)", file=sys.stderr)
        return 2
    return 0


def cmd_export(a) -> int:
    from .export import MODEL_ONNX, require_onnx
    if not a.onnx and not a.hub:
        raise UserError("Nothing to export: give --onnx (an ONNX file), --hub DIR (a Hugging Face model folder), or "
                        "both.")
    if a.hub and isinstance(a.onnx, str):
        raise UserError(f"With --hub, the ONNX file goes into {a.hub} as {MODEL_ONNX}: give --onnx without a file.")
    if a.onnx:
        require_onnx()  # before the model loads: a missing extra is said at once
    from .export import export_onnx, write_hub
    from .learner import load_model, model_file
    learn, weights = load_model(a.model, a.allow_pickle), model_file(a.model)
    if a.hub:
        names = write_hub(learn, weights, Path(a.hub), onnx=bool(a.onnx), overwrite=a.overwrite)
        print(f"Hub folder {a.hub}: {', '.join(names)}. Upload it with: hf upload YOUR_NAME/REPO_NAME {a.hub}")
        return 0
    path = export_onnx(learn, a.onnx if isinstance(a.onnx, str) else weights.parent / MODEL_ONNX)
    print(f"ONNX file {path}: onnxruntime alone runs it (README.md, 'Take the model elsewhere').")
    return 0


def cmd_report(a) -> int:
    from .folder import RUN_JSON
    from .inference import evaluate_learner
    from .report import make_report
    from .train import learner_for_run
    if not (Path(a.run_dir) / RUN_JSON).is_file():
        raise UserError(f"{a.run_dir} is not a fastresnet run folder (no run.json).")
    learn = losses = None
    try:
        learn = learner_for_run(a.run_dir, a.data)
        with learn.no_bar() if not sys.stdout.isatty() else contextlib.nullcontext():  # a file or a pipe: no bar
            _, losses = evaluate_learner(learn, tta=False)
    except Exception as e:  # no data here, no weights yet: the file-based plots still come out
        print(f"note: top-loss and augmentation plots skipped ({e})", file=sys.stderr)
    print(f"Report: {make_report(a.run_dir, learn, losses)}")
    return 0


def cmd_summary(a) -> int:
    from .data import CIFAR_CLASSES
    from .inference import image_size
    from .learner import load_model, stub_learner
    vocab, r = CIFAR_CLASSES, Recipe(width=a.width)
    if a.model:
        from .device import unwrap
        src = load_model(a.model, a.allow_pickle)
        vocab, r = list(src.dls.vocab), Recipe(width=unwrap(src.model).width, size=image_size(src))
    learn = stub_learner(vocab, r.replace(channels_last=False))
    with learn.no_bar():
        print(learn.summary())
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"fastresnet: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    old = signal.signal(signal.SIGTERM, _raise_interrupt)  # a service manager's or `kill`'s stop is a Ctrl-C
    try:
        with warnings.catch_warnings():  # fastai/torch deprecation chatter is not for our users; ours reads as one line
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*load_learner` uses Python's insecure pickle.*")
            warnings.showwarning = _show_warning
            commands = {"train": cmd_train, "lr-find": cmd_lr_find, "evaluate": cmd_evaluate, "predict": cmd_predict,
                        "serve": cmd_serve, "export": cmd_export, "report": cmd_report, "summary": cmd_summary}
            try:
                return commands[a.command](a)
            except Exception as e:  # every error of ours: a message in the library's terms, flag advice as `hint`
                e = _full_disk(a, e) or e
                if not isinstance(e, UserError):
                    raise
                print(f"fastresnet: error: {e.message}" + (f" {e.hint}" if e.hint else ""), file=sys.stderr)
                return 2
    except KeyboardInterrupt:  # e.g. Ctrl-C while the libraries are still importing
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())

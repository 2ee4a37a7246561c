"""One training run as nanoGPT's train.py runs one: resolve the start once (scratch | resume | fine-tune), then one
fit and one finish, everything written into the run's folder (in a distributed run, rank 0's writes alone: folder.py).
A resume is the same path given the folder's checkpoint: same settings, weights, optimizer, schedule position and
random streams, so the result equals an uninterrupted run's."""
from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastai.learner import Learner
from fastai.torch_core import default_device

from . import __version__
from . import distributed as dist
from .callbacks import EMA, StopOnNaN, ValidEvery, plain_output
from .config import Recipe, UserError, load_settings, recipe_to_ini
from .folder import (CHECKPOINT, FINAL, LR_BOUNDS, LR_FIND, METRICS_JSON, MODEL_PKL, RUN_JSON, SETTINGS, SPLIT, WEIGHTS,
                     atomic_export, prepare_run_dir, read_json, read_json_or_none, run_data, run_lock, set_status,
                     start_run_dir, write_json)
from .inference import evaluate_learner
from .learner import recipe_learner, load_weights, norm_stats, save_weights
from .report import chance_note, make_report
from .resume import MuteSkippedEpochs, RunCheckpoint, open_run, restore
from .schedule import LRBounds, find_bounds, range_test_batches

__all__ = ["run", "lr_find_run", "learner_for_run"]


@dataclass
class Start:
    "How a run begins, resolved once before any work (nanoGPT's `init_from`)."
    init_from: str                  # "scratch", "resume" (from its folder's checkpoint) or "finetune" (a new fine-tune)
    r: Recipe | None                # None: the packaged settings
    data: str | None
    subset: int | None
    init: str | None = None         # the trained model a fine-tune starts from (a resumed fine-tune's too)
    ck: dict | None = None          # a resume's checkpoint
    info: dict = field(default_factory=dict)  # run.json's facts (a resume's, from its folder)
    overwrite: bool = False         # a new run may replace the fastresnet run folder there
    precision_from: str = ""        # where the precision came from, for the log
    t0: float = 0.0                 # time.time() at the run's start, moved on by its earlier sessions' time


def run(r: Recipe | None, run_dir: str | Path, data: str | None = None, subset: int | None = None,
        overwrite: bool = False, resume: bool = False, extra_cbs=(), log=print, init: str | Path | None = None,
        recipe_name: str | None = None, allow_pickle: bool = False) -> dict:
    """A new run of recipe `r` into `run_dir`, or (`resume`) the rest of the run there. Returns the test results.
    `init`: a trained model (run folder, `.safetensors`, or `.pkl` with `allow_pickle`) to fine-tune (docs/usage.md).
    `recipe_name`: the shipped recipe or settings file `r` came from, for run.json."""
    run_dir = Path(run_dir).absolute()
    if not dist.is_main():
        log = _silent  # one voice in a distributed run (and one writer: folder.py)
    with run_lock(run_dir):  # one process a run folder
        try:
            start = _resume(run_dir, data, log) if resume else _new(r, data, subset, init, overwrite)
            learn = _begin(start, run_dir, recipe_name, allow_pickle, log)
            _fit(learn, start, run_dir, extra_cbs, log)
            res = {}
            if dist.is_main():  # rank 0 alone tests all the images, exports and reports
                with dist.alone():
                    res = _finish(learn, start, run_dir, log)
            dist.leave()
            return res
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into one): the record says so
            set_status(run_dir, "stopped")
            raise


def _silent(*args, **kwargs) -> None:
    pass


def _new(r: Recipe | None, data, subset, init, overwrite: bool) -> Start:
    "A new run: from scratch, or a fine-tune of `init`."
    auto = r is not None and r.precision == "auto"
    precision_from = " (auto: bf16 where this machine has it, else fp32)" if auto else ""
    init_from = "finetune" if init else "scratch"
    return Start(init_from, r, data, subset, init, overwrite=overwrite, precision_from=precision_from)


def _resume(run_dir: Path, data, log) -> Start:
    "The rest of the run in `run_dir`: its recipe, data and source model; from its checkpoint, or again from the start."
    r, info, ck = open_run(run_dir)
    data, subset, init = data or run_data(info), info.get("subset"), info.get("init")
    if ck is not None:
        return Start("resume", r, data, subset, init, ck, info, precision_from=" (the run folder's)")
    overwrite = _restart(run_dir, info, log)  # no epoch had completed
    return Start("finetune" if init else "scratch", r, data, subset, init, overwrite=overwrite)


def _begin(start: Start, run_dir: Path, recipe_name: str | None, allow_pickle: bool, log) -> Learner:
    "The checks, the run folder and the Learner: the machine can run the recipe, then the data is loaded."
    if dist.world_size() > 1:  # a distributed launch: Accelerate installed, and LRMAX given
        dist.require_accelerate()
        if start.r.lr_max is None:
            raise UserError("A distributed run needs LRMAX given: the LR range test is not split over processes.",
                            hint="Run `fastresnet lr-find` in one process first and pass --lr-max (and --lr-min).")
    if start.r is not None and start.r.tensorboard:
        from .tracking import TensorBoardLog  # noqa: F401  (its error now)
    resume = start.init_from == "resume"
    if not resume:
        prepare_run_dir(run_dir, start.overwrite)
    start.t0 = time.time() - ((start.ck or {}).get("seconds") or 0)  # a resumed run's clock goes on
    # a fine-tune's body, width and input scaling are its source's; a resume's input scaling is its folder's
    init = start.init if start.init_from == "finetune" else None
    stats = start.info.get("stats") if resume else None
    learn = recipe_learner(start.data, start.r, run_dir, start.subset, init=init, stats=stats,
                          allow_pickle=allow_pickle)
    log(f"Precision: {learn.recipe.precision}{start.precision_from}")  # `auto` resolved (a resume keeps it)
    if not resume:
        start.info = _start_folder(learn, run_dir, start, recipe_name)
    return learn


def _fit(learn: Learner, start: Start, run_dir: Path, extra_cbs, log) -> None:
    "The bounds (the range test, or the checkpoint's) and the fit: the recipe's one cycle, or fastai's fine_tune."
    r, fine_tune = learn.recipe, start.init is not None
    epochs = r.epochs + (r.freeze_epochs if fine_tune else 0)  # a fine-tune trains the new head alone first
    with plain_output(learn):
        if start.init_from == "resume":
            bounds, epoch = restore(learn, start.ck, run_dir, start.info, epochs)
        else:
            if fine_tune:
                learn.freeze()  # its range test trains the new head alone, as its fit starts
            bounds, epoch = _bounds(learn, r, run_dir, log), 0
        if epoch >= epochs:
            log(f"{run_dir} already finished all {epochs} epochs; evaluating and exporting.")
            return
        if epoch:
            log(f"Resuming {run_dir} at epoch {epoch + 1} of {epochs}.")
        if fine_tune:
            log(f"Fine-tuning {start.init}: {r.freeze_epochs} epoch(s) of the new head, then {r.epochs} of the whole "
                f"net (fastai's fine_tune), base LR = LRMAX = {bounds.lr_max:.3g} ({bounds.rule})")
        else:
            log(f"LR bounds: {bounds.describe()}")
        with dist.distrib_ctx(learn, r):
            cbs = _callbacks(learn, run_dir, epoch, start, extra_cbs)
            if fine_tune:
                learn.fine_tune_from(r.epochs, bounds.lr_max, r.freeze_epochs, epoch, cbs=cbs)
            else:
                learn.fit_one_cycle_peak(r.epochs, bounds.lr_min, bounds.lr_max, r.peak_epoch, cbs=cbs,
                                         lr_end=r.lr_end, start_epoch=epoch)


def _restart(run_dir: Path, info: dict, log) -> bool:
    "A resume of a run that has no checkpoint: started again from the beginning (True: over its folder), if it may."
    if info.get("status") == "finished":  # its checkpoint removed (keep_checkpoint = false)
        raise UserError(f"{run_dir} has finished and its checkpoint was removed (keep_checkpoint = false): there "
                        f"is nothing to resume. Its model is {run_dir / MODEL_PKL}; to train again, start a new "
                        f"run with another --out.")
    done = len(read_json_or_none(run_dir / METRICS_JSON) or [])
    if done:  # epochs had completed: the checkpoint was there, and was moved or deleted
        raise UserError(f"{run_dir} had completed {done} epoch(s), but its {CHECKPOINT} is gone (moved or deleted), "
                        "so there is nothing to continue from. Put the file back, or start the run again with "
                        f"fastresnet train --settings {run_dir / SETTINGS} --data DATA --out {run_dir} --overwrite.")
    log(f"{run_dir} stopped before its first epoch ended: starting it again from the beginning.")
    return True


def _start_folder(learn: Learner, run_dir: Path, start: Start, recipe_name: str | None) -> dict:
    "A new run's first files (settings.ini, run.json, split.json), put in place together; returns run.json's facts."
    r, split = learn.recipe, getattr(learn.dls, "valid_files", None)
    info = {"fastresnet": __version__, "torch": torch.__version__, "device": str(default_device()),
            "machine": platform.platform(), "data": _data_record(start.data), "subset": start.subset,
            "n_train": len(learn.dls.train_ds), "n_valid": len(learn.dls.valid_ds), "vocab": list(learn.dls.vocab),
            "stats": norm_stats(learn), "world_size": dist.world_size(), "status": "started"}
    if start.init:
        info["init"] = str(Path(start.init).resolve())
    if recipe_name and Path(recipe_name).suffix == ".ini":
        recipe_name = str(Path(recipe_name).resolve())  # a file
    if recipe_name:
        info["recipe"] = recipe_name
    files = {SETTINGS: recipe_to_ini(r), RUN_JSON: json.dumps(info, indent=2) + "\n"}
    if split is not None:  # the held-out files of a random split, so a resume can check it has the same ones
        files[SPLIT] = json.dumps({"valid_pct": r.valid_pct, "seed": r.seed, "valid": split}) + "\n"
    start_run_dir(run_dir, files)
    return info


def _callbacks(learn: Learner, run_dir: Path, epoch: int, start: Start, extra_cbs) -> list:
    "The fit's callbacks: the NaN stop, the per-epoch checkpoint (continued from a resume's), what the recipe asks for."
    r, ck, cbs, ema = learn.recipe, start.ck or {}, [StopOnNaN(), *extra_cbs], None
    if r.valid_every != 1:
        cbs.append(ValidEvery(r.valid_every))
    if r.ema and start.init is not None:
        warnings.warn("`ema` is not used when fine-tuning (--init): its two fits would each start a new average. "
                      "The last weights are tested and exported.")
    elif r.ema:
        ema = EMA(r.ema, r.ema_warmup, ck.get("ema"))
        cbs.append(ema)
    if r.tensorboard:
        from .tracking import TensorBoardLog
        cbs.append(TensorBoardLog(run_dir))  # rank 0's alone, as the folder's other writes
    history = ck["history"][:epoch] if ck else None
    cbs.append(RunCheckpoint(run_dir, history, ck.get("smooth_loss"), ck.get("hps"), clock=start.t0, ema=ema))
    if epoch:
        cbs.append(MuteSkippedEpochs())
    return cbs


def _data_record(data: str | None) -> str | None:
    "The data as run.json records it: a folder as an absolute path; a data set's name (cifar10, cifar100) as given."
    from .data import dataset_name
    return data if data is None or dataset_name(data) else str(Path(data).resolve())


def _bounds(learn: Learner, r: Recipe, run_dir: Path | None, log=print) -> LRBounds:
    "LRMIN/LRMAX as given, or from the LR range test on the training pipeline (its curve saved in the run folder)."
    if r.lr_max is not None:
        lr_min = r.lr_max / r.lr_min_div if r.lr_min is None else r.lr_min
        bounds = LRBounds(lr_min, r.lr_max, "given")
    else:
        n_batches = len(learn.dls.train)
        num_it = range_test_batches(r, n_batches)
        passes = num_it / max(1, n_batches)
        over = f" ({round(passes, 1):g} passes over the training images)"
        log(f"LR range test: {num_it} batches of {r.bs}, LR {r.lr_find_start:g} to {r.lr_find_end:g}{over}")
        try:
            bounds, found = find_bounds(learn, r)
        except ValueError as e:
            raise UserError(f"{e} Give LRMAX yourself to skip the range test.", hint="(--lr-max)") from None
        if run_dir is not None:
            curve = {"lrs": [float(x) for x in learn.recorder.lrs], "losses": [float(x) for x in learn.recorder.losses]}
            write_json(run_dir / LR_FIND, {**curve, "suggestions": found})
    if run_dir is not None:
        write_json(run_dir / LR_BOUNDS, bounds._asdict())
    return bounds


def lr_find_run(r: Recipe, out: str | Path, data: str | None = None, subset: int | None = None) -> LRBounds:
    "`fastresnet lr-find`: the run path's range test alone, its curve and bounds in `out`."
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    learn = recipe_learner(data, r, out, subset)
    with plain_output(learn):
        return _bounds(learn, r.replace(lr_max=None, lr_min=None), out, log=lambda *a: None)


def _finish(learn: Learner, start: Start, run_dir: Path, log) -> dict:
    "The test results, the exported learner and its weights, the run record and the report; returns the results."
    r = learn.recipe
    with plain_output(learn):
        res, losses = evaluate_learner(learn, tta=r.tta, crops=r.tta_crops)
    write_json(run_dir / FINAL, res)
    atomic_export(learn, run_dir / MODEL_PKL)  # outside plain_output: the learner goes out with fastai's own logger
    save_weights(learn, run_dir / WEIGHTS)
    info = {**start.info, "status": "finished", "seconds": round(time.time() - start.t0, 1),
            "accuracy": res["accuracy"], "accuracy_tta": res.get("accuracy_tta")}
    write_json(run_dir / RUN_JSON, info)
    make_report(run_dir, learn, losses)
    if not r.keep_checkpoint and (run_dir / CHECKPOINT).is_file():  # only now: the export is complete
        mb = (run_dir / CHECKPOINT).stat().st_size / 2**20
        (run_dir / CHECKPOINT).unlink()
        log(f"Removed {run_dir / CHECKPOINT} ({mb:.0f} MB; keep_checkpoint = false): the weights are in {WEIGHTS}.")
    tta = f" (flip-TTA {res['accuracy_tta']:.4f})" if "accuracy_tta" in res else ""
    if "accuracy_tta_crops" in res:
        tta += f" (multi-crop TTA {res['accuracy_tta_crops']:.4f})"
    log(f"Test accuracy {res['accuracy']:.4f}{tta} on {res['n_images']} images. Exported {run_dir / MODEL_PKL}")
    note = chance_note(res, info.get("n_train"), len(read_json_or_none(run_dir / METRICS_JSON) or []))
    if note:
        log(f"Warning: {note}")
    return res


def learner_for_run(run_dir: str | Path, data: str | None = None) -> Learner:
    "A finished run's model on its data (or `data`), rebuilt from safe files: settings + safetensors."
    run_dir = Path(run_dir).absolute()
    info = read_json(run_dir / RUN_JSON)
    learn = recipe_learner(data or run_data(info), load_settings(run_dir / SETTINGS), run_dir, info.get("subset"),
                          stats=info.get("stats"))
    load_weights(learn.model, run_dir / WEIGHTS)
    return learn



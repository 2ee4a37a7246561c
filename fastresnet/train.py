"""One training run, start to finish, in one path: LR range test → one cycle → evaluation → export,
everything written into the run's folder. `resume=True` is the same path given the folder's
checkpoint (nanoGPT's `init_from = 'resume'`): same settings, weights, optimizer, schedule position
and random streams, so the result equals an uninterrupted run's."""
from __future__ import annotations

import contextlib
import json
import platform
import time
import warnings
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
from .learner import cifar_learner, load_weights, norm_stats, save_weights
from .report import chance_note, make_report
from .resume import MuteSkippedEpochs, RunCheckpoint, open_run, restore
from .schedule import LRBounds, find_bounds

__all__ = ["run", "lr_find_run", "learner_for_run"]


def run(r: Recipe | None, run_dir: str | Path, data: str | None = None, subset: int | None = None,
        overwrite: bool = False, resume: bool = False, extra_cbs=(), log=print, init: str | Path | None = None,
        recipe: str | None = None, allow_pickle: bool = False) -> dict:
    """A new run of recipe `r` into `run_dir`, or (`resume`) the rest of the run there. Returns the test results.
    `init` (a trained model: run folder, `.safetensors` or `.pkl`) makes it a fine-tuning run: the model's body and
    a new head, LRMAX from the range test on the head alone, then fastai's `fine_tune` schedule (a `.pkl` only with
    `allow_pickle`). `recipe`: the name or file `r` came from, for run.json."""
    run_dir = Path(run_dir).absolute()
    with run_lock(run_dir) if dist.is_main() else contextlib.nullcontext():  # one process a run folder
        try: return _run(r, run_dir, data, subset, overwrite, resume, extra_cbs, log, init, recipe, allow_pickle)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into one): the record says so
            if dist.is_main(): set_status(run_dir, "stopped")
            raise


def _run(r, run_dir, data, subset, overwrite, resume, extra_cbs, log, init, recipe, allow_pickle) -> dict:
    auto = r is not None and r.precision == "auto"
    ck, info, why = None, {}, " (auto: bf16 where this machine has it, else fp32)" * auto
    if resume:  # the folder's recipe, data and source model, and its checkpoint (None: no epoch had completed)
        r, info, ck = open_run(run_dir)
        data, subset, init, why = data or run_data(info), info.get("subset"), info.get("init"), " (the run folder's)"
        if ck is None: overwrite, why = _restart(run_dir, info, log), ""
    init_from = "resume" if ck is not None else "finetune" if init else "scratch"  # the start, chosen once
    if dist.world_size() > 1:  # a distributed launch: Accelerate installed, and LRMAX given
        dist.require_accelerate()
        if not r.lr_max:
            raise UserError("A distributed run needs LRMAX given: the LR range test is not split over processes.",
                            hint="Run `fastresnet lr-find` in one process first and pass --lr-max (and --lr-min).")
    if r.tensorboard and dist.is_main(): from .tracking import TensorBoardLog  # noqa: F401  (none: one paragraph)
    if init_from != "resume" and dist.is_main(): prepare_run_dir(run_dir, overwrite)
    t0 = time.time() - ((ck or {}).get("seconds") or 0)  # a resumed run's clock goes on from its checkpoint
    # checks the machine can run `r`, then loads the data; a fine-tune's body, width and input scaling are its source's
    learn = cifar_learner(data, r, run_dir, subset, init=init if init_from == "finetune" else None,
                          stats=info.get("stats") if init_from == "resume" else None, allow_pickle=allow_pickle)
    r = learn.recipe  # `auto` precision resolved (the folder records it: a resume keeps it), a fine-tune's width
    epochs = r.epochs + (r.freeze_epochs if init else 0)  # a fine-tune trains the new head alone first
    if dist.is_main(): log(f"Precision: {r.precision}{why}")
    if init_from != "resume": info = _start_folder(learn, run_dir, data, subset, init, recipe)
    with plain_output(learn):
        if init_from == "resume": bounds, start = restore(learn, ck, run_dir, info, epochs)
        else:
            if init_from == "finetune": learn.freeze()  # its range test trains the new head alone, as its start does
            bounds, start = _bounds(learn, r, run_dir, log), 0
        if start < epochs:
            if dist.is_main(): log(f"Resuming {run_dir} at epoch {start + 1} of {epochs}. " * bool(start) + (
                f"Fine-tuning {init}: {r.freeze_epochs} epoch(s) of the new head, then {r.epochs} of the whole net "
                f"(fastai's fine_tune), base LR = LRMAX = {bounds.lr_max:.3g} ({bounds.rule})" if init else
                f"LR bounds: {bounds.describe()}"))
            with dist.distrib_ctx(learn, r):
                cbs = _callbacks(learn, run_dir, start, ck, t0, bool(init), extra_cbs)
                if init: learn.fine_tune_from(r.epochs, bounds.lr_max, r.freeze_epochs, start, cbs=cbs)
                else: learn.fit_one_cycle_peak(r.epochs, bounds.lr_min, bounds.lr_max, r.peak_epoch, cbs=cbs,
                                               lr_end=r.lr_end or None, start_epoch=start)
        else: log(f"{run_dir} already finished all {epochs} epochs; evaluating and exporting.")
        res = {}
        if dist.is_main():  # rank 0 alone evaluates all test images, exports and reports
            with dist.alone(): res, losses = evaluate_learner(learn, tta=r.tta, crops=r.tta_crops)
    if dist.is_main():  # exported outside plain_output: the learner goes out with fastai's own logger
        with dist.alone(): _finish(learn, res, losses, run_dir, info, time.time() - t0, log)
    dist.leave()
    return res


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


def _start_folder(learn: Learner, run_dir: Path, data, subset, init, recipe) -> dict:
    "A new run's first files (settings.ini, run.json, split.json), put in place together; returns run.json's facts."
    r, split = learn.recipe, getattr(learn.dls, "valid_files", None)
    info = {"fastresnet": __version__, "torch": torch.__version__, "device": str(default_device()),
            "machine": platform.platform(), "data": _data_record(data), "subset": subset,
            "n_train": len(learn.dls.train_ds), "n_valid": len(learn.dls.valid_ds), "vocab": list(learn.dls.vocab),
            "stats": norm_stats(learn), "world_size": dist.world_size(), "status": "started"}
    if init: info["init"] = str(Path(init).resolve())
    if recipe: info["recipe"] = recipe if Path(recipe).suffix != ".ini" else str(Path(recipe).resolve())
    files = {SETTINGS: recipe_to_ini(r), RUN_JSON: json.dumps(info, indent=2) + "\n"}
    if split is not None:  # the held-out files of a random split, so a resume can check it has the same ones
        files[SPLIT] = json.dumps({"valid_pct": r.valid_pct, "seed": r.seed, "valid": split}) + "\n"
    if dist.is_main(): start_run_dir(run_dir, files)
    return info


def _callbacks(learn: Learner, run_dir: Path, start: int, ck: dict | None, t0: float, fine_tune: bool,
               extra_cbs) -> list:
    "The fit's callbacks: the NaN stop, the per-epoch checkpoint (continued from `ck`), and what the recipe asks for."
    r, cbs, ema = learn.recipe, [StopOnNaN(), *extra_cbs], None
    if r.valid_every != 1: cbs.append(ValidEvery(r.valid_every))
    if r.ema and fine_tune: warnings.warn("`ema` is not used when fine-tuning (--init): its two fits would each start "
                                          "a new average. The last weights are tested and exported.")
    elif r.ema: cbs.append(ema := EMA(r.ema, r.ema_warmup, ck and ck.get("ema")))
    if r.tensorboard and dist.is_main():
        from .tracking import TensorBoardLog
        cbs.append(TensorBoardLog(run_dir))
    if dist.is_main():
        cbs.append(RunCheckpoint(run_dir, ck and ck["history"][:start], ck and ck["smooth_loss"], ck and ck["hps"],
                                 clock=t0, ema=ema))
    if start: cbs.append(MuteSkippedEpochs())
    return cbs


def _data_record(data: str | None) -> str | None:
    "The data as run.json records it: a folder as an absolute path; a data set's name (cifar10, cifar100) as given."
    from .data import dataset_name
    return data if data is None or dataset_name(data) else str(Path(data).resolve())


def _bounds(learn: Learner, r: Recipe, run_dir: Path | None, log=print) -> LRBounds:
    "LRMIN/LRMAX as given, or from the LR range test on the training pipeline (its curve saved in the run folder)."
    if r.lr_max: bounds = LRBounds(r.lr_min or r.lr_max / r.lr_min_div, r.lr_max, "given")
    else:
        passes = r.lr_find_iters * r.bs / max(1, len(learn.dls.train_ds))  # small data: many passes over it
        if dist.is_main():
            log(f"LR range test: {r.lr_find_iters} batches of {r.bs}, LR {r.lr_find_start:g} to {r.lr_find_end:g}"
                + f" ({passes:.0f} passes over the training images)" * (passes >= 2))
        try: bounds, found = find_bounds(learn, r.lr_rule, r.lr_min_div, r.lr_find_iters, r.lr_find_start,
                                         r.lr_find_end)
        except ValueError as e: raise UserError(f"{e} Give LRMAX yourself to skip the range test.",
                                                hint="(--lr-max)") from None
        if run_dir is not None and dist.is_main():
            rec = learn.recorder
            write_json(run_dir / LR_FIND, {"lrs": [float(x) for x in rec.lrs],
                                           "losses": [float(x) for x in rec.losses], "suggestions": found})
    if run_dir is not None and dist.is_main(): write_json(run_dir / LR_BOUNDS, bounds._asdict())
    return bounds


def lr_find_run(r: Recipe, out: str | Path, data: str | None = None, subset: int | None = None) -> LRBounds:
    "`fastresnet lr-find`: the run path's range test alone, its curve and bounds in `out`."
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    learn = cifar_learner(data, r, out, subset)
    with plain_output(learn): return _bounds(learn, r.replace(lr_max=0.0, lr_min=0.0), out, log=lambda *a: None)


def _finish(learn: Learner, res: dict, losses, run_dir: Path, info: dict, seconds: float, log) -> None:
    "The test results, the exported learner and its weights, the run record and the report."
    write_json(run_dir / FINAL, res)
    atomic_export(learn, run_dir / MODEL_PKL)
    save_weights(learn, run_dir / WEIGHTS)
    info.update(status="finished", seconds=round(seconds, 1), accuracy=res["accuracy"],
                accuracy_tta=res.get("accuracy_tta"))
    write_json(run_dir / RUN_JSON, info)
    make_report(run_dir, learn, losses)
    if not learn.recipe.keep_checkpoint and (run_dir / CHECKPOINT).is_file():  # only now: the export is complete
        mb = (run_dir / CHECKPOINT).stat().st_size / 2**20
        (run_dir / CHECKPOINT).unlink()
        log(f"Removed {run_dir / CHECKPOINT} ({mb:.0f} MB; keep_checkpoint = false): the weights are in {WEIGHTS}.")
    tta = f" (flip-TTA {res['accuracy_tta']:.4f})" if "accuracy_tta" in res else ""
    tta += f" (multi-crop TTA {res['accuracy_tta_crops']:.4f})" if "accuracy_tta_crops" in res else ""
    log(f"Test accuracy {res['accuracy']:.4f}{tta} on {res['n_images']} images. Exported {run_dir / MODEL_PKL}")
    note = chance_note(res, info.get("n_train"), len(read_json_or_none(run_dir / METRICS_JSON) or []))
    if note: log(f"Warning: {note}")


def learner_for_run(run_dir: str | Path, data: str | None = None) -> Learner:
    "A finished run's model on its data (or `data`), rebuilt from safe files: settings + safetensors."
    run_dir = Path(run_dir).absolute()
    info = read_json(run_dir / RUN_JSON)
    learn = cifar_learner(data or run_data(info), load_settings(run_dir / SETTINGS), run_dir, info.get("subset"),
                          stats=info.get("stats"))
    load_weights(learn.model, run_dir / WEIGHTS)
    return learn



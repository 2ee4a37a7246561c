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
from fastai.torch_core import default_device, rank_distrib

from . import __version__
from . import distributed as dist
from .config import Recipe, SettingsError, load_settings, recipe_to_ini
from .inference import evaluate_learner, norm_stats, save_weights
from .learner import (EMA, MuteSkippedEpochs, RunCheckpoint, StopOnNaN, ValidEvery, cifar_learner, plain_output,
                      resolve_precision, set_rng_state)
from .report import chance_note, make_report
from .run import (CHECKPOINT, FINAL, LR_BOUNDS, LR_FIND, METRICS_JSON, MODEL_PKL, RUN, SETTINGS, SPLIT, WEIGHTS,
                  DiskFullError, RunError, atomic_export, disk_full_error, is_disk_full, load_checkpoint,
                  prepare_run_dir, read_json, read_json_or_none, run_data, run_lock, start_run_dir, write_json,
                  write_metrics)
from .schedule import LRBounds, find_bounds

__all__ = ["RunError", "run", "lr_find_run", "learner_for_run"]


def run(r: Recipe | None, run_dir: str | Path, data: str | None = None, subset: int | None = None,
        overwrite: bool = False, resume: bool = False, extra_cbs=(), log=print, init: str | Path | None = None,
        recipe: str | None = None) -> dict:
    """A new run of recipe `r` into `run_dir`, or (`resume`) the rest of the run there. Returns the test results.
    `init` (a trained model: run folder, `.safetensors` or `.pkl`) makes it a fine-tuning run: the model's body and
    a new head, LRMAX from the range test on the head alone, then fastai's `fine_tune` schedule. `recipe`: the name
    or file `r` came from, for run.json."""
    run_dir = Path(run_dir).absolute()
    with run_lock(run_dir) if dist.is_main() else contextlib.nullcontext():  # one process a run folder
        try: return _run(r, run_dir, data, subset, overwrite, resume, extra_cbs, log, init, recipe)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into one): the record says so
            if dist.is_main(): _set_status(run_dir, "stopped")
            raise
        except Exception as e:
            if not is_disk_full(e, run_dir): raise
            full = e if isinstance(e, DiskFullError) else disk_full_error(run_dir / "x", what="into the run folder")
    ck = run_dir / CHECKPOINT
    kept = (f"the checkpoint of epoch {load_checkpoint(ck)['epoch'] + 1}" if ck.is_file() else
            "no epoch had completed, so the run starts again" if (run_dir / RUN).is_file() else "nothing was written")
    raise DiskFullError(f"{full.message} The files written before are intact ({kept}); once there is space, "
                        f"continue the run with: fastresnet train --resume {run_dir}") from None


def _run(r, run_dir, data, subset, overwrite, resume, extra_cbs, log, init, recipe) -> dict:
    auto = r is not None and r.precision == "auto"
    ck, r = None, r and resolve_precision(r)  # the run folder records what `auto` chose: a resume keeps it
    if resume:
        r, info, ck = _open_run(run_dir)
        data, subset, init = data or run_data(info), info.get("subset"), info.get("init")
        if ck is None and info.get("status") == "finished":  # its checkpoint removed (keep_checkpoint = false)
            raise RunError(f"{run_dir} has finished and its checkpoint was removed (keep_checkpoint = false): there "
                           f"is nothing to resume. Its model is {run_dir / MODEL_PKL}; to train again, start a new "
                           f"run with another --out.")
        if ck is None:
            log(f"{run_dir} stopped before its first epoch ended: starting it again from the beginning.")
            overwrite = True
    if dist.world_size() > 1:
        dist.require_accelerate()
        if not r.lr_max:
            raise RunError("A distributed run needs LRMAX given: the LR range test is not split over processes.",
                           hint="Run `fastresnet lr-find` in one process first and pass --lr-max (and --lr-min).")
    if ck is None and dist.is_main(): prepare_run_dir(run_dir, overwrite)
    t0 = time.time() - ((ck or {}).get("seconds") or 0)  # a resumed run's clock goes on from its checkpoint
    # checks the machine can run `r`, then loads the data; a resumed fine-tune's weights come from its checkpoint
    learn = cifar_learner(data, r, run_dir, subset, init=init if ck is None else None,
                          stats=info.get("stats") if ck is not None else None)  # a fine-tune's are its source's
    r, vocab, split = learn.recipe, list(learn.dls.vocab), getattr(learn.dls, "valid_files", None)  # width: init's
    epochs = r.epochs + (r.freeze_epochs if init else 0)  # fine-tuning: the head's epochs first
    why = (" (the run folder's)" if ck is not None else
           " (auto: bf16 where this machine has it, else fp32)" if auto else "")
    if dist.is_main(): log(f"Precision: {r.precision}{why}")
    if ck is None:
        info = {"fastresnet": __version__, "torch": torch.__version__, "device": str(default_device()),
                "machine": platform.platform(), "data": _data_record(data), "subset": subset,
                "n_train": len(learn.dls.train_ds), "n_valid": len(learn.dls.valid_ds), "vocab": vocab,
                "stats": norm_stats(learn), "world_size": dist.world_size(), "status": "started"}
        if init: info["init"] = str(Path(init).resolve())
        if recipe: info["recipe"] = recipe if Path(recipe).suffix != ".ini" else str(Path(recipe).resolve())
        files = {SETTINGS: recipe_to_ini(r), RUN: json.dumps(info, indent=2) + "\n"}
        if split is not None:  # the held-out files of a random split, so a resume can check it has the same ones
            files[SPLIT] = json.dumps({"valid_pct": r.valid_pct, "seed": r.seed, "valid": split}) + "\n"
        if dist.is_main(): start_run_dir(run_dir, files)
    elif info.get("vocab") and vocab != info["vocab"]:
        raise RunError(f"The data's classes {vocab} differ from the run's {info['vocab']}: "
                       f"resume {run_dir} with the data it started with.")
    elif split is not None and split != (read_json_or_none(run_dir / SPLIT) or {}).get("valid"):
        raise RunError(f"The data's held-out images differ from those in {run_dir / SPLIT} (files added, removed or "
                       f"renamed since the run started): resume {run_dir} with the data it started with.")
    elif dist.is_main(): _set_status(run_dir, "started")  # a resumed run runs again
    with plain_output(learn):
        if ck is not None: bounds, start = _restore(learn, ck, run_dir), ck["epoch"] + 1
        else:
            if init: learn.freeze()  # the range test of a fine-tune trains the new head alone, as its first epochs do
            bounds, start = _bounds(learn, r, run_dir, log), 0
        if ck is None or start < epochs:
            if dist.is_main(): log(f"Resuming {run_dir} at epoch {start + 1} of {epochs}. " * bool(start) + (
                f"Fine-tuning {init}: {r.freeze_epochs} epoch(s) of the new head, then {r.epochs} of the whole net "
                f"(fastai's fine_tune), base LR = LRMAX = {bounds.lr_max:.3g} ({bounds.rule})" if init else
                f"LR bounds: {bounds.describe()}"))
            if dist.world_size() > 1:
                print(f"process {rank_distrib()} of {dist.world_size()}: {dist.local_batch_size(r)} images a step "
                      f"(global batch {r.bs})", flush=True)
            cbs = [StopOnNaN(), *extra_cbs]
            if dist.is_main():
                cbs.append(RunCheckpoint(run_dir, ck and ck["history"][:start], ck and ck["smooth_loss"],
                                         ck and ck["hps"], clock=t0))
            if r.valid_every != 1: cbs.append(ValidEvery(r.valid_every))
            if r.ema and init: warnings.warn("`ema` is not used when fine-tuning (--init): its two fits would each "
                                             "start a new average. The last weights are tested and exported.")
            elif r.ema: cbs.append(EMA(r.ema, r.ema_warmup, ck and ck.get("ema")))
            if start: cbs.append(MuteSkippedEpochs(start))
            with dist.distrib_ctx(learn, r):
                if init: learn.fine_tune_from(r.epochs, bounds.lr_max, r.freeze_epochs, start, cbs=cbs)
                else: learn.fit_one_cycle_peak(r.epochs, bounds.lr_min, bounds.lr_max, r.peak_epoch, cbs=cbs,
                                               lr_end=r.lr_end or None, start_epoch=start, hps=ck and ck["hps"])
        else:
            log(f"{run_dir} already finished all {epochs} epochs; evaluating and exporting.")
            if ck.get("ema"): learn.model.load_state_dict({k[len("module."):]: v for k, v in ck["ema"].items()
                                                           if k.startswith("module.")})  # what the fit ended with
        res = {}
        if dist.is_main():  # rank 0 alone evaluates all test images, exports and reports
            with dist.alone(): res, losses = evaluate_learner(learn, tta=r.tta, crops=r.tta_crops)
    if dist.is_main():  # exported outside plain_output: the learner goes out with fastai's own logger
        with dist.alone(): _finish(learn, res, losses, run_dir, info, time.time() - t0, log)
    dist.leave()
    return res


def _set_status(run_dir: Path, status: str) -> None:
    "run.json's `status`, where the run has one and has not finished."
    info = read_json_or_none(run_dir / RUN)
    if info and info.get("status") != "finished": write_json(run_dir / RUN, {**info, "status": status})


def _data_record(data: str | None) -> str | None:
    "The data as run.json records it: a folder as an absolute path; a data set's name (cifar10, cifar100) as given."
    from .data import dataset_name
    return data if data is None or dataset_name(data) else str(Path(data).resolve())


def _open_run(run_dir: Path) -> tuple[Recipe, dict, dict | None]:
    "A run folder's settings, facts and last checkpoint (None if no epoch had completed)."
    if not run_dir.is_dir(): raise RunError(f"No run folder at {run_dir}.")
    info = read_json(run_dir / RUN)
    try: r = load_settings(run_dir / SETTINGS)
    except SettingsError as e: raise RunError(str(e)) from None
    if not (run_dir / CHECKPOINT).is_file(): return r, info, None
    try: ck = load_checkpoint(run_dir / CHECKPOINT)
    except Exception as e:
        raise RunError(f"{run_dir/CHECKPOINT} cannot be read ({type(e).__name__}: {str(e)[:120]}): cut short by a "
                       "crash or a full disk? Start the run again, or restore the file from a copy.",
                       hint="(--overwrite starts it again in the same folder)") from None
    if "hypers" in ck["opt"] and r.adam_impl != "fastai": r = r.replace(adam_impl="fastai")  # began with fastai's Adam
    return r, info, ck


def _restore(learn: Learner, ck: dict, run_dir: Path) -> LRBounds:
    "Weights, optimizer state and random streams from a checkpoint; the bounds the run found."
    learn.create_opt()
    try: learn.model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise RunError(f"The checkpoint in {run_dir} does not fit a model for this data "
                       f"({str(e).splitlines()[0]}): resume with the data the run started with.") from None
    learn.opt.load_state_dict(ck["opt"])
    set_rng_state(learn, ck["rng"])
    write_metrics(run_dir, ck["history"][:ck["epoch"] + 1], ck["hps"])
    b = read_json(run_dir / LR_BOUNDS)
    return LRBounds(b["lr_min"], b["lr_max"], b["rule"])


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
        except ValueError as e: raise RunError(f"{e} Give LRMAX yourself to skip the range test.",
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
    write_json(run_dir / RUN, info)
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
    from .inference import load_weights
    run_dir = Path(run_dir).absolute()
    info = read_json(run_dir / RUN)
    learn = cifar_learner(data or run_data(info), load_settings(run_dir / SETTINGS), run_dir, info.get("subset"),
                          stats=info.get("stats"))
    load_weights(learn.model, run_dir / WEIGHTS)
    return learn



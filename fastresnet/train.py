"""One training run, start to finish: LR range test → one cycle → evaluation → export, with
everything a run produces written into its own folder, and `resume_run` to continue one."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from fastai.learner import Learner
from fastai.torch_core import default_device, rank_distrib, set_seed

from . import __version__
from . import distributed as dist
from .config import Recipe, SettingsError, recipe_to_ini, load_settings, with_changes
from .data import CifarArrays, balanced_subset, cifar_dls, load_cifar
from .inference import evaluate_learner, save_weights
from .report import make_report
from .learner import (MuteSkippedEpochs, RunCheckpoint, StopOnNaN, ValidEvery, build_learner, check_runtime,
                      plain_output, set_rng_state)
from .run import (CHECKPOINT, FINAL, LR_BOUNDS, LR_FIND, MODEL_PKL, RUN, SETTINGS, WEIGHTS, RunError, load_checkpoint,
                  prepare_run_dir, read_json, run_data, start_run_dir, write_json, write_metrics)
from .schedule import LRBounds, run_lr_find

__all__ = ["RunError", "build_run_learner", "cifar_learner", "find_bounds", "train_run", "resume_run",
           "finish_run", "learner_for_run"]


def build_run_learner(r: Recipe, data: CifarArrays, run_dir: Path) -> Learner:
    """Seed, DataLoaders and Learner: the same calls for a new run and for a resumed one. Under a
    distributed launch each process takes bs / world_size images a step and draws its own augmentations."""
    set_seed(r.seed, reproducible=True)
    dls = cifar_dls(data, r.replace(bs=dist.local_batch_size(r)), device=default_device())  # GPU if there is one
    learn = build_learner(dls, r, path=run_dir)
    if dist.world_size() > 1: torch.manual_seed(r.seed + rank_distrib())  # same init everywhere, own augmentation
    return learn


def load_data(data_path: str | None, subset: int | None) -> CifarArrays:
    data = load_cifar(data_path)
    return balanced_subset(data, subset) if subset else data


def cifar_learner(data: str | Path | CifarArrays | None = None, settings: str | Path | None = None,
                  path: str | Path = ".", subset: int | None = None, **changes) -> Learner:
    """The recipe's Learner in one call, for notebooks and scripts: CIFAR-10 from `data` (a folder as
    for `fastresnet train --data`, or `None` to download it) through the recipe's DataBlock, the
    CustomResNet, Adam and the loss, all configured from `settings` (default: the packaged
    settings.ini) with `changes` applied (e.g. `bs=256`, `wd=0.4`).

        learn = cifar_learner("PATH/TO/cifar10")
        lrs = learn.lr_find(suggest_funcs=minimum)   # lrs.minimum = (LR at the lowest loss) / 10 = LRMAX
        learn.fit_one_cycle_peak(24, lrs.minimum / 100, lrs.minimum, peak_epoch=5)
        learn.export("model.pkl")
    """
    r = with_changes(load_settings(settings), changes)
    arrays = data if isinstance(data, CifarArrays) else load_data(data, subset)
    learn = build_run_learner(r, arrays, Path(path).absolute())
    learn.recipe = r
    return learn


def find_bounds(learn: Learner, r: Recipe, run_dir: Path | None = None) -> LRBounds:
    "LR range test on the training pipeline → LRMIN/LRMAX by the recipe's rule; curve saved in the run folder."
    try:
        with plain_output(learn):
            bounds, found = run_lr_find(learn, r.lr_rule, r.lr_max_div, r.lr_min_div, r.lr_find_iters,
                                        r.lr_find_start, r.lr_find_end)
    except ValueError as e:
        raise RunError(f"{e} Give LRMAX yourself to skip the range test.", hint="(--lr-max)") from None
    if run_dir is not None:
        rec = learn.recorder
        write_json(run_dir / LR_FIND, {"lrs": [float(x) for x in rec.lrs], "losses": [float(x) for x in rec.losses],
                                       "suggestions": found, "bounds": bounds._asdict()})
    return bounds


def _fit(learn: Learner, r: Recipe, b: LRBounds, run_dir: Path, start_epoch: int, history: list, extra_cbs,
         ck: dict | None = None) -> None:
    ck = ck or {}
    cbs = [StopOnNaN()] + list(extra_cbs or [])
    if dist.is_main(): cbs.append(RunCheckpoint(run_dir, history, ck.get("smooth_loss"), ck.get("hps")))
    if r.valid_every != 1: cbs.append(ValidEvery(r.valid_every))
    if start_epoch: cbs.append(MuteSkippedEpochs(start_epoch))
    with dist.distrib_ctx(learn, r), plain_output(learn):
        learn.fit_one_cycle_peak(r.epochs, b.lr_min, b.lr_max, r.peak_epoch, r.shape, cbs=cbs, start_epoch=start_epoch)


def train_run(r: Recipe, run_dir: Path, data_path: str | None = None, subset: int | None = None,
              overwrite: bool = False, extra_cbs=None, log=print) -> dict:
    "A new run: folder, data, LR bounds (found or given), fit, final evaluation and export."
    check_runtime(r)
    run_dir = Path(run_dir).absolute()  # fastai joins the Learner's path to file names: never twice
    if dist.world_size() > 1: dist.require_accelerate()
    if dist.world_size() > 1 and not r.lr_max:
        raise RunError("A distributed run needs LRMAX given: the LR range test is not split over processes.",
                       hint="Run `fastresnet lr-find` in one process first and pass --lr-max (and --lr-min).")
    if dist.is_main(): prepare_run_dir(run_dir, overwrite)
    t0 = time.time()
    data = load_data(data_path, subset)
    info = {"fastresnet": __version__, "torch": torch.__version__, "device": str(default_device()),
            "machine": platform.platform(), "data": str(Path(data_path).resolve()) if data_path else None,
            "subset": subset, "n_train": data.n_train, "n_valid": data.n_valid, "vocab": list(data.vocab),
            "status": "started"}
    if dist.is_main():
        start_run_dir(run_dir, {SETTINGS: recipe_to_ini(r), RUN: json.dumps(info, indent=2) + "\n"})
    learn = build_run_learner(r, data, run_dir)
    if r.lr_max:
        b = LRBounds.given(r.lr_max, r.lr_min, r.lr_min_div)
    else:
        log(f"LR range test: {r.lr_find_iters} batches from {r.lr_find_start:g} to {r.lr_find_end:g} ...")
        b = find_bounds(learn, r, run_dir)
    info.update(status="training", lr_min=b.lr_min, lr_max=b.lr_max, world_size=dist.world_size())
    if dist.is_main():
        log(f"LR bounds: {b.describe()}")
        write_json(run_dir / LR_BOUNDS, b._asdict())
        write_json(run_dir / RUN, info)
    if dist.world_size() > 1:
        print(f"process {rank_distrib()} of {dist.world_size()}: {dist.local_batch_size(r)} images a step "
              f"(global batch {r.bs})", flush=True)
    _fit(learn, r, b, run_dir, 0, [], extra_cbs)
    return _finish(learn, r, run_dir, info, time.time() - t0, log)


def resume_run(run_dir: Path, data_path: str | None = None, extra_cbs=None, log=print) -> dict:
    """Continue a run from its last completed epoch with model, optimizer, schedule position, RNG
    streams and metrics history restored: the result equals an uninterrupted run's."""
    if not Path(run_dir).is_dir(): raise RunError(f"No run folder at {run_dir}.")
    run_dir = Path(run_dir).absolute()
    info = read_json(run_dir / RUN)
    try: r = load_settings(run_dir / SETTINGS)
    except SettingsError as e: raise RunError(str(e)) from None
    data_path = data_path or run_data(info)
    if not (run_dir / CHECKPOINT).is_file():  # stopped in the range test or the first epoch: nothing to keep
        log(f"{run_dir} stopped before its first epoch ended: starting it again from the beginning.")
        return train_run(r, run_dir, data_path, info.get("subset"), overwrite=True, extra_cbs=extra_cbs, log=log)
    b = LRBounds(**read_json(run_dir / LR_BOUNDS))
    try: ck = load_checkpoint(run_dir / CHECKPOINT)
    except Exception as e:
        raise RunError(f"{run_dir/CHECKPOINT} cannot be read ({type(e).__name__}: {str(e)[:120]}); it may have been "
                       "cut short by a crash or a full disk. Start the run again, or restore the file from a copy.",
                       hint="(--overwrite starts it again in the same folder)") from None
    if "hypers" in ck["opt"] and r.adam_impl != "fastai":  # a run that began with fastai's Adam goes on with it
        r = r.replace(adam_impl="fastai")
    start = ck["epoch"] + 1
    t0 = time.time()
    data = load_data(data_path, info.get("subset"))
    if info.get("vocab") and list(data.vocab) != info["vocab"]:
        raise RunError(f"The data's classes {list(data.vocab)} differ from the run's {info['vocab']}: "
                       f"resume {run_dir} with the data it started with.")
    learn = build_run_learner(r, data, run_dir)
    learn.create_opt()
    try: learn.model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise RunError(f"The checkpoint in {run_dir} does not fit a model for this data "
                       f"({str(e).splitlines()[0]}): resume with the data the run started with.") from None
    learn.opt.load_state_dict(ck["opt"])
    set_rng_state(learn, ck["rng"])
    history = ck["history"][:start]
    write_metrics(run_dir, history, ck["hps"])
    if start >= r.epochs: log(f"{run_dir} already finished all {r.epochs} epochs; evaluating and exporting.")
    else: log(f"Resuming {run_dir} at epoch {start + 1} of {r.epochs}. LR bounds: {b.describe()}")
    if start < r.epochs: _fit(learn, r, b, run_dir, start, history, extra_cbs, ck)
    return _finish(learn, r, run_dir, info, info.get("seconds", 0) + time.time() - t0, log)


def _finish(learn: Learner, r: Recipe, run_dir: Path, info: dict, seconds: float, log) -> dict:
    "Rank 0 evaluates all 10,000 test images, exports and reports; every process then leaves together."
    res = {}
    if dist.is_main():
        with dist.alone(): res = finish_run(learn, r, run_dir, info, seconds, log)
    dist.leave()
    return res


def learner_for_run(run_dir: Path, data_path: str | None = None) -> Learner:
    "The run's finished model on the run's data (or `data_path`), rebuilt from safe files: settings + safetensors."
    from safetensors.torch import load_file
    run_dir = Path(run_dir).absolute()
    info = read_json(run_dir / RUN)
    r = load_settings(run_dir / SETTINGS)
    learn = build_run_learner(r, load_data(data_path or run_data(info), info.get("subset")), run_dir)
    learn.model.load_state_dict(load_file(run_dir / WEIGHTS))
    return learn


def finish_run(learn: Learner, r: Recipe, run_dir: Path, info: dict, seconds: float, log=print) -> dict:
    "Final evaluation on the validation (official test) set, export of the learner, run record."
    with plain_output(learn): res, losses = evaluate_learner(learn, tta=r.tta)  # flip-TTA: a second test pass
    write_json(run_dir / FINAL, res)
    learn.export(run_dir / MODEL_PKL)
    save_weights(learn, run_dir / WEIGHTS)
    info.update(status="finished", seconds=round(seconds, 1), accuracy=res["accuracy"],
                accuracy_tta=res.get("accuracy_tta"))
    write_json(run_dir / RUN, info)
    make_report(run_dir, learn, losses)
    tta = f" (flip-TTA {res['accuracy_tta']:.4f})" if "accuracy_tta" in res else ""
    log(f"Test accuracy {res['accuracy']:.4f}{tta} on {res['n_images']} images. "
        f"Learner exported to {run_dir / 'model.pkl'}")
    return res

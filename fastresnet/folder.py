"""The run folder: every file a run writes, its name and format, and how it is written. Every
file, the exported learner and the plots included, goes through `atomic_path` (temporary file, fsync,
rename, the umask's mode), so a crash or a full disk leaves the previous version intact, never a
half-written one, and a full disk is a `UserError` naming the disk and the space the file needs;
a new run's first files appear together (`start_run_dir`); what a killed process left half-done is
cleared when the folder is next taken (`run_lock`)."""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import functools
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from . import compat
from . import distributed as dist
from .config import UserError

__all__ = ["is_disk_full", "disk_full_error", "CHECKPOINT", "RUN_JSON", "SETTINGS", "LR_FIND", "LR_BOUNDS", "FINAL",
           "METRICS_CSV", "METRICS_JSON", "SCHEDULE", "MODEL_PKL", "WEIGHTS", "REPORT", "SPLIT", "PLOTS", "RUN_FILES",
           "SCHEMA", "umask_mode", "atomic_path", "atomic_write", "atomic_export", "atomic_torch_save", "check_zip",
           "write_text", "write_json", "read_json", "read_json_or_none", "foreign_entries", "prepare_run_dir",
           "start_run_dir", "run_data", "run_lock", "clear_leftovers", "write_metrics", "set_status"]

CHECKPOINT, RUN_JSON, SETTINGS = "checkpoint.pth", "run.json", "settings.ini"  # model + optimizer + RNG; facts; recipe
LR_FIND, LR_BOUNDS, FINAL = "lr_find.json", "lr_bounds.json", "final.json"    # range test curve; bounds; test results
METRICS_CSV, METRICS_JSON, SCHEDULE = "metrics.csv", "metrics.json", "schedule.json"  # per epoch; per batch LR/beta1
MODEL_PKL, WEIGHTS, REPORT = "model.pkl", "model.safetensors", "report.md"    # exported learner; weights only
TFEVENTS = "events.out.tfevents."  # TensorBoard's event files (`tensorboard = true`), named by time, host and pid
SPLIT = "split.json"  # a folder of class folders: valid_pct, seed and the held-out files (relative paths)
PLOTS = {"lr_find.png": "LR range test", "schedule.png": "Schedule applied per batch",  # report.md's, by title
         "metrics.png": "Loss and accuracy per epoch", "confusion.png": "Confusion matrix (test set)",
         "top_losses.png": "Test images with the highest loss", "augmented.png": "Augmented training images"}


# ---------------------------------------------------------------- writing files
def _free(path: Path) -> tuple[Path, int]:
    "The mount point holding `path` and the bytes free there for this user."
    path = next(p for p in (path, *path.parents) if p.exists())
    st = os.statvfs(path)
    while not os.path.ismount(path):
        path = path.parent
    return path, st.f_bavail * st.f_frsize


def is_disk_full(e: BaseException, folder: Path | None = None) -> bool:
    """Whether `e` (or an error it came from) is a full disk: ENOSPC/EDQUOT, or torch's file writer failing
    (it drops the errno) while `folder`'s disk has under 64 MiB left."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if getattr(e, "disk_full", False):
            return True  # ours, from `atomic_path`
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if folder is not None and isinstance(e, RuntimeError) and "unexpected pos" in str(e):
            return _free(Path(folder))[1] < 64 * 2**20
        e = e.__cause__ or e.__context__
    return False


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{-(-n // 1024)} kB"


def disk_full_error(path: Path, needed: int | None = None, what: str | None = None) -> UserError:
    "The one paragraph a full disk gets: which disk, which file (`what`), how much it needs, how much is free."
    path = Path(path).absolute()
    mount, free = _free(path.parent)
    need = f", which needs about {_mb(needed)}," if needed else ""
    more = f"; free at least {_mb(needed - free)} more there" if needed and needed > free else "; free some space there"
    return UserError(f"The disk holding {path.parent} (mounted at {mount}) is full: writing {what or path.name}"
                     f"{need} failed with {_mb(free)} free{more}.", disk_full=True)


def umask_mode(mode: int = 0o666) -> int:
    "`mode` as the user's umask would leave it for a new file (temporary files are created 0600)."
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


TMP_SUFFIX = ".tmp"  # `.NAME.XXXXXXXX.tmp`: what a killed writer leaves behind (cleared by `clear_leftovers`)


@contextlib.contextmanager
def atomic_path(path: Path, needed: int | None = None):
    """A temporary path beside `path` to write to; when the block succeeds it is fsynced and renamed onto `path`.
    A full disk removes the temporary file and raises `UserError` (`needed`: the file's size, if known)."""
    path, full = Path(path), False
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path, needed) from None
        raise
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        if not is_disk_full(e, path.parent):
            raise
        full = True
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if full:
        raise disk_full_error(path, needed)


def rank0(write):
    "A write of the run folder, done by rank 0 alone: on the other processes of a distributed run it does nothing."
    @functools.wraps(write)
    def on_rank0(*args, **kwargs):
        if dist.is_main():
            return write(*args, **kwargs)
    return on_rank0


@rank0
def atomic_write(path: Path, write) -> None:
    """`write(f)` into a binary file object; the file appears at `path` only complete (`atomic_path`). It is
    made in memory first, so a full disk is reported with the exact size the file needs."""
    buf = io.BytesIO()
    write(buf)
    with atomic_path(path, buf.tell()) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())


@rank0
def atomic_export(learn, path: Path) -> None:
    "fastai's `learn.export`, through `atomic_path`: a full disk never leaves a half-written model.pkl."
    weights = sum(t.numel() * t.element_size() for t in learn.model.state_dict().values())  # most of the pickle
    with atomic_path(path, weights) as tmp:
        learn.export(tmp)


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def check_zip(path: Path) -> None:
    """A file `torch.save` wrote (a zip that records each part's CRC-32 as it is written) checked part by part: a
    changed bit anywhere in the data fails here. Raises `zipfile.BadZipFile` naming the damaged part."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"its part {bad} differs from the CRC-32 recorded when it was written")


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


_NUM, _INT, _OPT = (int, float), int, type(None)
SCHEMA = {  # each JSON file of a run: its top-level type, and the type of each field read (None: it may be missing)
    RUN_JSON: (dict, {"vocab": (list, _OPT), "stats": (list, _OPT), "data": (str, _OPT), "n_train": (_INT, _OPT),
                      "n_valid": (_INT, _OPT), "subset": (_INT, _OPT), "status": (str, _OPT), "init": (str, _OPT)}),
    FINAL: (dict, {"accuracy": _NUM, "n_images": _INT, "per_class": dict, "confusion": list, "vocab": list,
                   "accuracy_tta": (*_NUM, _OPT)}),
    LR_BOUNDS: (dict, {"lr_min": _NUM, "lr_max": _NUM, "rule": str}),
    LR_FIND: (dict, {"lrs": list, "losses": list, "suggestions": dict}),
    SCHEDULE: (dict, {"lr": list, "mom": (list, _OPT)}),
    METRICS_JSON: (list, {}),
    SPLIT: (dict, {"valid": list}),
}


def read_json(path: Path, missing_ok: bool = False):
    """A run file (`SCHEMA`); missing, damaged or of another shape is a `UserError` naming it (missing and
    `missing_ok`: None)."""
    path = Path(path)
    kind, keys = SCHEMA.get(path.name, (dict, {}))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise UserError(f"{path} is missing: is {path.parent} a fastresnet run folder?") from None
    except (ValueError, OSError) as e:
        obj, why = None, f"{type(e).__name__}: {str(e)[:100]}"
    else:
        why = f"it holds a {type(obj).__name__}, not a {kind.__name__}" if not isinstance(obj, kind) else next(
            (f"`{k}` is {obj.get(k, 'missing')!r:.40}" for k, t in keys.items()
             if not isinstance(obj.get(k), t)), None)  # a field that may be None may be missing
    if why is None:
        return obj
    raise UserError(f"{path} is damaged ({why}). fastresnet wrote it and does not read it damaged: restore it from "
                    "a copy, or train the run again into a new folder (--out).")


def read_json_or_none(path: Path):
    "A run file that may not be there (yet): None then; damaged, a `UserError` (`read_json`)."
    return read_json(path, missing_ok=True)


def write_metrics(run_dir: Path, history: list[dict], hps: dict | None = None) -> None:
    "The per-epoch table as CSV (for spreadsheets) and JSON (for code); the per-batch LR/beta1 as applied."
    if hps is not None:
        atomic_write(run_dir / SCHEDULE, lambda f: f.write(json.dumps(hps).encode()))
    if not history:
        return
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    w.writerows({k: "" if v is None else v for k, v in row.items()} for row in history)
    atomic_write(run_dir / METRICS_CSV, lambda f: f.write(text.getvalue().encode()))
    atomic_write(run_dir / METRICS_JSON, lambda f: f.write(json.dumps(history, indent=1).encode()))


# ---------------------------------------------------------------- the folder itself
@contextlib.contextmanager
def run_lock(run_dir: Path):
    """This process's hold on a run folder: a second `fastresnet train` on it (a new run or `--resume`) is
    refused with the holder's pid. The lock is the kernel's (`flock` on `.NAME.lock` beside the folder): it
    dies with its process, so a run killed with SIGKILL leaves no stale lock, and the file goes when the run
    ends."""
    if not dist.is_main():  # rank 0 holds it for the whole distributed run
        yield
        return
    path = run_dir.parent / f".{run_dir.name}.lock"
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise UserError(f"Cannot write to the run folder {run_dir} ({e.strerror}).",
                        hint="Choose another with --out.") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"Run folder {run_dir} is in use by process {holder} (another fastresnet train).",
                        hint="Wait for it to end or stop it, or choose another folder with --out.") from None
    f.seek(0), f.truncate(), f.write(f"{os.getpid()}\n"), f.flush()
    clear_leftovers(run_dir)
    try:
        yield
    finally:
        os.unlink(path)  # before the lock goes: a process that opens the name afterwards makes a new file
        f.close()


def clear_leftovers(run_dir: Path) -> None:
    """Remove what a process killed mid-write left (SIGKILL, power loss): temporary files in the run folder and
    half-made new/old folders beside it. Called holding the folder's lock, so no live writer owns them."""
    stale = list(run_dir.glob(f".*{TMP_SUFFIX}")) if run_dir.is_dir() else []
    stale += run_dir.parent.glob(f".{run_dir.name}.new-*")
    stale += run_dir.parent.glob(f".{run_dir.name}.old-*")
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


RUN_FILES = {CHECKPOINT, RUN_JSON, SETTINGS, LR_FIND, LR_BOUNDS, FINAL, METRICS_CSV, METRICS_JSON, SCHEDULE, MODEL_PKL,
             WEIGHTS, REPORT, SPLIT, *PLOTS,
             "model.onnx"}  # every file a run (or `fastresnet export --onnx`) writes; `--overwrite` replaces no other


def foreign_entries(run_dir: Path) -> list[str]:
    """What in `run_dir` a run did not write: everything but `RUN_FILES`, our temporary files and the range
    test's `models/tmpXXXX/_tmp.pth` (fastai's `lr_find`, killed before it cleaned up). A folder without a
    fastresnet run.json is foreign as a whole (its entries are all listed)."""
    names = sorted(_entry(p) for p in run_dir.iterdir())
    try:
        info = json.loads((run_dir / RUN_JSON).read_text())
    except (OSError, ValueError):
        info = None
    if not (isinstance(info, dict) and "fastresnet" in info):
        return names
    def ours(p: Path) -> bool:
        if p.is_symlink():
            return False
        if p.is_file():
            return (p.name in RUN_FILES or p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)
                    or p.name.startswith(TFEVENTS))
        if p.name != "models" or not p.is_dir():
            return False
        return all(f.is_dir() and f.name.startswith("tmp") or f.name == "_tmp.pth" for f in p.rglob("*"))  # lr_find's
    return sorted(_entry(p) for p in run_dir.iterdir() if not ours(p))


def _entry(p: Path) -> str:
    return f"{p.name}/" if p.is_dir() else p.name


def _refuse_foreign(run_dir: Path) -> None:
    "`--overwrite` of a folder that is not (only) a fastresnet run: refused, naming what it holds."
    other = foreign_entries(run_dir)
    if other:
        shown = ", ".join(other[:6]) + (f" and {len(other) - 6} more" if len(other) > 6 else "")
        raise UserError(f"--overwrite replaces only a fastresnet run folder (its run.json and the files a run "
                        f"writes: docs/reliability.md), and {run_dir} holds {len(other)} other entr"
                        f"{'y' if len(other) == 1 else 'ies'} ({shown}), so nothing in it is touched.",
                        hint="Choose a new folder with --out, or move those files out of it first.")


@rank0
def prepare_run_dir(run_dir: Path, overwrite: bool = False) -> Path:
    """Check, before any work, that the run folder can be made: an existing non-empty one is refused
    unless `overwrite` and it is a fastresnet run folder (`foreign_entries`), and even then it is left alone until
    `start_run_dir` has the new run's first files, so a typo in the other flags cannot destroy a finished run."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"Run folder {run_dir} is an existing file, not a folder.", hint="Choose another with --out.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(f"Run folder {run_dir} already exists.", hint=f"Use --resume {run_dir} to continue it, "
                            "--overwrite to replace it, or --out to choose another folder.")
        _refuse_foreign(run_dir)
    parent = next((p for p in run_dir.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"Cannot write to the run folder {run_dir} ({parent} is not a writable folder).",
                        hint="Choose another with --out.")
    return run_dir


@rank0
def start_run_dir(run_dir: Path, files: dict[str, str]) -> None:
    """Put a new run's first files in place: written into a new folder beside `run_dir`, which then takes its
    name. An old run there (`--overwrite`, checked again: it may have changed while the data loaded) is
    removed only now. A mount point (a container's volume) cannot be renamed: its files are replaced where
    they are, run.json first."""
    if run_dir.is_dir() and any(run_dir.iterdir()):
        _refuse_foreign(run_dir)
    if os.path.ismount(run_dir):
        for p in run_dir.iterdir():  # only a run's files are there (just checked)
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        for name in sorted(files, key=lambda n: n != RUN_JSON):
            write_text(run_dir / name, files[name])
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.new-"))
        os.chmod(tmp, umask_mode(0o777))
        for name, text in files.items():
            (tmp / name).write_text(text)
        if run_dir.exists():
            old = run_dir.with_name(f".{run_dir.name}.old-{os.getpid()}")
            os.replace(run_dir, old)
            os.replace(tmp, run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, run_dir)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise
        raise UserError(f"Cannot write to the run folder {run_dir} ({e.strerror}).",
                        hint="Choose another with --out.") from None


@rank0
def set_status(run_dir: Path, status: str) -> None:
    "run.json's `status`, where the run has one and has not finished."
    info = read_json_or_none(run_dir / RUN_JSON)
    if info and info.get("status") != "finished":
        write_json(run_dir / RUN_JSON, {**info, "status": status})


def run_data(info: dict) -> str | None:
    "The data path run.json records; None means fastai's download."
    return compat.data_path(info.get("data"))

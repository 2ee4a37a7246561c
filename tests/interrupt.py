"""Interruption points for the fault tests: a real signal reaches a real `fastresnet` process (this one, a child forked
by tests/forkserver.py, or one started through this file as a script, e.g. by torchrun) at a chosen moment of the
project's own code path. Nothing of the project is
replaced: a fastai callback given to the run's learner, or a Python audit hook that watches the files the project
opens and renames, sends the signal when the moment comes.

Points (KIND, N), the N-th event of a kind in this process:
  range_test_batch, train_batch, valid_batch: right after that batch;
  checkpoint_write: the project's `atomic_path` renaming its N-th checkpoint, complete and fsynced in its temporary
      file, onto checkpoint.pth (the audit event of `os.replace`): the signal lands before the rename;
  checkpoint_cut: (child processes: the signal kills) the project's writer opening the temporary file of its N-th
      checkpoint; the file is capped there at CUT bytes (RLIMIT_FSIZE), so the kernel stops the project's own write
      after CUT bytes and kills the process with SIGXFSZ: a checkpoint half-written, as a kill mid-write leaves it;
  image_read: the N-th image file opened for reading (`fastresnet predict`).

Run as a script it is a real `fastresnet` process:
    python tests/interrupt.py KIND N SIGNAL -- train --data ...
SIGNAL: SIGKILL (no handler, no cleanup: `kill -9`), SIGTERM (a service manager's stop), SIGINT (Ctrl-C), SIGSTOP
(the process pauses itself at the point, for the test to act while it holds its run folder; `stopped` waits for it),
or SIGXFSZ (checkpoint_cut's)."""
import contextlib
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

from fastai.callback.core import Callback

CUT = 2**20  # checkpoint_cut: the bytes of the checkpoint that reach the disk (a width-0.25 checkpoint is ~5 MB)
AUDIT_KINDS = ("checkpoint_write", "checkpoint_cut", "image_read")
_point: dict = {}   # the armed audit point (kind, n, sig, seen); `install` sets it
_hooked = False


class SignalAt(Callback):
    "Send this process `sig` at the n-th batch of one kind: what `kill -SIG` does at that moment."
    order = -20
    def __init__(self, kind: str, n: int, sig=signal.SIGTERM): self.kind, self.n, self.sig, self.seen = kind, n, sig, 0

    def after_batch(self):
        kind = "range_test_batch" if hasattr(self.learn, "lr_finder") else "train_batch" if self.training else \
            "valid_batch"
        if kind == self.kind:
            self.seen += 1
            if self.seen == self.n: os.kill(os.getpid(), self.sig)


def _is_checkpoint_tmp(path) -> bool:
    name = os.path.basename(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
    return name.startswith(".checkpoint.pth.") and name.endswith(".tmp")


def _audit(event: str, args) -> None:
    "The audit hook: counts the armed kind's events and signals at the n-th."
    p = _point
    if not p: return
    kind = p["kind"]
    if kind == "checkpoint_write": hit = event == "os.rename" and os.fspath(args[1]).endswith("checkpoint.pth")
    elif kind == "checkpoint_cut":   # `open(tmp, "wb")` is audited with mode "w"
        hit = event == "open" and args[1] in ("w", "wb") and _is_checkpoint_tmp(args[0])
    elif kind == "image_read":
        hit = event == "open" and args[1] in ("r", "rb") and isinstance(args[0], (str, os.PathLike)) and \
            os.fspath(args[0]).lower().endswith((".png", ".jpg", ".jpeg"))
    else: hit = False
    if not hit: return
    p["seen"] += 1
    if p["seen"] != p["n"]: return
    sig = p["sig"]
    p.clear()
    if kind == "checkpoint_cut":   # the kernel, not this hook, stops the write: after CUT bytes, with SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)     # Python ignores it by default (the write would fail)
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (CUT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return
    os.kill(os.getpid(), sig)


def _add_hook() -> None:
    "The audit hook, added once a process (audit hooks cannot be removed: an empty `_point` makes it idle)."
    global _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True


def next_point(rng: random.Random, i: int, range_test_ahead: bool, checkpoint: str = "checkpoint_write"
               ) -> tuple[str, int]:
    """The i-th interruption: the four that must be covered first, then random ones the rest of the run still
    reaches. `checkpoint`: the kind that hits a checkpoint write: the run's first (nothing to resume from yet) and,
    run again from the start, its second (the first is kept: the next session resumes over what the write left)."""
    must = [("range_test_batch", 3), ("valid_batch", 1), (checkpoint, 1), (checkpoint, 2)]
    if i < len(must): return must[i]
    kinds = ["train_batch", "valid_batch", checkpoint] + ["range_test_batch"] * range_test_ahead
    return rng.choice(kinds), rng.randint(1, 2)   # per epoch: 4 training batches, 2 test batches, 1 checkpoint


def install(monkeypatch_setattr, kind: str, n: int, sig) -> None:
    """Make the next run of this process get `sig` at (kind, n). `monkeypatch_setattr(obj, name, value)` gives the
    run's learner the batch callback, or arms the audit point (pytest's `monkeypatch.undo` takes either away)."""
    import fastresnet.train as T
    if kind in AUDIT_KINDS:
        if kind == "checkpoint_cut" and "pytest" in sys.modules:
            raise ValueError("checkpoint_cut kills its process: only in a child (this script, tests/forkserver.py)")
        _add_hook()
        monkeypatch_setattr(sys.modules[__name__], "_point", {"kind": kind, "n": n, "sig": sig, "seen": 0})
        return
    build = T.recipe_learner

    def setup_with_signal(*a, **k):
        learn = build(*a, **k)
        learn.add_cb(SignalAt(kind, n, sig))
        return learn
    monkeypatch_setattr(T, "recipe_learner", setup_with_signal)


@contextlib.contextmanager
def signal_at(kind: str, n: int, sig):
    "In this process, the runs started inside the block get `sig` at (kind, n) (`install`, undone at the end)."
    import pytest
    with pytest.MonkeyPatch.context() as mp:   # its own: the test's monkeypatch (its cache folder) stays
        install(mp.setattr, kind, n, sig)
        yield


def state(pid: int) -> str:
    "The kernel's state letter of a process: R running, S sleeping, T stopped, Z exited."
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def stopped(proc, timeout: float = 300):
    """Return `proc` (a Popen, or a tests/forkserver.py Child) once it has stopped itself at its SIGSTOP point;
    fail if it ends or takes longer than `timeout`."""
    deadline = time.time() + timeout
    while proc.poll() is None and state(proc.pid) != "T":
        if time.time() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            raise AssertionError(f"process {proc.pid} did not reach its point within {timeout} s")
        time.sleep(0.05)
    if proc.poll() is not None: raise AssertionError(f"process {proc.pid} ended before its point")
    return proc


if __name__ == "__main__":
    kind, n, sig, sep, *argv = sys.argv[1:]
    install(setattr, kind, int(n), getattr(signal, sig))
    from fastresnet.cli import main
    sys.exit(main(argv))

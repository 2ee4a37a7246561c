"""Interruption points for the resume soaks: a signal sent to the training process itself at the n-th event of
one kind (a range-test batch, a training batch, a test-set batch, or mid-way through a checkpoint write).

Run as a script it is a real `fastresnet` process that dies by that signal at that point:
    python tests/interrupt.py KIND N SIGNAL -- train --data ... (SIGKILL: no handler, no cleanup, like `kill -9`)."""
import io
import os
import random
import signal
import sys

from fastai.callback.core import Callback


class SignalAt(Callback):
    "Send this process `sig` at the n-th event of one kind: what `kill -SIG` does at that moment."
    order = -20
    def __init__(self, kind: str, n: int, sig=signal.SIGTERM): self.kind, self.n, self.sig, self.seen = kind, n, sig, 0

    def after_batch(self):
        kind = "range_test_batch" if hasattr(self.learn, "lr_finder") else "train_batch" if self.training else \
            "valid_batch"
        if kind == self.kind:
            self.seen += 1
            if self.seen == self.n: os.kill(os.getpid(), self.sig)


def next_point(rng: random.Random, i: int, range_test_ahead: bool) -> tuple[str, int]:
    "The i-th interruption: the three that must be covered first, then random ones the rest of the run still reaches."
    must = [("range_test_batch", 3), ("valid_batch", 1), ("checkpoint_write", 1)]
    if i < len(must): return must[i]
    kinds = ["train_batch", "valid_batch", "checkpoint_write"] + ["range_test_batch"] * range_test_ahead
    return rng.choice(kinds), rng.randint(1, 2)   # per epoch: 4 training batches, 2 test batches, 1 checkpoint


def install(monkeypatch_setattr, kind: str, n: int, sig) -> None:
    "Make the next run signal itself at (kind, n): `monkeypatch_setattr(obj, name, value)` installs the hooks."
    import torch

    import fastresnet.resume as resume_mod
    import fastresnet.folder as run_files
    import fastresnet.train as T
    build, calls = T.cifar_learner, {"n": 0}

    def save_then_signal(obj, path):                     # the signal lands with half the checkpoint in its temp file
        calls["n"] += 1
        def write(f):
            buf = io.BytesIO()
            torch.save(obj, buf)
            data = buf.getbuffer()
            if kind != "checkpoint_write" or calls["n"] != n: return f.write(data)
            f.write(data[:len(data) // 2])
            f.flush()
            os.kill(os.getpid(), sig)
            f.write(data[len(data) // 2:])               # SIGTERM: the handler raised; SIGKILL never gets here
        with run_files.atomic_path(path) as tmp, open(tmp, "wb") as f: write(f)

    def setup_with_signal(*a, **k):
        learn = build(*a, **k)
        if kind != "checkpoint_write": learn.add_cb(SignalAt(kind, n, sig))
        return learn
    monkeypatch_setattr(T, "cifar_learner", setup_with_signal)
    monkeypatch_setattr(resume_mod, "atomic_torch_save", save_then_signal)


if __name__ == "__main__":
    kind, n, sig, sep, *argv = sys.argv[1:]
    install(setattr, kind, int(n), getattr(signal, sig))
    from fastresnet.cli import main
    sys.exit(main(argv))

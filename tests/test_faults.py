"""Real faults, produced for real: a second process on the same run folder while the first holds it (paused there by
its own SIGSTOP at a chosen batch, so the moment is the same on any machine), and that process killed with SIGKILL
while it held the folder. The first and the resume are processes forked after the imports (tests/forkserver.py); the
two refused ones are new interpreters."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from interrupt import state, stopped

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "fastresnet.cli", *args], capture_output=True, text=True,
                          timeout=600, env=ENV, **kw)


def test_a_second_process_on_a_live_run_folder_is_refused_and_a_killed_ones_lock_is_not_stale(tiny_folder, tmp_path,
                                                                                              fork_server):
    out = tmp_path / "run"
    args = ["train", "--data", tiny_folder, "--out", out, "--bs", "10", "--epochs", "3", "--lr-max", "0.001",
            "--no-tta", "--width", "0.25"]
    # 4 training batches an epoch: after the 6th the first epoch's checkpoint is on disk and the second epoch runs
    first, ended = stopped(fork_server.start(args, point=("train_batch", 6, "SIGSTOP"))), None   # a real process
    try:
        assert (out / "checkpoint.pth").is_file()
        for again in (["--out", str(out), "--overwrite", "--data", str(tiny_folder), "--bs", "10", "--epochs", "2"],
                      ["--resume", str(out)]):
            p = cli(["train", *again])
            assert p.returncode == 2 and f"process {first.pid}" in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert state(first.pid) == "T"                                    # the first run was not disturbed
        first.send_signal(signal.SIGKILL)                                 # dies holding the folder
        ended = first.wait(timeout=60)
        assert ended.returncode == -signal.SIGKILL
    finally:
        if ended is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
    p = fork_server.run(["train", "--resume", str(out)])                  # the lock died with it
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Resuming" in p.stdout and (out / "final.json").is_file()
    assert not [f for f in out.parent.iterdir() if f.name.startswith(".run.")]   # no lock or temporary left beside it

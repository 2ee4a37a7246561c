"""Real faults, produced for real: a second process on the same run folder, and a process killed with SIGKILL
while it held the folder."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "fastresnet.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def test_a_second_process_on_a_live_run_folder_is_refused_and_a_killed_ones_lock_is_not_stale(tiny_folder, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "fastresnet.cli", "train", "--data", str(tiny_folder), "--out",
                              str(out), "--bs", "10", "--epochs", "40", "--lr-max", "0.001", "--no-tta"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint.pth").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read()[-2000:]
        for args in (["--out", str(out), "--overwrite", "--data", str(tiny_folder), "--bs", "10", "--epochs", "2"],
                     ["--resume", str(out)]):
            p = cli(["train", *args])
            assert p.returncode == 2 and f"process {first.pid}" in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert first.poll() is None                                       # the first run was not disturbed
        first.send_signal(signal.SIGKILL)                                 # dies holding the folder
        first.wait(timeout=60)
    finally:
        if first.poll() is None: first.kill()
    p = cli(["train", "--resume", str(out)])                              # the lock died with it
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "final.json").is_file()
    assert not [f for f in out.parent.iterdir() if f.name.startswith(".run.")]   # no lock or temporary left beside it

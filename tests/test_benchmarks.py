"""The benchmarks' arithmetic and that they run: FLOPs against a hand count of the spec, the busy-machine refusal,
and a tiny per-step overhead run end to end."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import script_module
from fastresnet.model import CustomResNet

ROOT = Path(__file__).resolve().parents[1]


def common(): return script_module("benchmarks/common.py")


def test_flops_match_a_hand_count_of_the_spec():
    # multiply-adds of one 32x32 image, layer by layer: output pixels x output channels x (input channels x 3 x 3)
    prep = 32 * 32 * 64 * (3 * 9)
    convs = [32 * 32 * 128 * (64 * 9),                       # layer1 conv (pooling comes after it)
             2 * 16 * 16 * 128 * (128 * 9),                  # R1, twice
             16 * 16 * 256 * (128 * 9),                      # layer2
             8 * 8 * 512 * (256 * 9),                        # layer3 conv
             2 * 4 * 4 * 512 * (512 * 9)]                    # R2, twice
    macs = prep + sum(convs) + 512 * 10                      # + the fc layer
    assert macs == 379_261_952
    c = common()
    fwd, layers = c.forward_flops(CustomResNet())
    assert fwd == 2 * macs and len(layers) == 8
    assert c.train_flops(CustomResNet()) == 3 * 2 * macs - 2 * prep   # no input gradient for the first layer


def test_a_busy_machine_is_refused_unless_forced(monkeypatch):
    c = common()
    monkeypatch.setattr(c, "_load", lambda: (1.7, 1))
    a = SimpleNamespace(max_load=0.5, wait=0, force=False)
    with pytest.raises(SystemExit, match="machine is busy"):
        c.wait_for_idle(a)
    assert c.wait_for_idle(SimpleNamespace(max_load=0.5, wait=0, force=True)).startswith("BUSY MACHINE (--force)")
    monkeypatch.setattr(c, "_load", lambda: (0.2, 0))
    assert c.wait_for_idle(a).startswith("idle machine")


@pytest.mark.slow
def test_the_overhead_benchmark_runs_and_prints_its_table():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_overhead.py"), "--bs", "16", "--width",
                          "0.02", "--steps", "3", "--warmup", "1", "--repeats", "1", "--force", "--wait", "0"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "ms/step" not in line]
    assert len(rows) == 5 and "other processes used" in res.stdout and "data alone, ms a batch" in res.stdout


def test_the_practical_peak_is_the_convolution_flops_over_each_passs_best_time():
    peak = script_module("benchmarks/bench_cpu_peak.py").practical_peak
    times = lambda f, i, w: {"forward": f, "input grad": i, "weight grad": w}
    rows = [{"flop": 10.0, "first": True, "channels_last": times(1.0, 9.0, 2.0), "NCHW": times(2.0, 9.0, 1.0)},
            {"flop": 20.0, "first": False, "channels_last": times(4.0, 1.0, 2.0), "NCHW": times(2.0, 3.0, 5.0)}]
    # the first layer: forward 1 s + weight grad 1 s, no input grad (20 FLOP); the second: 2 + 1 + 2 s (60 FLOP)
    assert peak(rows) == pytest.approx(80 / 7)


@pytest.mark.slow
def test_the_cpu_peak_benchmark_runs_where_there_are_bf16_units_and_refuses_elsewhere():
    from fastresnet.device import cpu_native_bf16
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cpu_peak.py"), "--bs", "8", "--steps", "3",
                          "--reps", "1", "--force", "--wait", "0"], capture_output=True, text=True, timeout=600)
    if not cpu_native_bf16():
        assert res.returncode == 2 and "this CPU has no bf16 units" in res.stderr
        return
    assert res.returncode == 0, res.stderr[-2000:]
    passes = [line for line in res.stdout.splitlines() if line.startswith("| ") and " at " in line.split("|")[1]]
    kinds = [line.split("|")[1].strip() for line in res.stdout.split("by kind")[1].splitlines()[2:] if "|" in line]
    assert len(passes) == 8 * 3 - 1                                   # every convolution's passes; none for the images
    assert sorted(kinds) == sorted(["convolution", "BatchNorm", "pooling", "loss", "optimizer", "elementwise",
                                    "data and augmentation", "Python and fastai (no op)"])
    assert "practical peak" in res.stdout and "oneDNN's kernels" in res.stdout

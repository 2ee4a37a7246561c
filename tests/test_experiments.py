"The proxy comparison script: reads finished run folders, refuses unfinished ones."
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import script_module


def compare_module(): return script_module("experiments/compare.py")


def fake_run(root: Path, name: str, acc: float, tta: float | None) -> Path:
    run = root / name
    run.mkdir()
    hist = [{"epoch": e, "train_loss": 2.0 - 0.1 * e} for e in range(4)]
    (run / "metrics.json").write_text(json.dumps(hist))
    final = {"accuracy": acc} | ({"accuracy_tta": tta} if tta is not None else {})
    (run / "final.json").write_text(json.dumps(final))
    return run


def test_compare_plots_finished_runs(tmp_path):
    mod = compare_module()
    a, b = fake_run(tmp_path, "a", 0.61, 0.62), fake_run(tmp_path, "b", 0.64, None)
    runs = [mod.load_run(a), mod.load_run(b)]
    assert [r["acc"] for r in runs] == [0.61, 0.64] and runs[1]["acc_tta"] is None
    out = tmp_path / "cmp.png"
    mod.main([str(a), str(b), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_unfinished_run(tmp_path):
    run = fake_run(tmp_path, "half", 0.5, None)
    (run / "final.json").unlink()
    with pytest.raises(SystemExit, match="final.json is missing"):
        compare_module().main([str(run)])


def test_full_data_summary_groups_gpu_list_runs_by_name_and_draws_the_epoch_budget(tmp_path, capsys):
    mod = script_module("experiments/full_data_summary.py")
    def run(seed, epochs, acc, tta, crops=None):
        return {"seed": seed, "epochs": epochs, "wd": 0.8, "label_smoothing": 0.1, "wd_bn_bias": False,
                "lr_source": "minimum", "lr_max": 0.003, "train_accuracy": 0.98, "accuracy": acc, "accuracy_tta": tta,
                "accuracy_tta_crops": crops, "seconds": 100.0 * epochs}
    runs = {"default-s42": run(42, 24, 0.910, 0.915, 0.918), "default-s1": run(1, 24, 0.914, 0.917, 0.920),
            "epochs8-s42": run(42, 8, 0.880, 0.885), "epochs8-s1": run(1, 8, 0.886, 0.889),
            "page-sgd-s42": run(42, 24, 0.930, 0.935)}
    f = tmp_path / "runs.json"
    f.write_text(json.dumps({"device": "test device", "data": "d", "runs": runs}))
    png = tmp_path / "budget.png"
    mod.main([str(f), "--by", "name", "--epochs-out", str(png)])
    out = capsys.readouterr().out
    # mean of 0.910 and 0.914, spread 0.004; multi-crop mean of 0.918 and 0.920; none recorded for epochs8
    assert "| default | 2 | 0.9120 (0.0040) | 0.9160 | 0.9190 |" in out
    assert "| epochs8 | 2 | 0.8830 (0.0060) | 0.8870 | - |" in out
    assert "| page-sgd | 1 | 0.9300 (0.0000) | 0.9350 | - |" in out
    # the epoch budget: the default (24 epochs) and epochs8 only, page-sgd left out
    assert "| 8 | 2 | 0.8830 (0.0060) | 0.8870 | 800 |" in out and "| 24 | 2 | 0.9120 (0.0040) | 0.9160 | 2400 |" in out
    assert out.count("| 24 | ") == 1 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

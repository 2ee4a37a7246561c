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

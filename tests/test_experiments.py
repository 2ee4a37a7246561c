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


# ---------------------------------------------------------------- the CPU campaign (issue 34)
def campaign_run(root: Path, name: str, seed: int, acc: float, tta: float, lr_max: float = 0.002,
                 cpu: str = "Test CPU, family 6 model 1, 2 cores (avx512_bf16)") -> Path:
    "A finished run folder as docs/runs/NAME keeps it."
    from fastresnet.config import Recipe, recipe_to_ini
    d = root / name
    d.mkdir(parents=True)
    (d / "settings.ini").write_text(recipe_to_ini(Recipe(seed=seed, precision="bf16")))
    (d / "run.json").write_text(json.dumps({"data": "/x/cifar-10-batches-py", "seconds": 5400.0}))
    (d / "lr_bounds.json").write_text(json.dumps({"lr_min": lr_max / 100, "lr_max": lr_max, "rule": "minimum"}))
    (d / "metrics.json").write_text(json.dumps([{"epoch": e, "train_loss": 1.0, "train_accuracy": 0.5 + 0.1 * e,
                                                 "valid_accuracy": acc - 0.01 * (2 - e)} for e in range(3)]))
    (d / "final.json").write_text(json.dumps({"n_images": 10000, "accuracy": acc, "accuracy_tta": tta}))
    (d / "cpu.txt").write_text(f"2026-12-05 16:04:07 start {cpu}\n2026-12-05 18:00:00 resume {cpu}\n")
    return d


def test_campaign_table_means_spreads_and_verdicts_between_the_markers(tmp_path):
    mod = script_module("experiments/campaign_table.py")
    runs = tmp_path / "runs"
    for name, seed, acc, tta in [("default-bf16-s42", 42, 0.930, 0.935), ("default-bf16-s1", 1, 0.934, 0.937),
                                 ("lrmin1000-bf16-s42", 42, 0.940, 0.941), ("lrmin1000-bf16-s1", 1, 0.942, 0.945),
                                 ("ema999-bf16-s42", 42, 0.931, 0.933), ("ema999-bf16-s1", 1, 0.936, 0.939)]:
        campaign_run(runs, name, seed, acc, tta)
    ref = tmp_path / "gpu.json"
    ref.write_text(json.dumps({"runs": {"a": {"accuracy": 0.915, "accuracy_tta": 0.918},
                                        "b": {"accuracy": 0.907, "accuracy_tta": 0.913}, "c": {"accuracy": 0.5}}}))
    doc = tmp_path / "experiments.md"
    doc.write_text(f"# before\n\n{mod.BEGIN}\nstale figures\n{mod.END}\nafter\n")
    fig = tmp_path / "figures" / "campaign.png"
    fig.parent.mkdir()
    mod.main([str(runs), "--into", str(doc), "--figure", str(fig), "--reference", f"{ref}:a,b"])
    text = doc.read_text()
    assert text.startswith("# before\n\n") and text.endswith(f"{mod.END}\nafter\n") and "stale" not in text
    # per run: the percentages, the hours (run.json's 5400 s where metrics.json has no epoch times), the CPU once
    # although it started and resumed
    assert ("| default-bf16-s42 | 42 | official | bf16 | 24 | 0.002 (minimum) | 2e-05 | 70.00 | 93.00 | 93.50 | - | "
            "1.50 | Test CPU, family 6 model 1, 2 cores (avx512_bf16) |") in text
    # with them, their sum: 50:00 + 1:10:00 + 30:00 = 2.50 h, whatever run.json says (a resumed run's last session)
    timed = json.loads((runs / "ema999-bf16-s1" / "metrics.json").read_text())
    for row, t in zip(timed, ["50:00", "1:10:00", "30:00"]): row["time"] = t
    (runs / "ema999-bf16-s1" / "metrics.json").write_text(json.dumps(timed))
    mod.main([str(runs), "--into", str(doc), "--reference", f"{ref}:a,b"])
    assert "| 93.60 | 93.90 | - | 2.50 | Test CPU" in doc.read_text()
    # per configuration: mean over seeds ± the sample sd (two values: |a - b| / sqrt 2), then min-max
    # (0.930/0.934: 93.20 ± 0.28; 0.940/0.942: 94.10 ± 0.14; 0.915/0.907: 91.10 ± 0.57)
    assert "| default-bf16 | 2 | 93.20 ± 0.28 (93.00-93.40) | 93.60 | - |" in text
    assert "| lrmin1000-bf16 | 2 | 94.10 ± 0.14 (94.00-94.20) | 94.30 | - |" in text
    assert (f"| reference: the default in fp32 on the JPEG copy, GPU (a, b in {ref}) | 2 | 91.10 ± 0.57 (90.70-91.50) "
            "| 91.55 | - |") in text
    # a difference counts only beyond the larger spread: -0.90 vs 0.40; -0.15 vs 0.50; +2.10 vs 0.80
    assert "- default-bf16 minus lrmin1000-bf16: -0.90 points, larger seed spread 0.40: beyond the spread." in text
    assert ("- default-bf16 minus ema999-bf16: -0.15 points, larger seed spread 0.50: within the spread: "
            "not a result.") in text
    assert "minus reference: the default in fp32 on the JPEG copy, GPU (a, b in" in text and "+2.10 points" in text
    assert "![per-epoch test accuracy](figures/campaign.png)" in text
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mod.main([str(runs), "--into", str(doc), "--reference", f"{ref}:a,b"])     # again: the table replaced, not added
    assert doc.read_text().count("| default-bf16 | 2 |") == 1


def test_campaign_table_needs_the_markers(tmp_path):
    doc = tmp_path / "experiments.md"
    doc.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="has no line"):
        script_module("experiments/campaign_table.py").main([str(tmp_path), "--into", str(doc), "--reference", ""])
    assert doc.read_text() == "# no markers\n"


STAND_IN = """#!/usr/bin/env bash
# `fastresnet train` as the campaign calls it: its arguments recorded, the run folder given a finished run's files
echo "$*" >>"$CALLS"
prev=""; for a in "$@"; do case $prev in --out|--resume) out=$a ;; esac; prev=$a; done
mkdir -p "$out" && cp "$FINISHED"/* "$out"/
echo "epoch 24/24"
"""


def campaign_tree(tmp_path: Path) -> tuple[Path, dict]:
    "The scripts the campaign runs, in a tree of their own; a stand-in `fastresnet` on PATH."
    import os
    import shutil
    root = Path(__file__).resolve().parents[1]
    tree = tmp_path / "repo"
    (tree / "experiments").mkdir(parents=True)
    for f in ("cpu_campaign.sh", "campaign_table.py", "collect_runs.py"):
        shutil.copy(root / "experiments" / f, tree / "experiments")
    (tree / "docs" / "figures").mkdir(parents=True)
    shutil.copytree(root / "docs" / "gpu", tree / "docs" / "gpu")                # the reference runs
    mod = script_module("experiments/campaign_table.py")
    (tree / "docs" / "experiments.md").write_text(f"{mod.BEGIN}\n{mod.END}\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "fastresnet").write_text(STAND_IN)
    (tmp_path / "bin" / "fastresnet").chmod(0o755)
    (tmp_path / "data").mkdir()
    finished = campaign_run(tmp_path / "template", "x", 42, 0.93, 0.94, lr_max=0.00123)
    (finished / "cpu.txt").unlink()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "COMMIT": "0",
           "CAMPAIGN": str(tmp_path / "campaign"), "RUNS": str(tmp_path / "runs.txt"), "DATA": str(tmp_path / "data"),
           "CALLS": str(tmp_path / "calls.txt"), "FINISHED": str(finished), "CPUINFO": str(tmp_path / "cpuinfo")}
    return tree, env


def test_cpu_campaign_refuses_a_cpu_without_bf16_units(tmp_path):
    import subprocess
    tree, env = campaign_tree(tmp_path)
    Path(env["CPUINFO"]).write_text("flags\t\t: fpu avx2 fma\n")
    (tmp_path / "runs.txt").write_text("default-bf16-s42 --seed 42\n")
    p = subprocess.run(["bash", str(tree / "experiments" / "cpu_campaign.sh")], env=env, capture_output=True,
                       text=True)
    assert p.returncode == 2 and "has no bf16 units" in p.stderr and "12-13x slower" in p.stderr
    assert not Path(env["CALLS"]).exists()                                         # nothing started


def test_cpu_campaign_collects_resumes_and_starts_in_list_order(tmp_path):
    "A finished run is collected, an interrupted one resumed, a new one started with LRMAX of its `@RUN`."
    import subprocess
    tree, env = campaign_tree(tmp_path)
    Path(env["CPUINFO"]).write_text("flags\t\t: fpu avx2 avx512_bf16 amx_bf16\n")
    campaign = Path(env["CAMPAIGN"])
    done = campaign_run(campaign, "default-bf16-s42", 42, 0.93, 0.94, lr_max=0.00219)
    (done / "cpu.txt").rename(campaign / "default-bf16-s42.cpu")                   # the campaign keeps it beside
    (campaign / "default-bf16-s1").mkdir()                                         # stopped before its end
    (campaign / "default-bf16-s1" / "run.json").write_text("{}")
    (tmp_path / "runs.txt").write_text("# a comment\n\ndefault-bf16-s42 --seed 42\n"
                                       "lrmin1000-bf16-s42 --seed 42 --lr-min-div 1000 --lr-max @default-bf16-s42\n"
                                       "default-bf16-s1 --seed 1\n"
                                       "lrmin1000-bf16-s1 --seed 1 --lr-max @default-bf16-s9 --tta-crops\n")
    p = subprocess.run(["bash", str(tree / "experiments" / "cpu_campaign.sh")], env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    calls = Path(env["CALLS"]).read_text().splitlines()
    data = env["DATA"]
    assert calls == [
        f"train --data {data} --precision bf16 --out {campaign}/lrmin1000-bf16-s42 --seed 42 --lr-min-div 1000 "
        "--lr-max 0.00219",                                       # LRMAX of default-bf16-s42's range test
        f"train --resume {campaign}/default-bf16-s1",
        f"train --data {data} --precision bf16 --out {campaign}/lrmin1000-bf16-s1 --seed 1 --tta-crops"]   # no @RUN
    assert "default-bf16-s9 has no range test yet; this run does its own" in p.stdout
    runs = tree / "docs" / "runs"
    assert sorted(d.name for d in runs.iterdir()) == ["default-bf16-s1", "default-bf16-s42", "lrmin1000-bf16-s1",
                                                      "lrmin1000-bf16-s42"]
    assert sorted(f.name for f in (runs / "default-bf16-s42").iterdir()) == [
        "cpu.txt", "final.json", "lr_bounds.json", "metrics.json", "run.json", "settings.ini"]
    cpu = (runs / "default-bf16-s1" / "cpu.txt").read_text().split()
    assert cpu[2] == "resume" and "(amx_bf16 avx512_bf16)" in " ".join(cpu)
    assert "| default-bf16 | 2 | 93.00 ± 0.00 (93.00-93.00) |" in (tree / "docs" / "experiments.md").read_text()
    assert (tree / "docs" / "figures" / "campaign.png").is_file()
    again = subprocess.run(["bash", str(tree / "experiments" / "cpu_campaign.sh")], env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0 and len(Path(env["CALLS"]).read_text().splitlines()) == 3   # nothing run twice

"""The docs say what their records say: every figure the README and docs/usage.md quote from docs/runs, docs/gpu or
docs/records equals the record (experiments/doc_figures.py)."""
import re

from conftest import script_module


def test_every_quoted_figure_equals_its_record(capsys):
    figures = script_module("experiments/doc_figures.py")
    code = figures.main()
    out = capsys.readouterr().out
    assert code == 0, "\n".join(line for line in out.splitlines() if line.startswith("NOT"))
    assert len(re.findall(r"^ok ", out, re.M)) >= 20  # the claims were read, not skipped


def test_a_changed_record_turns_it_red(capsys, monkeypatch):
    figures = script_module("experiments/doc_figures.py")
    runs = dict(figures.GPU_RUNS)
    runs["wd0.8-ls0.1"] = {**runs["wd0.8-ls0.1"], "accuracy": 0.5}  # a later run that changed the record
    monkeypatch.setattr(figures, "GPU_RUNS", runs)
    assert figures.main() == 1 and "NOT README.md: results: the fp32 GPU pair" in capsys.readouterr().out


def test_every_promise_in_reliability_md_names_a_test_that_exists():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "reliability.md").read_text()
    rows = [r for r in doc.splitlines() if r.startswith("| ") and not r.startswith(("| case", "| **", "|---"))]
    unnamed = [r[:80] for r in rows if "tests/test_" not in r and "a benchmark that prints figures" not in r]
    assert len(rows) > 90 and not unnamed, unnamed
    for file, name in set(re.findall(r"tests/(test_\w+\.py)::(\w+)", doc)):
        if file == "test_file.py": continue  # the intro's pattern
        assert f"def {name}(" in (root / "tests" / file).read_text(), (file, name)

"No line over 120 characters in the package, tests, experiments and benchmarks."
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_line_over_120_characters():
    long = [f"{p.relative_to(ROOT)}:{i}" for d in ("fastresnet", "tests", "experiments", "benchmarks")
            for p in sorted((ROOT / d).glob("*.py")) for i, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120]
    assert not long, long

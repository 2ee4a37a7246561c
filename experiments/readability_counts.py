"""The counts issue 46 watches, for fastresnet/: functions with more than 6 parameters, lines holding several
statements, lines over 110 columns, nested conditional expressions, `is_main()` calls in train.py, and modules that
hold 0.1 compatibility (define the retired settings or the old-layout error, or read 0.1's records).
    python experiments/readability_counts.py"""
import ast
import collections
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fastresnet"


def counts(pkg: Path = PKG) -> dict:
    out = collections.Counter()
    compat = []
    for f in sorted(pkg.glob("*.py")):
        text = f.read_text()
        tree = ast.parse(text)
        starts = collections.Counter(n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt))
        out["lines holding several statements"] += sum(1 for n in starts.values() if n > 1)
        out["lines over 110 columns"] += sum(len(line) > 110 for line in text.splitlines())
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = n.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *([a.vararg] if a.vararg else []),
                          *([a.kwarg] if a.kwarg else [])]
                out["functions with more than 6 parameters"] += len([p for p in params if p.arg != "self"]) > 6
            if isinstance(n, ast.IfExp):
                out["nested conditional expressions"] += any(isinstance(c, ast.IfExp) for c in (n.body, n.orelse))
        if f.name == "train.py": out["is_main() in train.py"] = text.count("is_main()")
        old = r"^(def (old_layout|drop_retired)|RETIRED =)|startswith\(\"untar_data|before format 2"
        if re.search(old, text, re.M):
            compat.append(f.stem)  # defines 0.1 compatibility (calling compat.py's is not holding it)
    out["modules holding 0.1 compatibility"] = len(compat)
    return dict(out, compat_modules=compat)


if __name__ == "__main__":
    for k, v in counts().items(): print(f"{k}: {v}")

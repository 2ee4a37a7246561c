"What pyproject.toml allows must run: its floors are at least the versions the code needs."
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDS = {"torch": (2, 4),       # torch.optim.AdamW(fused=True) on the CPU: the default adam_impl
         "torchvision": (0, 19),  # built for torch 2.4
         "gradio": (6, 0)}      # serve.py: api_visibility= on events, launch(footer_links=, theme=)


def floors() -> dict:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]
    out = {}
    for req in reqs:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", req)
        if m: out.setdefault(m.group(1).lower(), []).append(tuple(int(x) for x in (m.group(2) + ".0").split(".")[:2]))
    return out


def test_dependency_floors_cover_what_the_code_uses():
    found = floors()
    for name, need in NEEDS.items():
        assert name in found, f"{name} has no floor in pyproject.toml"
        assert all(v >= need for v in found[name]), f"{name} floor {found[name]} below {need}"


def test_importing_the_package_shows_no_warning_from_fastais_own_jit_use():
    "fastai's layers call the deprecated `torch.jit.script`; a user of fastresnet is not shown that at import."
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-W", "always", "-c", "import fastresnet.learner"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "torch.jit.script" not in p.stderr, p.stderr[-2000:]

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


def test_fastresnet_adds_to_fastai_and_replaces_none_of_its_methods():
    """Importing every module, and building the distributed trainer, leaves each attribute fastai's classes had
    before as it was (fastresnet's patches add new Learner methods; its own behaviour lives in its own callbacks)."""
    import subprocess
    import sys
    code = """
import fastai.callback.progress, fastai.distributed, fastai.learner, fastai.vision.all
from fastai.callback.progress import ProgressCallback
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import Learner, Recorder
classes = [ProgressCallback, DistributedDL, DistributedTrainer, Learner, Recorder]
before = [dict(vars(c)) for c in classes]
import fastresnet.cli, fastresnet.train, fastresnet.inference, fastresnet.report, fastresnet.distributed
fastresnet.distributed._trainer()
changed = [f"{c.__name__}.{k}" for c, old in zip(classes, before) for k, v in old.items() if vars(c).get(k) is not v]
added = sorted(k for c, old in zip(classes, before) for k in vars(c) if k not in old)
print("changed:", changed, "added:", added)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "changed: []" in p.stdout, p.stdout
    assert "'fit_one_cycle_peak'" in p.stdout and "'lr_bounds'" in p.stdout   # what fastresnet adds to Learner

"""The notebooks users open are executed end to end on tiny synthetic data, so they cannot rot; what they print is
checked against answers found another way: the documented LR rule on the notebook's own range-test curve, the
one-cycle formula at each step, and test accuracy counted image by image with `learn.predict`."""
import ast
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from conftest import accuracy_by_hand

NBS = Path(__file__).resolve().parents[1] / "nbs"
MARK = "TEST-FACTS "


def run_notebook(name: str, cwd: Path, facts: tuple[str, str] | None = None, **params) -> nbformat.NotebookNode:
    """Execute a notebook with `params` set in its parameter cell; `facts` = (CODE, EXPRESSION): the expression is
    printed as JSON by a cell the test inserts after the notebook's cell that holds CODE (its own cells run as
    they are)."""
    nb = nbformat.read(NBS / name, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name} must have exactly one parameter cell"
    cells[0].source += "\n# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    if facts:
        at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and facts[0] in c.source)
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"import json\nprint({MARK!r} + json.dumps({facts[1]}))"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def facts(nb) -> dict: return json.loads(printed(nb).split(MARK, 1)[1].splitlines()[0])


def images_in(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_notebooks_run_in_order(tiny_folder, tmp_path):
    nb1 = run_notebook("01_lr_find.ipynb", tmp_path, DATA=str(tiny_folder), SUBSET=None, BS=10, LR_FIND_ITERS=8,
                       facts=("learn.lr_find(", "{'lrs': [float(x) for x in learn.recorder.lrs], "
                              "'losses': [float(x) for x in learn.recorder.losses], 'num_it': num_it}"))
    assert images_in(nb1) >= 3                                   # two show_batch grids and the LR curve
    curve = facts(nb1)
    n = curve["num_it"]                                          # README's rule, as fastai's `minimum` reads the curve:
    lrs, losses = curve["lrs"][n // 10:-5], curve["losses"][n // 10:-5]       # from num_it // 10 to the 5th last,
    losses = losses[:next((i for i, x in enumerate(losses) if x != x), len(losses))]   # up to a NaN
    lr_max = lrs[int(np.argmin(losses))] / 10                    # LRMAX = (LR of the lowest loss) / 10
    m = re.search(r"fastresnet train --lr-max (\S+) --lr-min (\S+)", printed(nb1))
    assert m and float(m[1]) == pytest.approx(lr_max, rel=1e-3) and float(m[2]) == pytest.approx(lr_max / 100,
                                                                                                rel=1e-3)
    nb2 = run_notebook("02_train.ipynb", tmp_path, DATA=str(tiny_folder), SUBSET=None, BS=10, EPOCHS=2, PEAK_EPOCH=1,
                       LR_MAX=0.003, facts=("learn.fit_one_cycle_peak(", "[float(x) for x in learn.recorder.lrs]"))
    assert (tmp_path / "model.pkl").is_file() and images_in(nb2) >= 3
    assert "LRMAX 0.003, LRMIN 3e-05" in printed(nb2)              # LRMIN = LRMAX / 100
    # the one cycle: 4 batches an epoch, 8 steps; LRMIN up to LRMAX at step 4 (end of epoch 1), down to LRMIN at 7
    lo, hi = 3e-5, 3e-3
    want = [lo + (hi - lo) * s / 4 for s in range(5)] + [hi - (hi - lo) * (s - 4) / 3 for s in range(5, 8)]
    assert facts(nb2) == pytest.approx(want, rel=1e-6)
    nb3 = run_notebook("03_inspect.ipynb", tmp_path, DATA=str(tiny_folder), MODEL=str(tmp_path / "model.pkl"))
    assert images_in(nb3) >= 2
    hand = accuracy_by_hand(tmp_path / "model.pkl", tiny_folder / "test")
    assert f"accuracy {hand['accuracy']:.4f}, with flip-TTA {hand['accuracy_tta']:.4f}" in printed(nb3)
    shown = next(o["data"]["text/plain"] for c in nb3.cells if "per_class" in c.source for o in c.outputs
                 if o.get("data", {}).get("text/plain", "").startswith("{"))
    assert ast.literal_eval(shown) == {c: round(v, 3) for c, v in hand["per_class"].items()}   # per-class accuracy
    assert not (tmp_path / "models").exists()  # the range test's scratch folder is not left behind
    warned = [o.get("text", "") for nb in (nb1, nb2, nb3) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.get("name") == "stderr"]
    assert not any("torch.jit.script" in w for w in warned), warned  # fastai's chatter, not for our readers

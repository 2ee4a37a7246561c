"""The notebooks users open are executed end to end on tiny synthetic data, so they cannot rot."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = Path(__file__).resolve().parents[1] / "nbs"


def run_notebook(name: str, cwd: Path, **params) -> nbformat.NotebookNode:
    nb = nbformat.read(NBS / name, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name} must have exactly one parameter cell"
    cells[0].source += "\n# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def images_in(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_notebooks_run_in_order(tiny_folder, tmp_path):
    nb1 = run_notebook("01_lr_find.ipynb", tmp_path, DATA=str(tiny_folder), SUBSET=None, BS=10, LR_FIND_ITERS=8)
    assert images_in(nb1) >= 3                                   # two show_batch grids and the LR curve
    assert any("fastresnet train --lr-max" in o.get("text", "") for c in nb1.cells if c.cell_type == "code"
               for o in c.outputs)
    nb2 = run_notebook("02_train.ipynb", tmp_path, DATA=str(tiny_folder), SUBSET=None, BS=10, EPOCHS=2, PEAK_EPOCH=1,
                       LR_MAX=0.003)
    assert (tmp_path / "model.pkl").is_file() and images_in(nb2) >= 3
    nb3 = run_notebook("03_inspect.ipynb", tmp_path, DATA=str(tiny_folder), MODEL=str(tmp_path / "model.pkl"))
    assert images_in(nb3) >= 2
    assert not (tmp_path / "models").exists()  # the range test's scratch folder is not left behind
    warned = [o.get("text", "") for nb in (nb1, nb2, nb3) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.get("name") == "stderr"]
    assert not any("torch.jit.script" in w for w in warned), warned  # fastai's chatter, not for our readers

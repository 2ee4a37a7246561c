"""A trained model where users take models next: an ONNX file that onnxruntime runs alone (no torch, no fastai), and
a folder that a Hugging Face model repository holds (model card, weights, config.json, the ONNX file if asked).

The ONNX file takes images as `numpy.asarray` gives a PIL image, a batch of any size: uint8, (batch, size, size, 3),
RGB, 0-255. The scaling and normalisation the model was trained with are inside it; it gives the class probabilities
and the logits, and its metadata names the classes. Needs the optional extra: pip install "fastresnet[export]".

Only torch is imported with it (fastai when a function needs a learner's parts): `Classifier` serves plain torch too.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import Recipe, UserError
from .folder import (FINAL, LR_BOUNDS, METRICS_JSON, RUN_JSON, WEIGHTS, atomic_write, read_json_or_none, run_data,
                     umask_mode)

__all__ = ["Classifier", "require_onnx", "onnx_bytes", "export_onnx", "write_hub", "check_hub_config", "model_card",
           "hub_config", "MODEL_ONNX", "HUB_CONFIG", "HUB_FILES", "ONNX_SNIPPET", "EXTRA"]

MODEL_ONNX, HUB_CONFIG, CARD = "model.onnx", "config.json", "README.md"
HUB_FILES = {CARD, HUB_CONFIG, WEIGHTS, MODEL_ONNX}  # all a Hub folder of ours holds; `--overwrite` replaces no other
HUB_FORMAT = "fastresnet-hub-1"  # config.json's `format`: how fastresnet knows a folder it wrote
INPUT, OUTPUTS = "image", ("probabilities", "logits")
EXTRA = 'pip install "fastresnet[export]" (in a clone: pip install -e ".[export]")'

# How a user runs the ONNX file: the README shows this text and the model card holds it; a test runs it as written.
ONNX_SNIPPET = '''\
import json
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

session = ort.InferenceSession("model.onnx")
meta = session.get_modelmeta().custom_metadata_map
classes, size = json.loads(meta["classes"]), int(meta["image_size"])

def pixels(path):  # as fastresnet reads an image: upright, RGB, size x size (bilinear), uint8 (height, width, 3)
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return np.asarray(im.resize((size, size), Image.BILINEAR))

probs = session.run(["probabilities"], {"image": np.stack([pixels(p) for p in ["cat.png"]])})[0]
for p in probs: print(classes[p.argmax()], f"{p.max():.4f}")
'''


def input_doc(size: int) -> str:
    "What the ONNX file's input is, in words (its metadata, config.json and the model card say it alike)."
    return (f"uint8 (batch, {size}, {size}, 3): RGB, 0-255, as numpy.asarray(PIL image) gives it; resize to "
            f"{size}x{size} with PIL's bilinear filter first, as fastresnet does. Scaling and normalisation are "
            "inside.")


class Classifier(nn.Module):
    """The network behind its input pipeline: uint8 RGB images (batch, H, W, 3) in, class probabilities and
    logits out; the scaling and normalisation are fastai's `IntToFloatTensor` and `Normalize`, as the Learner
    applies them."""
    def __init__(self, net: nn.Module, stats: list[list[float]]):
        super().__init__()
        self.net = net
        mean, std = (torch.tensor(s, dtype=torch.float32).view(1, 3, 1, 1) for s in stats)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).float() / 255
        logits = self.net((x - self.mean) / self.std)
        return logits.softmax(1), logits


def require_onnx() -> None:
    "onnx and onnxscript (torch's exporter), onnxruntime (which checks the file): or one paragraph naming the extra."
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"Exporting to ONNX needs {' and '.join(missing)}, which the optional extra brings: {EXTRA}.")


def _classifier(learn) -> Classifier:
    "A copy of the learner's network (fp32, eval mode, on the CPU) behind its input pipeline."
    from .device import unwrap
    from .learner import norm_stats
    net = copy.deepcopy(unwrap(learn.model)).float().eval().to("cpu", memory_format=torch.contiguous_format)
    return Classifier(net, norm_stats(learn)).eval()


def onnx_bytes(learn) -> bytes:
    """The learner's model as an ONNX file (torch.export through torch's ONNX exporter; the batch dimension
    dynamic), checked against the network on a batch of random images by onnxruntime before it is returned."""
    require_onnx()
    import onnx
    import onnxruntime as ort
    from .inference import image_size
    model, size, vocab = _classifier(learn), image_size(learn), list(learn.dls.vocab)
    example = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():  # the exporter's notes on its own internals are not the user's business
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=list(OUTPUTS),
                                    dynamic_shapes={INPUT: {0: torch.export.Dim("batch", min=1)}}, verbose=False)
    proto = program.model_proto
    proto.graph.input[0].doc_string = input_doc(size)
    proto.doc_string = f"fastresnet {__version__} CustomResNet: class probabilities and logits for {len(vocab)} classes"
    recipe = getattr(learn, "recipe", None) or Recipe()
    onnx.helper.set_model_props(proto, {
        "classes": json.dumps(vocab), "image_size": str(size), "input": input_doc(size),
        "outputs": "probabilities (softmax) and logits: (batch, classes), in the order of `classes`",
        "normalisation": json.dumps({"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}),
        "width": f"{recipe.width:g}", "fastresnet": __version__})
    data = proto.SerializeToString()
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run([OUTPUTS[0]], {INPUT: example.numpy()})[0]
    with torch.inference_mode():
        want = model(example)[0].numpy()
    if not np.allclose(got, want, atol=1e-4):  # a fault of the exporter's, never of the user's: loud, not a file
        raise RuntimeError(f"The ONNX file's probabilities differ from the network's by {np.abs(got - want).max():.3g}"
                           ".")
    return data


def export_onnx(learn, path: str | Path) -> Path:
    "The learner's model as an ONNX file at `path` (written atomically: a complete file or none)."
    path = Path(path)
    if path.suffix != ".onnx":
        raise UserError(f"--onnx {path}: name the file with the .onnx suffix.")
    if path.is_dir():
        raise UserError(f"--onnx {path} is a folder; give a file name, e.g. {path / MODEL_ONNX}.")
    if not path.parent.is_dir():
        raise UserError(f"--onnx {path}: the folder {path.parent} does not exist.")
    data = onnx_bytes(learn)
    atomic_write(path, lambda f: f.write(data))
    return path


# ---------------------------------------------------------------- the Hugging Face folder
def hub_config(learn, recipe: Recipe) -> dict:
    "config.json: what plain torch needs to rebuild and feed the network, and the recipe it was trained with."
    from .inference import image_size
    from .learner import norm_stats
    return {"format": HUB_FORMAT, "architecture": "CustomResNet", "fastresnet": __version__,
            "classes": list(learn.dls.vocab), "image_size": image_size(learn), "stats": norm_stats(learn),
            "input": input_doc(image_size(learn)), "recipe": dataclasses.asdict(recipe)}


def check_hub_config(folder: Path, vocab: list[str], recipe: Recipe, stats: list) -> None:
    """A Hub folder's config.json against its weights' own record (classes, width, size, normalisation): a folder whose
    two disagree (one edited by hand, or copied from another model) is refused, never guessed at."""
    path = Path(folder) / HUB_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}).") from None
    if not isinstance(cfg, dict) or cfg.get("format") != HUB_FORMAT:
        return  # another program's config: not ours
    have = {"classes": cfg.get("classes"), "image_size": cfg.get("image_size"), "stats": cfg.get("stats"),
            "width": (cfg.get("recipe") or {}).get("width")}
    want = {"classes": list(vocab), "image_size": recipe.size, "stats": stats, "width": recipe.width}
    wrong = [k for k in want if want[k] is not None and have[k] != want[k]]
    if wrong:
        raise UserError(f"{path} says {wrong[0]} {str(have[wrong[0]])[:60]}, but the {WEIGHTS} beside it was trained "
                        f"with {str(want[wrong[0]])[:60]}: the folder's files belong to different models. Export the "
                        "folder again (fastresnet export RUN --hub DIR --overwrite).")


def _hub_entries(out: Path, overwrite: bool) -> None:
    "A Hub folder is written only where nothing else is lost: a new or empty folder, or (`overwrite`) one of ours."
    if out.exists() and not out.is_dir():
        raise UserError(f"--hub {out} is a file, not a folder.")
    entries = sorted(p.name + "/" * p.is_dir() for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    cfg = read_json_or_none(out / HUB_CONFIG) if (out / HUB_CONFIG).is_file() else None
    foreign = [e for e in entries if e not in HUB_FILES or (out / e).is_symlink()]
    if foreign or not (isinstance(cfg, dict) and cfg.get("format") == HUB_FORMAT):
        shown = ", ".join((foreign or entries)[:6]) + (f" and {len(foreign or entries) - 6} more"
                                                       if len(foreign or entries) > 6 else "")
        raise UserError(f"--hub {out} already holds files that fastresnet did not write there ({shown}), so nothing in "
                        "it is touched.", hint="Give a new or empty folder.")
    if not overwrite:
        raise UserError(f"--hub {out} already holds a model folder.",
                        hint="Add --overwrite to replace it, or give another folder.")


def _put_folder(out: Path, files: dict[str, bytes]) -> None:
    """`files` as the folder `out`: written beside it, then renamed into place (an old folder of ours is swapped out
    and removed only then), so `out` is the old folder or the new one, never half of each. An empty folder (perhaps a
    mount point, which cannot be renamed) gets the files in place, each written atomically."""
    if out.is_dir() and not any(out.iterdir()):
        for name, data in files.items():
            atomic_write(out / name, lambda f, d=data: f.write(d))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        os.chmod(tmp, umask_mode(0o777))
        for name, data in files.items():
            atomic_write(tmp / name, lambda f, d=data: f.write(d))
        if not out.exists():
            os.replace(tmp, out)
        else:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)  # the previous folder back where it was
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_hub(learn, weights: str | Path, out: str | Path, onnx: bool = False, overwrite: bool = False) -> list[str]:
    """The folder a Hugging Face model repository holds, at `out`: README.md (a model card with the run's own
    figures), the run's model.safetensors as it is, config.json, and model.onnx if `onnx`. `weights` is the
    run's weights file (or a trusted pickle's path, whose weights are saved afresh); its run folder must hold
    final.json. Returns the names written."""
    from .learner import read_weights, save_weights
    weights, out = Path(weights), Path(out)
    run_dir = weights.parent
    final = read_json_or_none(run_dir / FINAL)
    if final is None:
        raise UserError(f"{run_dir} holds no {FINAL}: the model card quotes the run's own test figures, so --hub "
                        "needs a finished run folder (fastresnet train writes final.json at its end).")
    _hub_entries(out, overwrite)
    if onnx:
        require_onnx()
    if weights.suffix == ".safetensors":
        recipe, raw = read_weights(weights)[2], weights.read_bytes()  # the file as the run wrote it, checksum and all
    else:
        buf = Path(tempfile.mkdtemp()) / WEIGHTS
        save_weights(learn, buf)
        recipe, raw = learn.recipe, buf.read_bytes()
        shutil.rmtree(buf.parent)
    files = {CARD: model_card(learn, recipe, run_dir, onnx).encode(), WEIGHTS: raw,
             HUB_CONFIG: (json.dumps(hub_config(learn, recipe), indent=2) + "\n").encode()}
    if onnx:
        files[MODEL_ONNX] = onnx_bytes(learn)
    _put_folder(out, files)
    return sorted(files)


def _fence(lang: str, code: str) -> str:
    return f"```{lang}\n{code.rstrip()}\n```"


TORCH_SNIPPET = '''\
import json
import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file
from fastresnet.model import CustomResNet  # the network alone: a torch.nn.Module (pip install fastresnet)

config = json.load(open("config.json"))
net = CustomResNet(n_out=len(config["classes"]), width=config["recipe"]["width"]).eval()
net.load_state_dict(load_file("model.safetensors"))
mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in config["stats"])
size = config["image_size"]
im = ImageOps.exif_transpose(Image.open("cat.png")).convert("RGB").resize((size, size), Image.BILINEAR)
x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255  # (1, 3, size, size), 0-1
with torch.inference_mode(): probs = net((x - mean) / std).softmax(1)[0]
print(config["classes"][int(probs.argmax())], f"{float(probs.max()):.4f}")
'''


def _card_facts(learn, r: Recipe, run_dir: Path) -> dict[str, str]:
    "The model card's sentences about the run, from its own files (those it lacks are left out)."
    from .inference import image_size
    from .learner import norm_stats
    info, bounds = read_json_or_none(run_dir / RUN_JSON) or {}, read_json_or_none(run_dir / LR_BOUNDS)
    epochs = len(read_json_or_none(run_dir / METRICS_JSON) or []) or r.epochs
    size, data = image_size(learn), run_data(info)
    source = "the LR range test, rule " + bounds["rule"] if bounds and bounds["rule"] != "given" else "given"
    stats = norm_stats(learn)
    augment = f"cropped to {size} after padding {r.pad}" + ", flipped" * r.flip
    augment += f", Cutout {r.cutout}x{r.cutout}" * bool(r.cutout)
    subset = f" (a class-balanced subset of {info['subset']})" if info.get("subset") else ""
    trained = [f"on {info['device']}" * bool(info.get("device")), f"in {info['seconds']:.0f} s" * bool(info.get(
        "seconds")), f"with fastresnet {info.get('fastresnet', __version__)}", f"torch {info['torch']}" * bool(
        info.get("torch"))]
    return {"data": "CIFAR-10 (fastai's download)" if data in (None, "cifar10") else f"`{Path(data).name}`",
            "n_train": f"{info['n_train']:,}" if "n_train" in info else "?", "subset": subset,
            "epochs": str(epochs), "augment": augment, "trained": ", ".join(t for t in trained if t),
            "bounds": f"LRMAX {bounds['lr_max']:.4g} ({source}), LRMIN {bounds['lr_min']:.4g}" if bounds else
            "LR bounds not recorded", "stats": f"mean {[round(x, 4) for x in stats[0]]} and std "
            f"{[round(x, 4) for x in stats[1]]}"}


def model_card(learn, recipe: Recipe, run_dir: Path, onnx: bool) -> str:
    "README.md of the Hub folder: the run's figures (final.json), its recipe and data, and three ways to load it."
    from .data import CIFAR_CLASSES
    from .device import unwrap
    from .inference import image_size
    final, f, r = read_json_or_none(run_dir / FINAL), _card_facts(learn, recipe, run_dir), recipe
    vocab, size = list(learn.dls.vocab), image_size(learn)
    n_params = sum(p.numel() for p in unwrap(learn.model).parameters())
    tags = ["fastresnet", "fastai", "pytorch", "safetensors"] + ["onnx"] * onnx + ["image-classification"]
    front = ["---", "pipeline_tag: image-classification", "tags:", *[f"- {t}" for t in tags]]
    front += ["datasets:", "- cifar10"] * (vocab == CIFAR_CLASSES) + ["metrics:", "- accuracy", "---", ""]
    tta = f" (flip-TTA {final['accuracy_tta']:.4f})" if final.get("accuracy_tta") is not None else ""
    per_class = "\n".join(f"| {c} | {a:.4f} |" for c, a in final["per_class"].items())
    ort_part = (_fence("python", ONNX_SNIPPET) if onnx else
                "This folder holds no `model.onnx`: `fastresnet export RUN --hub DIR --onnx` writes one.")
    return "\n".join(front) + f"""# CustomResNet (width {r.width:g}) for {len(vocab)} classes, trained with fastresnet

fastresnet's custom ResNet (a prep layer, three layers, two residual blocks, a linear head; {n_params:,} parameters),
trained with its one-cycle Adam recipe by `fastresnet train`. The figures below are the run's own (its `final.json`).

## Results

Test accuracy **{final['accuracy']:.4f}**{tta} on {final['n_images']:,} test images.

| class | accuracy |
|---|---|
{per_class}

## Data

{f['data']}: {f['n_train']} training images{f['subset']}, {final['n_images']:,} test images;
classes: {', '.join(vocab)}.
Images are {size}x{size} RGB, scaled to 0-1 and normalised with the per-channel {f['stats']}.

## Training recipe

{f['epochs']} epochs in batches of {r.bs}: {r.optimizer} (decoupled weight decay {r.wd:g}) over one cycle from LRMIN
up to LRMAX at the end of epoch {r.peak_epoch} and back; {f['bounds']}. Label smoothing {r.label_smoothing:g};
training images {f['augment']}; precision {r.precision}; seed {r.seed}. Trained {f['trained']}.
Every setting is in `config.json` (`recipe`).

## Use it

With fastresnet, from this folder (it reads `model.safetensors` and `config.json`; no pickle):

{_fence("bash", "fastresnet predict cat.png --model .")}

With onnxruntime alone (no torch, no fastai); the input is {input_doc(size)}

{ort_part}

With plain PyTorch (the network is fastresnet's `CustomResNet`, a `torch.nn.Module`):

{_fence("python", TORCH_SNIPPET)}

## Upload

From this folder, after `hf auth login`: `hf upload YOUR_NAME/REPO_NAME .` makes or updates the model repository
(in Python: `HfApi().create_repo("YOUR_NAME/REPO_NAME", exist_ok=True)`, then
`HfApi().upload_folder(repo_id="YOUR_NAME/REPO_NAME", folder_path=".")`).
"""

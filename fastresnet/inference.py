"""Using a trained learner: accuracy (with optional flip-TTA), per-class accuracy, the confusion
matrix, and predictions for image files, from an exported `.pkl` or a live Learner."""
from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.data.transforms import Normalize
from fastai.data.core import DataLoaders
from fastai.learner import Learner, load_learner
from fastai.torch_core import default_device

from .config import HintedError, Recipe, drop_retired
from .data import SIZE, CifarArrays, DataError, balanced_subset, cifar_dls, load_cifar, load_image
from .learner import build_learner, unwrap
from .run import MODEL_PKL, WEIGHTS, atomic_write
from .model import CustomResNet, old_layout

__all__ = ["INFER_BS", "FlipInputs", "ShiftInputs", "SHIFTS", "evaluate_learner", "load_pickled_learner",
           "ModelFileError",
           "predict_images", "top_classes", "iter_predictions", "image_files", "load_weights",
           "labelled_dl", "model_file", "save_weights", "norm_stats", "load_weights_learner", "load_model",
           "stub_learner", "image_size", "dls_for"]


INFER_BS = 512  # images a batch when predicting or evaluating, whatever batch the learner was built with


class ModelFileError(HintedError, ValueError):
    "A model file that cannot be loaded; the message says why."


class FlipInputs(Callback):
    "Mirror every input batch left-right: the second view of flip test-time augmentation."
    order = 1

    def before_batch(self): self.learn.xb = (self.xb[0].flip(-1),) + tuple(self.xb[1:])


class ShiftInputs(Callback):
    """Move every input batch `d` pixels right and down (left and up if negative), the edge reflected in, and mirror
    it if `flip`: one view of multi-crop test-time augmentation (a crop of the reflect-padded image, as Page's)."""
    order = 1
    def __init__(self, d: int, flip: bool = False): self.d, self.flip = d, flip

    def before_batch(self):
        x = self.xb[0].as_subclass(torch.Tensor)
        if self.d:
            a, h, w = abs(self.d), x.shape[-2], x.shape[-1]
            pad = torch.nn.functional.pad(x, (a, a, a, a), mode="reflect")
            x = pad[..., a - self.d:a - self.d + h, a - self.d:a - self.d + w]
        self.learn.xb = (x.flip(-1) if self.flip else x,) + tuple(self.xb[1:])


SHIFTS = (-1, 0, 1)  # multi-crop TTA: these diagonal shifts, each plain and mirrored: six views


def labelled_dl(learn: Learner, data: CifarArrays, split: str = "valid"):
    "A non-shuffled, unaugmented DataLoader over the chosen split, built from the learner's own pipeline."
    sl = slice(data.n_train, None) if split == "valid" else slice(0, data.n_train)
    items = list(zip(data.images[sl], [data.vocab[i] for i in data.labels[sl].tolist()]))
    return learn.dls.test_dl(items, with_labels=True, bs=INFER_BS)


def evaluate_learner(learn: Learner, dl=None, tta: bool = True, crops: bool = False) -> tuple[dict, torch.Tensor]:
    """Accuracy on `dl` (default: the validation set), with flip-TTA if asked (the mean of the
    softmax over the image and its mirror), with multi-crop TTA if `crops` (the mean over `SHIFTS` x mirror: six
    views), per-class accuracy and the confusion matrix; and the per-image test losses (plain cross-entropy),
    which `ClassificationInterpretation` needs for the top losses."""
    dl = dl if dl is not None else learn.dls.valid
    probs, targs, losses = learn.get_preds(dl=dl, with_loss=True)
    vocab = list(learn.dls.vocab)
    out = {"n_images": len(targs)}
    if tta:
        probs_flip, _ = learn.get_preds(dl=dl, cbs=[FlipInputs()])
        out["accuracy_tta"] = float(((probs + probs_flip) / 2).argmax(1).eq(targs).float().mean())
    if crops:
        views = [probs, probs_flip] if tta else [probs]
        views += [learn.get_preds(dl=dl, cbs=[ShiftInputs(d, f)])[0] for d in SHIFTS for f in (False, True)
                  if d or (f and not tta)]
        out["accuracy_tta_crops"] = float(torch.stack(views).mean(0).argmax(1).eq(targs).float().mean())
    pred = probs.argmax(1)
    out["accuracy"] = float(pred.eq(targs).float().mean())
    k = len(vocab)
    cm = torch.bincount(targs * k + pred, minlength=k * k).view(k, k)  # rows: actual, columns: predicted
    out["per_class"] = {c: float(cm[i, i] / cm[i].sum().clamp(min=1)) for i, c in enumerate(vocab)}
    out["confusion"] = cm.tolist()
    out["vocab"] = vocab
    return out, losses


def load_pickled_learner(path: str | Path) -> Learner:
    """`load_learner` with clear errors. A `.pkl` learner is a Python pickle: loading it runs code,
    so only load files you trust (or use the weights-only `.safetensors` path)."""
    path = Path(path)
    if not path.is_file(): raise ModelFileError(f"Model file {path} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = load_learner(path)
    except (UnboundLocalError, ImportError) as e:  # fastai's load_learner swallows the ImportError, then fails so
        raise ModelFileError(f"{path} needs a Python module that cannot be imported here ({type(e).__name__}: {e}). "
                             "A learner exported by `fastresnet train` needs the fastresnet package installed "
                             "(pip install -e . in the project folder); one from other code needs that code.") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, AttributeError,
            ValueError, OSError) as e:
        raise ModelFileError(f"{path} could not be loaded as a fastai learner ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}). Is it truncated, or not a "
                             "`model.pkl` written by `fastresnet train`?") from None
    if not isinstance(learn, Learner):
        raise ModelFileError(f"{path} holds a {type(learn).__name__}, not a fastai Learner.")
    if not isinstance(unwrap(learn.model), CustomResNet):
        raise ModelFileError(f"{path} is a fastai learner, but not one exported by fastresnet (its model is a "
                             f"{type(learn.model).__name__}, not a CustomResNet).")
    return learn


def save_weights(learn: Learner, path: str | Path) -> None:
    "The weights alone as safetensors (no code inside), with the class names and the recipe as metadata."
    from safetensors.torch import save
    sd = {k: v.detach().cpu().contiguous() for k, v in unwrap(learn.model).state_dict().items()}
    r = getattr(learn, "recipe", None) or Recipe(width=learn.model.width)
    meta = {"format": "fastresnet-weights-2", "vocab": json.dumps(list(learn.dls.vocab)),
            "recipe": json.dumps(dataclasses.asdict(r)), "stats": json.dumps(norm_stats(learn))}
    atomic_write(Path(path), lambda f: f.write(save(sd, metadata=meta)))


def dls_for(learn: Learner, data: str | Path | CifarArrays | None = None, subset: int | None = None,
            **changes) -> DataLoaders:
    """Data for a loaded learner: `load_learner` gives one without any (fastai exports the pipeline, not the images),
    so `validate`, `tta`, `lr_find`, `show_results`, `summary` and `fine_tune` have nothing to read until `learn.dls`
    is set.
    `data` (as for `fastresnet train --data`) is read and split as the learner's recipe read its own, normalised with
    the statistics the model was trained with, in batches of the recipe's `bs` (or of `changes`, e.g. `bs=64`).

        learn = load_learner("runs/first/model.pkl")
        learn.dls = dls_for(learn, "PATH/TO/cifar10")
        learn.validate(); learn.tta(); learn.dls.show_batch(); learn.fine_tune(2)"""
    r = (getattr(learn, "recipe", None) or Recipe()).replace(**changes)
    arrays = data if isinstance(data, CifarArrays) else load_cifar(data, r.valid_pct, r.seed, image_size(learn))
    if subset: arrays = balanced_subset(arrays, subset)
    if list(arrays.vocab) != list(learn.dls.vocab):
        raise DataError(f"The data's classes {arrays.vocab} differ from the model's {list(learn.dls.vocab)}. To "
                        "train on other classes, start from this model with a new head: cifar_learner(data, "
                        "init=MODEL) in Python, or fastresnet train --data DATA --init MODEL.")
    arrays = dataclasses.replace(arrays, stats=tuple(norm_stats(learn)))
    return cifar_dls(arrays, r, device=default_device())


def norm_stats(learn: Learner) -> list[list[float]]:
    "The (mean, std) per channel a learner's inputs are normalised with (its batch pipeline's `Normalize`)."
    n = next(t for t in learn.dls.after_batch.fs if isinstance(t, Normalize))
    return [n.mean.flatten().tolist(), n.std.flatten().tolist()]


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    "Weights from a `.safetensors` file into `model`."
    from safetensors.torch import load_file
    model.load_state_dict(_named(load_file(path), path))


def _named(sd: dict, path) -> dict:
    "A state dict with today's layer names; one with positional keys (`1.1.res.0.0.weight`) is refused."
    if next(iter(sd), "x")[:1].isdigit(): raise old_layout(str(path))
    return sd


def _recipe(meta: dict, path) -> Recipe:
    "The recipe a weights file was trained with (only the width in files before format 2)."
    saved = json.loads(meta["recipe"]) if "recipe" in meta else {k: float(meta[k]) for k in ("width", "logit_scale")
                                                                 if k in meta}
    for k in ("shape", "zero_init_residual"): saved.pop(k, None)  # retired, and only ever shaped training
    saved, known = drop_retired(saved, str(path)), {f.name for f in dataclasses.fields(Recipe)}
    return Recipe(**{k: v for k, v in saved.items() if k in known})


def load_weights_learner(path: str | Path) -> Learner:
    """A Learner for inference from a `.safetensors` file: safe to load from anyone, since no code is
    unpickled. Its recipe (model shape, loss) comes from the file; the preprocessing from the code."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.is_file(): raise ModelFileError(f"Model file {path} does not exist.")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
        vocab = json.loads(meta["vocab"])
    except (SafetensorError, KeyError, ValueError, OSError) as e:
        raise ModelFileError(f"{path} is not a fastresnet weights file ({type(e).__name__}: {e}); "
                             "is it truncated?") from None
    stats = json.loads(meta["stats"]) if "stats" in meta else None  # files before it: CIFAR-10's
    learn = stub_learner(vocab, _recipe(meta, path).replace(precision="fp32", compile=False), stats)
    try: learn.model.load_state_dict(_named(sd, path))
    except RuntimeError as e:
        raise ModelFileError(f"{path} does not hold CustomResNet weights ({str(e).splitlines()[0]}).") from None
    return learn


def stub_learner(vocab: list[str], r: Recipe, stats=None) -> Learner:
    """A Learner with the recipe's pipeline (normalised by `stats`, None: CIFAR-10's) but a blank image per class as
    data: for inference and summaries."""
    stub = CifarArrays(torch.zeros(2 * len(vocab), 3, r.size, r.size, dtype=torch.uint8),
                       torch.arange(len(vocab)).repeat(2), list(vocab), len(vocab), stats)
    return build_learner(cifar_dls(stub, r.replace(bs=len(vocab))), r)


def model_file(path: str | Path) -> Path:
    "A model file as given; for a run folder its model.safetensors (weights only, safe) if present, else its model.pkl."
    path = Path(path)
    if not path.is_dir(): return path
    for name in (WEIGHTS, MODEL_PKL):
        if (path / name).is_file(): return path / name
    raise ModelFileError(f"{path} is a folder holding neither {WEIGHTS} nor {MODEL_PKL}: is it a finished run folder?")


def load_model(path: str | Path) -> Learner:
    """A model file or a run folder (see `model_file`): `.safetensors` → weights-only loading; anything else →
    `load_learner` (a pickle: trusted files only)."""
    path = model_file(path)
    return load_weights_learner(path) if path.suffix == ".safetensors" else load_pickled_learner(path)


def predict_images(learn: Learner, images: list, bs: int = INFER_BS) -> torch.Tensor:
    """Class probabilities, one row per image, for anything `learn.predict` takes (image paths, PIL images, uint8
    arrays or tensors): the learner's own test pipeline in batches of `bs` (`get_preds` runs without autograd)."""
    return learn.get_preds(dl=learn.dls.test_dl(images, bs=bs))[0]


def image_size(learn: Learner) -> int:
    "The side of the images the model was trained on: its recipe's `size` (32 in learners from before the setting)."
    return getattr(getattr(learn, "recipe", None), "size", SIZE)


def top_classes(probs: torch.Tensor, vocab: list[str], k: int = 3) -> list[tuple[str, float]]:
    "The `k` most probable classes of one probability row, most probable first."
    p, i = probs.topk(min(k, len(vocab)))
    return [(vocab[int(j)], float(q)) for q, j in zip(p, i)]


def iter_predictions(learn: Learner, files: list[str | Path], bs: int = INFER_BS, k: int = 3):
    """Predictions file by file, in order, decoded and run `bs` files at a time. Each is a dict with `file`,
    `class`, `probability`, `top` (the `k` best (class, probability) pairs) and `notes` (e.g. "resized"), or with
    `file` and `error` for a file that cannot be read. Images of other sizes are resized to the model's."""
    vocab, size = list(learn.dls.vocab), image_size(learn)
    for start in range(0, len(files), bs):
        rows, imgs = [], []
        for f in files[start:start + bs]:
            try:
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    imgs.append(load_image(f, resize=True, size=size))
                rows.append({"file": str(f), "notes": [str(x.message) for x in w]})
            except DataError as e:
                rows.append({"file": str(f), "error": str(e)})
        probs = iter(predict_images(learn, imgs, bs) if imgs else [])
        for row in rows:
            if "error" not in row:
                top = top_classes(next(probs), vocab, k)
                row.update({"class": top[0][0], "probability": top[0][1], "top": top})
            yield row


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files to predict: each path that is a folder gives every image under it (recursively, by extension, via
    fastai's `get_image_files`, sorted); any other path is taken as it is (a missing one is reported when read)."""
    from fastai.data.transforms import get_image_files
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(get_image_files(p))
            if not found: raise DataError(f"Folder {p} holds no image files (looked recursively, by extension).")
            out += found
        else: out.append(p)
    return out

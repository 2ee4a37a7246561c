"""Using a trained learner: accuracy (with optional flip-TTA), per-class accuracy, the confusion
matrix, and predictions for image files, from an exported `.pkl` or a live Learner."""
from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.learner import Learner, load_learner

from .config import HintedError, Recipe
from .data import SIZE, CifarArrays, DataError, cifar_dls, load_image
from .learner import build_learner, unwrap
from .run import atomic_write
from .model import CustomResNet

__all__ = ["FlipInputs", "evaluate_learner", "load_pickled_learner", "ModelFileError", "predict_files",
           "labelled_dl", "save_weights", "load_weights_learner", "load_model", "stub_learner"]


class ModelFileError(HintedError, ValueError):
    "A model file that cannot be loaded; the message says why."


class FlipInputs(Callback):
    "Mirror every input batch left-right: the second view of flip test-time augmentation."
    order = 1

    def before_batch(self): self.learn.xb = (self.xb[0].flip(-1),) + tuple(self.xb[1:])


def labelled_dl(learn: Learner, data: CifarArrays, split: str = "valid"):
    "A non-shuffled, unaugmented DataLoader over the chosen split, built from the learner's own pipeline."
    sl = slice(data.n_train, None) if split == "valid" else slice(0, data.n_train)
    items = list(zip(data.images[sl], [data.vocab[i] for i in data.labels[sl].tolist()]))
    return learn.dls.test_dl(items, with_labels=True)


@torch.no_grad()
def evaluate_learner(learn: Learner, dl=None, tta: bool = True) -> tuple[dict, torch.Tensor]:
    """Accuracy on `dl` (default: the validation set), with flip-TTA if asked (the mean of the
    softmax over the image and its mirror), per-class accuracy and the confusion matrix; and the
    per-image losses, which `ClassificationInterpretation` needs for the top-loss plot."""
    dl = dl if dl is not None else learn.dls.valid
    probs, targs, losses = learn.get_preds(dl=dl, with_loss=True)
    vocab = list(learn.dls.vocab)
    out = {"n_images": len(targs)}
    if tta:
        probs_flip, _ = learn.get_preds(dl=dl, cbs=[FlipInputs()])
        out["accuracy_tta"] = float(((probs + probs_flip) / 2).argmax(1).eq(targs).float().mean())
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
    "The weights alone as safetensors (no code inside), with the class names and logit scale as metadata."
    from safetensors.torch import save
    sd = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    meta = {"vocab": json.dumps(list(learn.dls.vocab)), "logit_scale": str(getattr(learn.model, "logit_scale", 1.0)),
            "width": str(getattr(learn.model, "width", 1.0)),
            "format": "fastresnet-weights-1"}
    atomic_write(Path(path), lambda f: f.write(save(sd, metadata=meta)))


def load_weights_learner(path: str | Path) -> Learner:
    """A Learner for inference from a `.safetensors` file: safe to load from anyone, since no code is
    unpickled. The preprocessing (normalisation) is rebuilt from the code, not read from the file."""
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
    learn = stub_learner(vocab, Recipe(channels_last=False, logit_scale=float(meta.get("logit_scale", 1.0)),
                                       width=float(meta.get("width", 1.0))))
    try: learn.model.load_state_dict(sd)
    except RuntimeError as e:
        raise ModelFileError(f"{path} does not hold CustomResNet weights ({str(e).splitlines()[0]}).") from None
    return learn


def stub_learner(vocab: list[str], r: Recipe) -> Learner:
    "A Learner with the recipe's pipeline but a blank image per class as data: for inference and summaries."
    stub = CifarArrays(torch.zeros(2 * len(vocab), 3, SIZE, SIZE, dtype=torch.uint8),
                       torch.arange(len(vocab)).repeat(2), list(vocab), len(vocab))
    return build_learner(cifar_dls(stub, r.replace(bs=len(vocab))), r)


def load_model(path: str | Path) -> Learner:
    "`.safetensors` → weights-only loading; anything else → `load_learner` (a pickle: trusted files only)."
    return load_weights_learner(path) if str(path).endswith(".safetensors") else load_pickled_learner(path)


def predict_files(learn: Learner, files: list[str | Path]) -> tuple[list[dict], list[str]]:
    """Class and probability for each image file. Files that cannot be read are reported and skipped;
    images that are not 32x32 are resized (with a warning), since a prediction needs the CIFAR size."""
    imgs, ok, errors = [], [], []
    for f in files:
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                imgs.append(load_image(f, resize=True))
            ok.append((f, [str(x.message) for x in w]))
        except DataError as e:
            errors.append(str(e))
    results = []
    if imgs:
        dl = learn.dls.test_dl(imgs)
        probs, _ = learn.get_preds(dl=dl)
        vocab = list(learn.dls.vocab)
        for (f, notes), p in zip(ok, probs):
            i = int(p.argmax())
            results.append({"file": str(f), "class": vocab[i], "probability": float(p[i]), "notes": notes})
    return results, errors

"""Using a trained learner: accuracy (with optional flip-TTA and multi-crop TTA), per-class accuracy, the
confusion matrix, data for a loaded learner (`dls_for`), and predictions for image files."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.torch_core import default_device

from .config import Recipe, UserError
from .data import SIZE, ImageArrays, balanced_subset, recipe_dls, load_arrays, load_image
from .learner import norm_stats

__all__ = ["INFER_BS", "TTAView", "SHIFTS", "evaluate_learner", "labelled_dl", "dls_for",
           "predict_images", "top_classes", "iter_predictions", "image_files", "image_size"]


INFER_BS = 512  # images a batch when predicting or evaluating, whatever batch the learner was built with


class TTAView(Callback):
    """One test-time view of every input batch: moved `shift` pixels right and down (left and up if negative),
    the edge reflected in (a crop of the reflect-padded image, as Page's multi-crop TTA), and mirrored if
    `flip`."""
    order = 1  # after fastai's batch transforms have made the input, before the model sees it
    def __init__(self, shift: int = 0, flip: bool = False):
        self.d, self.flip = shift, flip

    def before_batch(self):
        x = self.xb[0].as_subclass(torch.Tensor)
        if self.d:
            a, h, w = abs(self.d), x.shape[-2], x.shape[-1]
            pad = torch.nn.functional.pad(x, (a, a, a, a), mode="reflect")
            x = pad[..., a - self.d:a - self.d + h, a - self.d:a - self.d + w]
        self.learn.xb = (x.flip(-1) if self.flip else x,) + tuple(self.xb[1:])


SHIFTS = (-1, 0, 1)  # multi-crop TTA: these diagonal shifts, each plain and mirrored: six views


def labelled_dl(learn: Learner, data: ImageArrays):
    "A non-shuffled, unaugmented DataLoader over the test split, built from the learner's own pipeline."
    test = slice(data.n_train, None)
    items = list(zip(data.images[test], [data.vocab[i] for i in data.labels[test].tolist()]))
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
        probs_flip, _ = learn.get_preds(dl=dl, cbs=[TTAView(flip=True)])
        out["accuracy_tta"] = float(((probs + probs_flip) / 2).argmax(1).eq(targs).float().mean())
    if crops:
        views = [probs, probs_flip] if tta else [probs]
        views += [learn.get_preds(dl=dl, cbs=[TTAView(d, f)])[0] for d in SHIFTS for f in (False, True)
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


def dls_for(learn: Learner, data: str | Path | ImageArrays | None = None, subset: int | None = None,
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
    arrays = data if isinstance(data, ImageArrays) else load_arrays(data, r.valid_pct, r.seed, image_size(learn))
    if subset is not None:
        arrays = balanced_subset(arrays, subset)
    if list(arrays.vocab) != list(learn.dls.vocab):
        raise UserError(f"The data's classes {arrays.vocab} differ from the model's {list(learn.dls.vocab)}. To "
                        "train on other classes, start from this model with a new head: recipe_learner(data, "
                        "init=MODEL) in Python, or fastresnet train --data DATA --init MODEL.")
    arrays = dataclasses.replace(arrays, stats=tuple(norm_stats(learn)))
    return recipe_dls(arrays, r, device=default_device())


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
            except UserError as e:
                rows.append({"file": str(f), "error": str(e)})
        probs = iter(predict_images(learn, imgs, bs) if imgs else [])
        for row in rows:
            if "error" not in row:
                top = top_classes(next(probs), vocab, k)
                row.update({"class": top[0][0], "probability": top[0][1], "top": top})
            yield row


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files to predict: each path that is a folder gives every image under it (recursively, by extension,
    via fastai's `get_image_files`, sorted); any other path is taken as it is (a missing one is reported when
    read)."""
    from fastai.data.transforms import get_image_files
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(get_image_files(p))
            if not found:
                raise UserError(f"Folder {p} holds no image files (looked recursively, by extension).")
            out += found
        else:
            out.append(p)
    return out

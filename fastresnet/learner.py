"""The recipe's Learner, made new (`recipe_learner`: data, DataBlock, CustomResNet, Adam, loss; or a trained body
with a new head) or loaded from a model file (`load_model`: an exported `.pkl`, a weights-only `.safetensors`, or a
run folder), and its weights saved alone (`save_weights`)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import warnings
import zipfile
from functools import partial
from pathlib import Path

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.data.core import DataLoaders
from fastai.data.transforms import Normalize
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.optimizer import Adam
from fastai.torch_core import default_device, rank_distrib, set_seed

from . import compat
from . import distributed as dist
from . import schedule  # noqa: F401  (patches fit_one_cycle_peak and lr_bounds onto Learner)
from .callbacks import HeadFitsData, PlainTestLoss
from .config import Recipe, UserError, load_settings
from .data import ImageArrays, balanced_subset, recipe_dls, load_arrays
# build_learner's callbacks are also found here under the names fastresnet 0.1 exported them with (fastresnet.learner.X)
from .device import (BF16, Accuracy, CompileModel, LossesToHost, Progress, SmoothLossOnDevice, check_runtime,
                     resolve_precision, unwrap)
from .folder import MODEL_PKL, WEIGHTS, atomic_write, check_zip
from .model import CustomResNet, resnet_split
from .optim import TorchAdam, TorchSGD

__all__ = ["recipe_learner", "build_learner", "load_body", "stub_learner", "load_model", "model_file", 
           "save_weights", "load_weights", "read_weights", "norm_stats", "MAX_CLASSES"]


def recipe_learner(data: str | Path | ImageArrays | None = None, settings: str | Path | Recipe | None = None,
                  path: str | Path = ".", subset: int | None = None, init: str | Path | None = None,
                  stats: tuple[list[float], list[float]] | None = None, allow_pickle: bool = False,
                  **changes) -> Learner:
    """The recipe's Learner: `data` through the DataBlock into CustomResNet, Adam and the loss, by `settings` and
    `changes`; `init`: a trained model's body with a new head (docs/usage.md, "How the code works").

        learn = recipe_learner("PATH/TO/cifar10")
        b = learn.lr_bounds()
        learn.fit_one_cycle_peak(24, b.lr_min, b.lr_max, peak_epoch=5)"""
    if isinstance(settings, Recipe):
        r = settings
    else:
        r = load_settings(settings) if settings else Recipe()
    source = load_model(init, allow_pickle) if init is not None else None
    if source is not None:  # the body's shape is the source's: its width wins over the recipe's
        width, asked = unwrap(source.model).width, changes.get("width", r.width)
        if width != asked:
            warnings.warn(f"Starting from {init}: the network's width is its {width}, not {asked}.")
        changes["width"] = width
    r = resolve_precision(r.replace(**changes))  # the recipe as this run uses it, made once
    check_runtime(r)
    arrays = data if isinstance(data, ImageArrays) else load_arrays(data, r.valid_pct, r.seed, r.size)
    if subset is not None:
        arrays = balanced_subset(arrays, subset)  # class-balanced, for smoke runs and proxies
    if source is not None and stats is None:
        stats = norm_stats(source)  # the inputs scaled as the body was trained
    if stats is not None:
        arrays = dataclasses.replace(arrays, stats=tuple(map(list, stats)))
    set_seed(r.seed)
    torch.backends.cudnn.deterministic = r.deterministic  # GPUs: bit-exact, or cuDNN's autotuned (faster) kernels
    torch.backends.cudnn.benchmark = not r.deterministic
    dls = recipe_dls(arrays, r, default_device(), bs=dist.local_batch_size(r))  # on the GPU if there is one
    dls.valid_files = arrays.valid_files  # a random split's held-out files, for the run folder (not exported)
    learn = build_learner(dls, r, path=Path(path).absolute())  # fastai joins `path` to file names: absolute, once
    if dist.world_size() > 1:
        torch.manual_seed(r.seed + rank_distrib())  # same init everywhere, own augmentation
    if source is not None:
        load_body(learn.model, source.model)
    return learn


def load_body(model: torch.nn.Module, source: torch.nn.Module) -> None:
    "Every weight of `source` but its `fc` head into `model`, whose head stays new (sized for its own classes)."
    body = {k: v for k, v in unwrap(source).state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = unwrap(model).load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise UserError(f"The model to start from does not fit this network (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}).")


def build_learner(dls: DataLoaders, r: Recipe, path: str | Path = ".") -> Learner:
    "CustomResNet + loss + Adam from the recipe, on `dls`. `path` is where fastai saves files; `learn.recipe` is `r`."
    loss = LabelSmoothingCrossEntropyFlat(eps=r.label_smoothing) if r.label_smoothing else CrossEntropyLossFlat()
    hyper = dict(mom=r.beta1_max, sqr_mom=r.beta2, eps=r.eps, decouple_wd=r.decouple_wd)
    opt = partial(Adam, **hyper) if r.adam_impl == "fastai" else partial(TorchAdam, impl=r.adam_impl, **hyper)
    if r.optimizer == "sgd":
        opt = partial(TorchSGD, mom=r.beta1_max, nesterov=r.nesterov)
    model = CustomResNet(n_out=len(dls.vocab), width=r.width, bn_momentum=r.bn_momentum)
    # Accuracy (fastai's AccumMetric) is computed once over every test prediction; under a distributed launch
    # fastai gathers them from every process (padding removed), so each test image counts once.
    learn = Learner(dls, model, loss_func=loss, opt_func=opt, metrics=Accuracy(),
                    splitter=resnet_split, wd=r.wd, wd_bn_bias=r.wd_bn_bias, path=path,
                    moms=(r.beta1_max, r.beta1_min, r.beta1_max),
                    cbs=[LossesToHost(), HeadFitsData()] + ([PlainTestLoss()] if r.label_smoothing else []))
    learn.recipe = r
    learn.recorder.train_metrics = True  # training accuracy too: the train–test gap is the overfitting signal
    learn.recorder.smooth_loss = SmoothLossOnDevice(learn.recorder.smooth_loss.beta)
    if hasattr(learn, "progress"):
        learn.remove_cb(learn.progress).add_cb(Progress())
    if r.channels_last:
        learn.add_cb(ChannelsLast())
    if r.precision == "bf16":
        learn.add_cb(BF16())
    if r.precision == "fp16":
        learn.to_fp16()
    if r.compile:
        learn.add_cb(CompileModel())
    return learn


def stub_learner(vocab: list[str], r: Recipe, stats=None) -> Learner:
    """A Learner with the recipe's pipeline (normalised by `stats`, None: CIFAR-10's) but a blank image per class as
    data: for inference and summaries."""
    blank = torch.zeros(1, 3, r.size, r.size, dtype=torch.uint8).expand(2 * len(vocab), -1, -1, -1)  # one in memory
    stub = ImageArrays(blank,
                       torch.arange(len(vocab)).repeat(2), list(vocab), len(vocab), stats)
    return build_learner(recipe_dls(stub, r, bs=len(vocab)), r)


def norm_stats(learn: Learner) -> list[list[float]]:
    "The (mean, std) per channel a learner's inputs are normalised with (its batch pipeline's `Normalize`)."
    n = next(t for t in learn.dls.after_batch.fs if isinstance(t, Normalize))
    return [n.mean.flatten().tolist(), n.std.flatten().tolist()]


# ---------------------------------------------------------------- model files
def model_file(path: str | Path) -> Path:
    """A model file as given, except a run's model.pkl with its model.safetensors beside it: that (the same
    weights, no pickle); for a run folder its model.safetensors if present, else its model.pkl."""
    path = Path(path)
    if path.name == MODEL_PKL and (path.parent / WEIGHTS).is_file():
        return path.parent / WEIGHTS
    if not path.is_dir():
        return path
    for name in (WEIGHTS, MODEL_PKL):
        if (path / name).is_file():
            return path / name
    raise UserError(f"{path} is a folder holding neither {WEIGHTS} nor {MODEL_PKL}: is it a finished run folder?")


def load_model(path: str | Path, allow_pickle: bool = False) -> Learner:
    """A model file or a run folder (see `model_file`): `.safetensors` → weights-only loading; anything else is a
    pickle (`load_learner`), which runs the code it holds: loaded only if `allow_pickle` (trusted files only)."""
    path = model_file(path)
    if not path.is_file():
        raise UserError(f"Model file {path} does not exist.")
    if path.suffix == ".safetensors":
        learn = load_weights_learner(path)
        if (path.parent / "config.json").is_file():  # a Hub folder (`fastresnet export --hub`): its config agrees
            from .export import check_hub_config
            check_hub_config(path.parent, list(learn.dls.vocab), learn.recipe, norm_stats(learn))
        return learn
    if not allow_pickle:
        raise UserError(f"{path} is not a .safetensors weights file, so it would be read with Python's pickle, which "
                        "runs whatever code the file holds; fastresnet does that only when asked. Use the "
                        f"{WEIGHTS} of its run (or the run folder) instead, or, if you trust the file (you made it, "
                        "or know who did), allow it with --allow-pickle (in Python: allow_pickle=True).")
    return load_pickled_learner(path)


def load_pickled_learner(path: str | Path) -> Learner:
    """`load_learner` with clear errors. A `.pkl` learner is a Python pickle: loading it runs code,
    so only load files you trust (or use the weights-only `.safetensors` path)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Model file {path} does not exist.")
    try:
        if zipfile.is_zipfile(path):
            check_zip(path)  # fastai exports with torch.save: a zip with CRC-32s
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = load_learner(path)
    except (UnboundLocalError, ImportError) as e:  # fastai's load_learner swallows the ImportError, then fails so
        raise UserError(f"{path} needs a Python module that cannot be imported here ({type(e).__name__}: {e}). "
                        "A learner exported by `fastresnet train` needs the fastresnet package installed "
                        "(pip install fastresnet, or pip install -e . in a clone); one from other code needs that "
                        "code.") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, AttributeError,
            ValueError, OSError) as e:
        raise UserError(f"{path} could not be loaded as a fastai learner ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}). Is it truncated, or not a "
                        "`model.pkl` written by `fastresnet train`?") from None
    if not isinstance(learn, Learner):
        raise UserError(f"{path} holds a {type(learn).__name__}, not a fastai Learner.")
    if not isinstance(unwrap(learn.model), CustomResNet):
        raise UserError(f"{path} is a fastai learner, but not one exported by fastresnet (its model is a "
                        f"{type(learn.model).__name__}, not a CustomResNet).")
    return learn


def load_weights_learner(path: str | Path) -> Learner:
    """A Learner for inference from a `.safetensors` file: safe to load from anyone, since no code is
    unpickled and everything is checked before it is used (`read_weights`). Its recipe (model shape, loss) comes from
    the file; the preprocessing from the code."""
    sd, vocab, r, stats = read_weights(path)
    learn = stub_learner(vocab, r.replace(precision="fp32", compile=False), stats)
    learn.model.load_state_dict(sd)
    return learn


MAX_CLASSES = 10_000  # a weights file naming more classes is refused before anything is allocated


def read_weights(path: str | Path) -> tuple[dict, list[str], Recipe, list | None]:
    """A `.safetensors` weights file as (state dict, classes, recipe, input statistics or None), checked before
    anything is allocated: its metadata, every tensor's name and shape against the network its recipe makes, and (from
    format 3 on) the SHA-256 `save_weights` recorded. Anything amiss is a `UserError` naming the file."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Model file {path} does not exist.")
    def bad(why):
        return UserError(f"{path} is not a usable fastresnet weights file: {why}.")
    try:
        with safe_open(path, framework="pt") as f:
            meta, shapes = f.metadata() or {}, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            vocab, r, stats = _read_meta(meta, path)
            compat.check_named(shapes, str(path))
            with torch.device("meta"):
                want = CustomResNet(len(vocab), width=r.width).state_dict()
            if shapes != {k: tuple(v.shape) for k, v in want.items()}:
                wrong = sorted(set(shapes) ^ set(want)) or [k for k in want if shapes[k] != tuple(want[k].shape)]
                raise bad(f"its tensors do not make the network its recipe names (width {r.width:g}, {len(vocab)} "
                          f"classes): e.g. {wrong[0]!r}")
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise bad(f"{type(e).__name__}: {str(e)[:120]}; is it truncated, or not a fastresnet file?") from None
    if "sha256" in meta and meta["sha256"] != _digest(meta, sd):
        raise UserError(f"{path} is damaged: its contents differ from the SHA-256 recorded when it was written (a "
                        "byte changed on the disk or in a copy). Copy it again from its source; a run's own file is "
                        "exported again by fastresnet train --resume RUN while its checkpoint.pth is there.")
    return sd, vocab, r, stats


def _read_meta(meta: dict, path) -> tuple[list[str], Recipe, list | None]:
    "A weights file's classes, recipe and input statistics, each checked (JSON of the right shape, within range)."
    def field(key, default=None):
        try:
            return json.loads(meta[key]) if key in meta else default
        except ValueError:
            raise UserError(f"{path}: its metadata `{key}` is not JSON ({meta[key]!r:.60}).") from None
    vocab, stats = field("vocab"), field("stats")
    if not (isinstance(vocab, list) and 2 <= len(vocab) <= MAX_CLASSES and all(isinstance(c, str) and c for c in vocab)
            and len(set(vocab)) == len(vocab)):
        raise UserError(f"{path}: its metadata `vocab` is {str(vocab)[:60]}, not a list of 2 to {MAX_CLASSES:,} "
                        "distinct class names.")
    if stats is not None and not (isinstance(stats, list) and len(stats) == 2 and all(
            isinstance(s, list) and len(s) == 3 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in s)
            for s in stats) and min(stats[1]) > 0):
        raise UserError(f"{path}: its metadata `stats` is {str(stats)[:60]}, not [means, stds] of 3 channels each "
                        "(finite, the stds above 0).")
    return vocab, compat.weights_recipe(meta, field("recipe"), path), stats  # stats None: files before them, CIFAR-10's


def _digest(meta: dict, sd: dict) -> str:
    "SHA-256 of the metadata (all but this digest) and of every tensor's name, type, shape and bytes, in name order."
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    "Weights from a `.safetensors` file into `model`, checked (`read_weights`)."
    model.load_state_dict(read_weights(path)[0])


def save_weights(learn: Learner, path: str | Path) -> None:
    "The weights alone as safetensors (no code inside), with the class names, the recipe and a SHA-256 as metadata."
    from safetensors.torch import save
    sd = {k: v.detach().cpu().contiguous() for k, v in unwrap(learn.model).state_dict().items()}
    r = getattr(learn, "recipe", None) or Recipe(width=learn.model.width)
    meta = {"format": "fastresnet-weights-3", "vocab": json.dumps(list(learn.dls.vocab)),
            "recipe": json.dumps(dataclasses.asdict(r)), "stats": json.dumps(norm_stats(learn))}
    meta["sha256"] = _digest(meta, sd)  # `read_weights` checks it: a changed byte is refused, never used
    atomic_write(Path(path), lambda f: f.write(_sorted_header(save(sd, metadata=meta))))


def _sorted_header(raw: bytes) -> bytes:
    "A safetensors file with its header's keys sorted (the writer orders metadata at random): same run, same bytes."
    n = int.from_bytes(raw[:8], "little")
    text = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return raw[:8] + text.ljust(n) + raw[8 + n:] if len(text) <= n else raw  # the header's length kept


def __getattr__(name):  # the names of 0.3 and before, which exported learners hold (compat.py)
    from .compat import renamed
    return renamed(__name__, name)

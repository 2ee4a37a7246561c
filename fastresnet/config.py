"""The recipe's settings: the `Recipe` dataclass is the one source of defaults.

The packaged `settings.ini` is generated from it (`python -m fastresnet.config > fastresnet/settings.ini`;
a test fails if the shipped file differs), so a copy of it is a complete, commented recipe to edit
and pass back with `--settings FILE`. Standard library only: `fastresnet --help` stays instant.
"""
from __future__ import annotations

import configparser
import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import compat

__all__ = ["Recipe", "UserError", "BOOLS", "SECTIONS", "PACKAGED_SETTINGS", "load_settings",
           "recipe_to_ini", "ini_value", "parse_setting", "peak_for", "check_cycle", "RECIPES", "recipe_file"]

PACKAGED_SETTINGS = Path(__file__).with_name("settings.ini")
RECIPES = Path(__file__).with_name("recipes")  # named settings files: `--recipe NAME`


class UserError(Exception):
    """Every error fastresnet raises for something its user can fix: a setting or flag, the data, a model file, a run
    folder, a full disk (`disk_full`), a diverged run. `message` says it in the library's terms (it survives fastai
    prefixing a callback's name to `args`); `hint` is the flag advice the `fastresnet` command adds."""
    def __init__(self, message: str, hint: str | None = None, disk_full: bool = False):
        super().__init__(message)
        self.message, self.hint, self.disk_full = message, hint, disk_full


def setting(section: str, default: Any, help: str, lr_find: bool = True, **check: Any) -> Any:
    "A Recipe field: its settings.ini section, default, help, range or choices; `lr_find=False`: unused by lr-find."
    return field(default=default, metadata=dict(section=section, help=help, lr_find=lr_find, **check))


@dataclass
class Recipe:
    "Every number the recipe uses, by settings.ini section."
    # [train]
    bs: int = setting("train", 512, "batch size", min=1, max=65536)
    epochs: int = setting("train", 24, "total epochs (at least one up to LRMAX and one down)", lr_find=False, min=2,
                          max=10000)
    peak_epoch: int = setting("train", 5, "the LR peaks at the end of this epoch; a run of other length "
                              "without it peaks at 5/24 of the epochs, rounded half up", lr_find=False, min=1)
    seed: int = setting("train", 42, "random seed for init, shuffling and augmentation", min=0,
                     max=2**32 - 1)  # numpy's seeds end there
    valid_pct: float = setting("train", 0.2, "data as one folder of class folders (no train/ and test/): the share "
                               "of each class held out for testing (0.2: 20%), drawn with `seed`", min=0.01, max=0.9)
    size: int = setting("train", 32, "images are resized to size x size pixels when the data is read (32: CIFAR's own; "
                         "at least 32, which the network's pooling stages need)", min=32, max=512)
    freeze_epochs: int = setting("train", 1, "fine-tuning (--init): epochs training the new head alone before the "
                                 "whole net trains for `epochs` (fastai's fine_tune)", lr_find=False, min=0,
                                 max=10000)
    # [optimizer]
    optimizer: str = setting("optimizer", "adam", "adam (the spec), or sgd: torch's SGD as Page's ResNet-9 "
                             "baseline (momentum beta1_max, L2 decay)",
                             choices=("adam", "sgd"))
    wd: float = setting("optimizer", 0.8, "weight decay; decoupled, it shrinks decayed weights by lr*wd a step "
                        "(why 0.8: docs/experiments.md section 7)", min=0.0)
    decouple_wd: bool = setting("optimizer", True, "AdamW-style decoupled decay (true) or L2 in the gradient (false)")
    wd_bn_bias: bool = setting("optimizer", False, "also decay BatchNorm weights and biases (fastai's wd_bn_bias)")
    beta1_max: float = setting("optimizer", 0.95, "Adam beta1 (SGD: momentum) at LRMIN; cycled down to beta1_min at "
                               "LRMAX",
                               min=0.0, max=1.0)
    beta1_min: float = setting("optimizer", 0.85, "Adam beta1 at LRMAX; equal to beta1_max for no cycling",
                               min=0.0, max=1.0)
    beta2: float = setting("optimizer", 0.99, "Adam beta2", min=0.0, max=1.0)
    eps: float = setting("optimizer", 1e-5, "Adam epsilon", min=0.0)
    adam_impl: str = setting("optimizer", "fused", "Adam's code: torch's fused or foreach AdamW kernels, "
                             "or fastai's own Adam (slower)", choices=("fused", "foreach", "fastai"))
    nesterov: bool = setting("optimizer", True, "SGD only: Nesterov momentum (Page's baseline) or plain momentum")
    ema: float = setting("optimizer", 0.0, "decay of an average of the weights, tested and exported instead of "
                         "the last ones (0: off; e.g. 0.999)", lr_find=False, min=0.0, max=0.99999)
    ema_warmup: int = setting("optimizer", 1, "epochs of training before the average starts (its first update copies "
                              "the weights)", lr_find=False, min=0, max=10000)
    # [schedule]
    lr_max: float | None = setting("schedule", None, "LRMAX; auto: from the LR range test by lr_rule",
                                   lr_find=False, above=0.0)
    lr_min: float | None = setting("schedule", None, "LRMIN; auto: LRMAX / lr_min_div", lr_find=False, above=0.0)
    lr_rule: str = setting("schedule", "minimum", "fastai's lr_find suggestion taken as LRMAX: minimum (LR of the "
                           "lowest smoothed loss / 10), steep, valley or slide",
                           choices=("minimum", "steep", "valley", "slide"))
    lr_end: float | None = setting("schedule", None, "LR at the last step; auto: LRMIN, as the spec has it (no "
                                   "annihilation). Other published schedules end lower (e.g. 1.8e-7 for LRMAX 0.018)",
                                   lr_find=False, above=0.0)
    lr_min_div: float = setting("schedule", 100.0, "LRMIN = LRMAX / lr_min_div", min=1.0)
    lr_find_iters: int = setting("schedule", 100, "batches the LR range test runs", min=6, max=100000)
    lr_find_passes: float = setting("schedule", 8.0, "on small data, the range test stops after this many passes "
                                    "over the training images (30 batches at least; docs/usage.md)", min=0.1,
                                    max=100000.0)
    lr_find_start: float = setting("schedule", 1e-6, "LR range test start", min=0.0)
    lr_find_end: float = setting("schedule", 10.0, "LR range test end", min=0.0)
    # [augment]
    pad: int = setting("augment", 4, "padding before the random 32x32 crop", min=0, max=64)
    pad_mode: str = setting("augment", "zeros", "how the padding is filled", choices=("zeros", "reflect"))
    flip: bool = setting("augment", True, "random horizontal flip")
    cutout: int = setting("augment", 8, "side of the Cutout square; 0 disables it", min=0, max=512)
    # [model]
    width: float = setting("model", 1.0, "multiplier on every channel count (1: the spec; 0.25 or 0.5: cheaper "
                           "proxies)",
                           min=0.01, max=4.0)
    bn_momentum: float = setting("model", 0.1, "BatchNorm momentum: the weight of each new batch in the running "
                                 "statistics the test uses (torch's convention and default)", lr_find=False,
                                 min=0.0, max=1.0)
    label_smoothing: float = setting("model", 0.1, "label smoothing of the training loss (0: plain cross-entropy; "
                                     "test losses are always plain cross-entropy)", min=0.0, max=0.5)
    channels_last: bool = setting("model", True, "channels_last memory format (faster convolutions)")
    # [eval]
    tta: bool = setting("eval", True, "also report flip test-time augmentation (a second test pass)", lr_find=False)
    tta_crops: bool = setting("eval", False, "also report multi-crop TTA: one-pixel diagonal shifts (-1, 0, +1) x "
                              "mirror, six test passes (docs/experiments.md)", lr_find=False)
    # [runtime]
    precision: str = setting("runtime", "auto", "auto: bf16 where the hardware has it (a GPU, or a CPU with bf16 "
                             "units), else fp32; or fp32, bf16, fp16 (GPUs)",
                             choices=("auto", "fp32", "bf16", "fp16"))
    deterministic: bool = setting("runtime", False, "GPUs: bit-exact cuDNN kernels (slower) instead of autotuned ones; "
                                  "CPU runs are exact either way")
    valid_every: int = setting("runtime", 1, "test-set pass every N epochs (0: after the last only)", lr_find=False,
                               min=0, max=10000)
    sync_bn: bool = setting("runtime", False, "distributed runs: BatchNorm statistics over the global batch",
                            lr_find=False)
    compile: bool = setting("runtime", False, "torch.compile the model for training (off: 1.03-1.06x, "
                            "docs/benchmarks.md)", lr_find=False)
    tensorboard: bool = setting("runtime", False, "write TensorBoard event files into the run folder (the "
                                "[tensorboard] extra; `tensorboard --logdir runs`)", lr_find=False)
    keep_checkpoint: bool = setting("runtime", True, "keep checkpoint.pth once the run has finished (false: removed "
                                    "after the export; the weights stay in model.safetensors)", lr_find=False)

    def validate(self) -> "Recipe":
        "Check ranges and cross-field rules; raise `UserError` naming the offending value."
        for f in fields(self):
            v, md = getattr(self, f.name), f.metadata
            if v is None:
                continue  # auto: derived when the run knows it
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"`{f.name}` is {v}, but it must be a finite number ({md['help']}).")
            if "min" in md and v < md["min"]:
                raise UserError(f"`{f.name}` is {v}, but it must be at least {md['min']} ({md['help']}).")
            if "above" in md and v <= md["above"]:
                raise UserError(f"`{f.name}` is {v}, but it must be above {md['above']} ({md['help']}).")
            if "max" in md and v > md["max"]:
                raise UserError(f"`{f.name}` is {v}, but it must be at most {md['max']} ({md['help']}).")
            if "choices" in md and v not in md["choices"]:
                raise UserError(f"`{f.name}` is {v!r}; choose one of {', '.join(md['choices'])}.")
        check_cycle(self.epochs, self.peak_epoch, self.lr_min, self.lr_max, self.lr_end)
        if self.lr_min is not None and self.lr_max is None:
            raise UserError("`lr_min` was given without `lr_max`: give both, or neither to use the LR range test.")
        if self.optimizer == "sgd" and self.decouple_wd:
            raise UserError("optimizer = sgd adds its weight decay to the gradient (torch's SGD, as Page's "
                            "baseline): set decouple_wd = false (--no-decouple-wd) and give wd in those units.")
        if self.beta1_min > self.beta1_max:
            raise UserError(f"`beta1_min` ({self.beta1_min}) must not exceed `beta1_max` ({self.beta1_max}).")
        if self.lr_find_start >= self.lr_find_end:
            raise UserError("`lr_find_start` must be smaller than `lr_find_end`.")
        return self

    @classmethod
    def from_dict(cls, values: dict, where: str) -> "Recipe":
        "A Recipe from JSON values (a weights file's), each of its field's type, then validated; other keys ignored."
        kinds = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "float | None": (int, float)}
        byname, known = {f.name: f for f in fields(cls)}, {}
        for k, v in values.items():
            if k not in byname:
                continue  # a field of another version
            v = compat.auto_zero(k, v)
            if v is None and byname[k].default is None:  # auto
                known[k] = None
                continue
            t = byname[k].type if isinstance(byname[k].type, str) else byname[k].type.__name__
            if not isinstance(v, kinds[t]) or isinstance(v, bool) != (t == "bool"):
                raise UserError(f"{where}: the recipe's `{k}` is {v!r:.40}, not a {t}.")
            known[k] = float(v) if t.startswith("float") and v is not None else v
        try:
            return cls(**known).validate()
        except UserError as e:
            raise UserError(f"{where}: {e.message}") from None

    def replace(self, **changes: Any) -> "Recipe":
        """`dataclasses.replace`, validated; a new `epochs` without a `peak_epoch` keeps the peak at the same
        fraction of training (`peak_for`)."""
        if "epochs" in changes and "peak_epoch" not in changes and changes["epochs"] >= 2:
            changes["peak_epoch"] = peak_for(changes["epochs"])
        return dataclasses.replace(self, **changes).validate()


def check_cycle(epochs: int, peak_epoch: int, lr_min: float | None = None, lr_max: float | None = None,
                lr_end: float | None = None) -> None:
    """The one cycle's rules, on the values known (None: not yet, as LRMAX before the range test): the peak
    inside the run, LRMIN and the last step's LR below LRMAX. A Recipe checks them when made; the fit, with
    the bounds."""
    if not 0 < peak_epoch < epochs:
        raise UserError(f"`peak_epoch` ({peak_epoch}) must be in 1..{epochs - 1}, below `epochs` ({epochs}): "
                        "the LR has to come back down after its peak.")
    if lr_min is not None and lr_max is not None and not 0 < lr_min < lr_max:
        raise UserError(f"LRMIN ({lr_min:.4g}) must be above 0 and below LRMAX ({lr_max:.4g}): need "
                        "0 < lr_min < lr_max.")
    if lr_end is not None and lr_max is not None and not 0 <= lr_end < lr_max:
        raise UserError(f"`lr_end` ({lr_end:.4g}) must be below LRMAX ({lr_max:.4g}): need 0 <= lr_end < lr_max "
                        "(a smaller --lr-end, or --lr-max).")


def peak_for(epochs: int) -> int:
    "The spec's peak (epoch 5 of 24) for a run of `epochs`: 5/24 of them, rounded half up, at least 1."
    return max(1, math.floor(epochs * 5 / 24 + 0.5))


SECTIONS: dict[str, list[str]] = {}
for _f in fields(Recipe):
    SECTIONS.setdefault(_f.metadata["section"], []).append(_f.name)


BOOLS = configparser.ConfigParser.BOOLEAN_STATES  # true/yes/on/1 and false/no/off/0, as configparser reads them


def parse_setting(f: dataclasses.Field, raw: str, where: str) -> Any:
    "One value as written in a settings file or a flag, converted to the field's type."
    raw = raw.strip()
    try:
        if f.type in ("bool", bool):
            if raw.lower() in BOOLS:
                return BOOLS[raw.lower()]
            raise ValueError
        if "_" in raw:
            raise ValueError  # Python reads `2_0` as 20: a typo here
        if f.type in ("int", int):
            return int(raw)
        if f.default is None and raw.lower() == "auto":
            return None
        if f.type in ("float", float, "float | None"):
            return compat.auto_zero(f.name, float(raw))
        return raw
    except ValueError:
        raise UserError(f"{where}: `{f.name} = {raw}` is not a valid {f.type} ({f.metadata['help']}).") from None


def recipe_file(name_or_file: str | Path) -> Path:
    "A shipped recipe's file by name (`page-sgd`: fastresnet/recipes/page-sgd.ini), or a settings file's path."
    if Path(name_or_file).is_file():
        return Path(name_or_file)
    shipped = RECIPES / f"{name_or_file}.ini"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.ini")))
    raise UserError(f"No recipe {str(name_or_file)!r}: give a shipped recipe's name ({names}) or the path of a "
                    "settings file.")


def load_settings(path: str | Path, base: Recipe | None = None) -> Recipe:
    """A settings file over `base` (default: the defaults). Unknown sections or keys and malformed values are
    errors: a typo silently ignored would change the recipe."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Settings file {path} does not exist.")
    cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)  # `%` is a character
    try:
        cp.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise UserError(f"{path} is not a valid settings file: {e}".splitlines()[0]) from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): is it a settings file?") from None
    if cp.defaults():  # configparser would copy [DEFAULT] into every section, past the unknown-key check
        raise UserError(f"{path}: a [DEFAULT] section is not supported; put each key in its own section.")
    from .compat import RETIRED, drop_retired
    byname, values = {f.name: f for f in fields(Recipe)}, {}
    for sec in cp.sections():
        if sec not in SECTIONS:
            raise UserError(f"{path}: unknown section [{sec}]; known sections: {', '.join(SECTIONS)}.")
        for key, raw in cp.items(sec):
            if key in RETIRED:  # a 0.1 run folder's settings.ini
                drop_retired({key: raw}, str(path))
                continue
            if key not in SECTIONS[sec]:
                raise UserError(f"{path}: unknown key `{key}` in [{sec}]; known keys: {', '.join(SECTIONS[sec])}.")
            values[key] = parse_setting(byname[key], raw, str(path))
    try:
        return (base or Recipe()).replace(**values)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def ini_value(v) -> str:
    "A value as settings.ini writes it: booleans as true/false, None as auto."
    if v is None:
        return "auto"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def recipe_to_ini(r: Recipe) -> str:
    "A Recipe as a commented settings file: the packaged settings.ini, and each run folder's."
    out = ["# fastresnet recipe. Copy and edit this file, then: fastresnet train --settings FILE; flags override it.",
           "# Generated from fastresnet/config.py (python -m fastresnet.config). Why each value: docs/experiments.md.",
           ""]
    for sec, names in SECTIONS.items():
        out.append(f"[{sec}]")
        for f in (f for f in fields(Recipe) if f.name in names):
            v = getattr(r, f.name)
            line = f"{f.name} = {ini_value(v)}"
            out.append(f"{line:27} # {f.metadata['help']}")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(recipe_to_ini(Recipe()), end="")

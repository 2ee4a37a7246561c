"""The recipe's settings: one dataclass of defaults, read from and checked against `settings.ini`.

The dataclass is the single place defaults live in code; the packaged `settings.ini` states the
same values for people to read and edit, and a test fails if the two ever disagree.
"""
from __future__ import annotations

import configparser
import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Recipe", "HintedError", "SettingsError", "SECTIONS", "PACKAGED_SETTINGS", "load_settings", "recipe_to_ini",
           "with_changes", "parse_setting", "parse_assignments"]

PACKAGED_SETTINGS = Path(__file__).with_name("settings.ini")


class HintedError(Exception):
    """An error whose message states the problem in the library's terms; `hint`, if any, is the
    command-line advice (which flag to use) that the `fastresnet` command adds to it."""
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class SettingsError(HintedError, ValueError):
    "A settings file or flag value that cannot be used; the message says which and why."


def setting(section: str, default: Any, help: str, **check: Any) -> Any:
    "A Recipe field: its settings.ini section, default, help text and allowed range or choices."
    return field(default=default, metadata=dict(section=section, help=help, **check))


@dataclass
class Recipe:
    "Every number the recipe uses; `settings.ini` mirrors it section by section."
    # [train]
    bs: int = setting("train", 512, "batch size", min=1)
    epochs: int = setting("train", 24, "total epochs", min=1)
    peak_epoch: int = setting("train", 5, "epoch at whose end the LR peaks", min=1)
    seed: int = setting("train", 42, "random seed for init, shuffling and augmentation", min=0)
    # [optimizer]
    wd: float = setting("optimizer", 0.8, "weight decay", min=0.0)
    decouple_wd: bool = setting("optimizer", True, "AdamW-style decoupled decay (true) or L2 in the gradient (false)")
    wd_bn_bias: bool = setting("optimizer", False, "also decay BatchNorm weights and biases (fastai's `wd_bn_bias`)")
    beta1_max: float = setting("optimizer", 0.95, "Adam beta1 at the LR minimum (cycled against the LR)",
                               min=0.0, max=1.0)
    beta1_min: float = setting("optimizer", 0.85, "Adam beta1 at the LR peak; equal to beta1_max for no cycling",
                               min=0.0, max=1.0)
    beta2: float = setting("optimizer", 0.99, "Adam beta2", min=0.0, max=1.0)
    eps: float = setting("optimizer", 1e-5, "Adam epsilon", min=0.0)
    adam_impl: str = setting("optimizer", "fused", "Adam's code: torch's fused or foreach kernels, or fastai's own",
                             choices=("fused", "foreach", "fastai"))  # learner.build_learner picks
    # [schedule]
    shape: str = setting("schedule", "linear", "shape of both phases", choices=("linear", "cos"))
    lr_max: float = setting("schedule", 0.0, "LRMAX; 0 means: take it from the LR range test", min=0.0)
    lr_min: float = setting("schedule", 0.0, "LRMIN; 0 means: lr_max / lr_min_div", min=0.0)
    lr_rule: str = setting("schedule", "min_loss", "lr_find point LRMAX derives from (min_loss: lowest smoothed loss)",
                      choices=("min_loss", "minimum", "valley", "steep", "slide"))  # schedule.RULES
    lr_max_div: float = setting("schedule", 10.0, "LRMAX = suggestion / lr_max_div", min=1e-9)
    lr_min_div: float = setting("schedule", 100.0, "LRMIN = LRMAX / lr_min_div", min=1.0)
    lr_find_iters: int = setting("schedule", 100, "batches the LR range test runs", min=6)
    lr_find_start: float = setting("schedule", 1e-6, "LR range test start", min=0.0)
    lr_find_end: float = setting("schedule", 10.0, "LR range test end", min=0.0)
    # [augment]
    pad: int = setting("augment", 4, "padding before the random 32x32 crop", min=0)
    pad_mode: str = setting("augment", "zeros", "how the padding is filled", choices=("zeros", "reflect"))
    flip: bool = setting("augment", True, "random horizontal flip")
    cutout: int = setting("augment", 8, "side of the Cutout square; 0 disables it", min=0)
    # [model]
    logit_scale: float = setting("model", 1.0, "multiplier on the logits", min=1e-9)
    width: float = setting("model", 1.0, "multiplier on every channel count (1: the spec; < 1: a cheaper proxy)",
                           min=0.01)
    zero_init_residual: bool = setting("model", False, "start each residual branch's last BatchNorm weight at 0")
    label_smoothing: float = setting("model", 0.1, "label smoothing of the cross-entropy (0: plain cross-entropy)",
                                     min=0.0, max=0.5)
    channels_last: bool = setting("model", True, "channels_last memory format (faster convolutions)")
    # [eval]
    tta: bool = setting("eval", True, "also report accuracy with flip test-time augmentation (a second test pass)")
    # [runtime]
    precision: str = setting("runtime", "fp32", "fp32, or bf16/fp16 mixed precision (fastai's AMP: CUDA only)",
                        choices=("fp32", "bf16", "fp16"))
    valid_every: int = setting("runtime", 1, "evaluate on the test set every N epochs (0: only after the last)", min=0)
    sync_bn: bool = setting("runtime", False, "distributed runs: synchronise BatchNorm statistics across processes")
    compile: bool = setting("runtime", False, "torch.compile the model for training (pays off on GPUs, not on CPUs)")

    def validate(self) -> "Recipe":
        "Check ranges and cross-field rules; raise `SettingsError` naming the offending value."
        for f in fields(self):
            v, md = getattr(self, f.name), f.metadata
            if isinstance(v, float) and not math.isfinite(v):
                raise SettingsError(f"`{f.name}` is {v}, but it must be a finite number ({md['help']}).")
            if "min" in md and v < md["min"]:
                raise SettingsError(f"`{f.name}` is {v}, but it must be at least {md['min']} ({md['help']}).")
            if "max" in md and v > md["max"]:
                raise SettingsError(f"`{f.name}` is {v}, but it must be at most {md['max']} ({md['help']}).")
            if "choices" in md and v not in md["choices"]:
                raise SettingsError(f"`{f.name}` is {v!r}; choose one of {', '.join(md['choices'])}.")
        if self.peak_epoch >= self.epochs:
            raise SettingsError(f"`peak_epoch` ({self.peak_epoch}) must be smaller than `epochs` ({self.epochs}): "
                                "the LR has to come back down after its peak.")
        if self.lr_max and self.lr_min and self.lr_min >= self.lr_max:
            raise SettingsError(f"LRMIN ({self.lr_min}) must be smaller than LRMAX ({self.lr_max}).")
        if self.lr_min and not self.lr_max:
            raise SettingsError("`lr_min` was given without `lr_max`: give both, or neither to use the LR range test.")
        if self.beta1_min > self.beta1_max:
            raise SettingsError(f"`beta1_min` ({self.beta1_min}) must not exceed `beta1_max` ({self.beta1_max}).")
        if self.lr_find_start >= self.lr_find_end:
            raise SettingsError("`lr_find_start` must be smaller than `lr_find_end`.")
        return self

    def replace(self, **changes: Any) -> "Recipe":
        "A copy with `changes` applied (None values ignored), validated."
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()


_SECTION_ORDER = dict.fromkeys(f.metadata["section"] for f in fields(Recipe))
SECTIONS: dict[str, list[str]] = {sec: [f.name for f in fields(Recipe) if f.metadata["section"] == sec]
                                  for sec in _SECTION_ORDER}


def parse_setting(f: dataclasses.Field, raw: str, where: str) -> Any:
    "One value as written in a settings file, `--set` or a flag, converted to the field's type."
    raw = raw.strip()
    try:
        if f.type in ("bool", bool):
            low = raw.lower()
            if low in ("true", "yes", "1", "on"): return True
            if low in ("false", "no", "0", "off"): return False
            raise ValueError
        if f.type in ("int", int): return int(raw)
        if f.type in ("float", float): return float(raw)
        return raw
    except ValueError:
        raise SettingsError(f"{where}: `{f.name} = {raw}` is not a valid {f.type} ({f.metadata['help']}).") from None


def load_settings(path: str | Path | None = None) -> Recipe:
    """Read a settings file into a `Recipe`. Missing keys keep their defaults; unknown sections or
    keys and malformed values are errors, because a typo silently ignored changes the recipe."""
    path = Path(path) if path is not None else PACKAGED_SETTINGS
    if not path.is_file(): raise SettingsError(f"Settings file {path} does not exist.")
    cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)  # `%` is a plain character
    try: cp.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise SettingsError(f"{path} is not a valid settings file: {e}".splitlines()[0]) from None
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path} is not UTF-8 text (byte {e.start}): is it a settings file?") from None
    if cp.defaults():  # configparser would copy [DEFAULT] into every section, past the unknown-key check
        raise SettingsError(f"{path}: a [DEFAULT] section is not supported; put each key in its own section "
                            f"({', '.join(SECTIONS)}).")
    byname = {f.name: f for f in fields(Recipe)}
    values = {}
    for sec in cp.sections():
        if sec not in SECTIONS:
            raise SettingsError(f"{path}: unknown section [{sec}]; known sections: {', '.join(SECTIONS)}.")
        for key, raw in cp.items(sec):
            if key not in SECTIONS[sec]:
                raise SettingsError(f"{path}: unknown key `{key}` in [{sec}]; known keys: {', '.join(SECTIONS[sec])}.")
            values[key] = parse_setting(byname[key], raw, str(path))
    try: return Recipe(**values).validate()
    except SettingsError as e: raise SettingsError(f"{path}: {e}") from None


def parse_assignments(assignments: list[str]) -> dict:
    "`KEY=VALUE` strings (the CLI's `--set`) as typed changes for `with_changes`; unknown keys are errors."
    byname, out = {f.name: f for f in fields(Recipe)}, {}
    for kv in assignments:
        if "=" not in kv: raise SettingsError(f"--set {kv!r}: expected KEY=VALUE.")
        k, v = (x.strip() for x in kv.split("=", 1))
        if k not in byname: raise SettingsError(f"--set: unknown setting {k!r}; see settings.ini.")
        out[k] = parse_setting(byname[k], v, "--set")
    return out


def with_changes(r: Recipe, changes: dict, note=print) -> Recipe:
    """`r` with `changes` applied, keeping the recipe's shape in a short run: when `epochs` changes and
    the peak would no longer fit (and `peak_epoch` is not among the changes), the LR peaks at the same
    fraction of training instead (5/24 by default), at least after epoch 1. `note` hears about it."""
    epochs = changes.get("epochs")
    if epochs is not None and epochs < 2:
        raise SettingsError(f"`epochs` is {epochs}: the recipe needs at least 2 epochs, one to climb to LRMAX "
                            "and one to come back down.")
    if epochs is not None and changes.get("peak_epoch") is None and r.peak_epoch >= epochs:
        changes = {**changes, "peak_epoch": max(1, min(epochs - 1, round(epochs * r.peak_epoch / r.epochs)))}
        note(f"note: {epochs} epochs with the peak at epoch {r.peak_epoch} is impossible; the LR peaks at the end "
             f"of epoch {changes['peak_epoch']} instead (set peak_epoch to choose).")
    return r.replace(**changes)


def recipe_to_ini(r: Recipe) -> str:
    "Render a Recipe as settings-file text (used to write the run folder's `settings.ini`)."
    out = []
    for sec, names in SECTIONS.items():
        out.append(f"[{sec}]")
        for n in names:
            v = getattr(r, n)
            out.append(f"{n} = {str(v).lower() if isinstance(v, bool) else v}")
        out.append("")
    return "\n".join(out)

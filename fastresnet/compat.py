"""What fastresnet 0.1 and 0.2 wrote, read by this version: retired settings at their settled values, 0 for
"derive it" (now auto), weights files before format 2 (the width alone in their metadata), run folders that
recorded the download as a string, models saved before the layers had names (refused, with what to do), and
the names 0.3 and before gave the data and learner helpers (exported learners pickle
`fastresnet.data.CifarDL`). The rest of the package imports this module for nothing else; docs/experiments.md
section 4 says why each setting was retired."""
from __future__ import annotations

import sys
import warnings
from typing import Any

from . import config  # its names are read when called: config imports this module too

__all__ = ["RETIRED", "drop_retired", "AUTO_ZERO", "auto_zero", "old_layout", "check_named", "weights_recipe",
           "data_path", "RENAMED", "renamed"]

# Settings of fastresnet 0.1 that 0.2 settled and removed. Every 0.1 run folder and weights file records them at these
# values, which read as before; another value is a recipe 0.2 cannot run.
RETIRED = {"shape": "linear", "logit_scale": 1.0, "zero_init_residual": False}


def drop_retired(values: dict[str, Any], where: str) -> dict[str, Any]:
    "`values` without the retired settings, each checked to be at its settled value (raw text or parsed)."
    for key in RETIRED.keys() & values.keys():
        v, settled = values.pop(key), RETIRED[key]
        if isinstance(v, str) and isinstance(settled, bool):
            v = config.BOOLS.get(v.strip().lower(), True)
        elif isinstance(v, str) and isinstance(settled, float):
            try:
                v = float(v)
            except ValueError:
                pass
        if v != settled:
            raise config.UserError(f"{where}: `{key} = {v}` is a setting of fastresnet 0.1 that 0.2 removed, settled "
                                   f"at {str(settled).lower()} (docs/experiments.md section 4). Remove the line to "
                                   "use this version, or run the recipe with fastresnet 0.1.")
    return values


AUTO_ZERO = ("lr_max", "lr_min", "lr_end")  # 0.2 wrote 0 for "derive it" (from the range test; LRMIN; LRMIN)


def auto_zero(name: str, value):
    "A setting as 0.2 meant it: 0 for `lr_max`, `lr_min` or `lr_end` was auto (None); never a usable value."
    return None if name in AUTO_ZERO and value == 0 else value


def old_layout(what: str) -> config.UserError:
    "The error for a model saved before the layers had names (positional `0`..`7`), which 0.1 read and 0.2 does not."
    return config.UserError(f"{what} holds a model saved before fastresnet named its layers (positional layers "
                            "`0`..`7`), which this version no longer reads. fastresnet 0.1 reads it: load it there "
                            "and save it again (learn.export), or train the model again.")


def check_named(keys, where: str) -> None:
    "A state dict's keys with today's layer names; positional ones (`1.1.res.0.0.weight`) are refused."
    if next(iter(keys), "x")[:1].isdigit():
        raise old_layout(where)


def weights_recipe(meta: dict, saved, path) -> config.Recipe:
    "The recipe a weights file was trained with (before format 2: only the width, as a metadata key of its own)."
    if saved is None:
        try:
            saved = {k: float(meta[k]) for k in ("width", "logit_scale") if k in meta}
        except ValueError as e:
            raise config.UserError(f"{path}: its metadata holds {e}.") from None
    if not isinstance(saved, dict):
        raise config.UserError(f"{path}: its metadata `recipe` is not a JSON object.")
    for k in ("shape", "zero_init_residual"):
        saved.pop(k, None)  # retired, and only ever shaped training
    return config.Recipe.from_dict(drop_retired(saved, str(path)), str(path))


def data_path(recorded: str | None) -> str | None:
    "The data path run.json records; None means fastai's download (0.1 wrote a string starting `untar_data`)."
    return None if recorded is None or recorded.startswith("untar_data") else recorded


# Each module's names of 0.3 and before: they said CIFAR of helpers that take any class folders.
RENAMED = {"fastresnet.data": {"CifarArrays": "ImageArrays", "CifarDL": "InMemoryDL",
                               "CifarImageBlock": "InMemoryImageBlock", "cifar_datablock": "recipe_datablock",
                               "cifar_dls": "recipe_dls", "load_cifar": "load_arrays"},
           "fastresnet.learner": {"cifar_learner": "recipe_learner"}}


def renamed(module: str, name: str):
    "`module`'s object once called `name` (a module's `__getattr__`); AttributeError for any other name."
    new = RENAMED.get(module, {}).get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"`{name}` is now `{new}` (fastresnet 0.4); the old name will go.", DeprecationWarning, stacklevel=3)
    return getattr(sys.modules[module], new)

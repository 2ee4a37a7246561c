"""fastresnet: a custom ResNet trained on CIFAR-10 with fastai and a peak-at-epoch-5 one-cycle Adam recipe."""
import warnings

__version__ = "0.4.0"  # 0.4: helpers named for any class folders (0.3's names: compat.py)
__all__ = ["recipe_learner", "dls_for"]
# fastai's own layers still use `torch.jit.script`, which newer torch deprecates: a warning at every import that the
# user can do nothing about. Only that message is silenced, and only when fastresnet imports fastai first.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
_HOME = {"recipe_learner": "learner", "cifar_learner": "learner", "dls_for": "inference"}  # each name's module


def __getattr__(name):  # `from fastresnet import recipe_learner` without importing fastai for `fastresnet --help`
    if name in _HOME:
        from importlib import import_module
        return getattr(import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module 'fastresnet' has no attribute {name!r}")

"""fastresnet: a custom ResNet trained on CIFAR-10 with fastai and a peak-at-epoch-5 one-cycle Adam recipe."""
__version__ = "0.1.0"
__all__ = ["cifar_learner"]


def __getattr__(name):  # `from fastresnet import cifar_learner` without importing fastai for `fastresnet --help`
    if name == "cifar_learner":
        from .learner import cifar_learner
        return cifar_learner
    raise AttributeError(f"module 'fastresnet' has no attribute {name!r}")

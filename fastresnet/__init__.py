"""fastresnet: a custom ResNet trained on CIFAR-10 with fastai and a peak-at-epoch-5 one-cycle Adam recipe."""
__version__ = "0.1.0"

"""Batch augmentations that run on the training device, one idea each.

All of them are fastai `RandTransform`s with `split_idx=0`, so fastai applies them to training
batches only and validation batches reach the model untouched. Each computes on the plain tensor
behind fastai's `TensorImage` (whose operations each take a detour through Python) and returns a
`TensorImage`. They are batch transforms (`batch_tfms`); given one image, as `item_tfms` would give it, they
treat it as a batch of one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.vision.all import RandTransform, TensorImage

__all__ = ["RandomPadCrop", "RandomFlip", "Cutout"]


def _batch(x: TensorImage) -> tuple[torch.Tensor, bool]:
    "The plain tensor of a batch (N, C, H, W); one image (C, H, W) as a batch of one, and whether it was one."
    x = x.as_subclass(torch.Tensor)
    return (x[None], True) if x.ndim == 3 else (x, False)


def _out(x: torch.Tensor, single: bool) -> TensorImage:
    return TensorImage(x[0] if single else x)


class RandomPadCrop(RandTransform):
    "Pad every image by `pad` pixels and take a random crop of the original size: a random translation."
    split_idx, order = 0, 11  # right after IntToFloatTensor (order 10)

    def __init__(self, pad: int = 4, mode: str = "zeros"):
        super().__init__(p=1.0)
        self.pad, self.mode = pad, mode

    def encodes(self, x: TensorImage) -> TensorImage:
        if self.pad == 0:
            return x
        x, single = _batch(x)
        n, c, h, w = x.shape
        p = self.pad
        xp = F.pad(x, (p, p, p, p), mode="constant" if self.mode == "zeros" else "reflect")
        dy = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=x.device)  # top-left corner of the crop
        dx = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=x.device)
        rows = dy + torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = dx + torch.arange(w, device=x.device).view(1, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return _out(xp[batch, chans, rows, cols], single)  # one gather for the whole batch


class RandomFlip(RandTransform):
    """Mirror each image left-right with probability `p`. fastai's `Flip` resamples every image
    through `grid_sample` (changing even unflipped pixels by ~1e-6); this one is an exact copy."""
    split_idx, order = 0, 12  # after the crop (11), before Normalize (99) and Cutout (100)

    def __init__(self, p: float = 0.5):
        super().__init__(p=1.0)  # the batch is always visited; `p` is drawn per image below
        self.p_per_image = p

    def encodes(self, x: TensorImage) -> TensorImage:
        x, single = _batch(x)
        flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p_per_image
        return _out(torch.where(flip, x.flip(-1), x), single)


class Cutout(RandTransform):
    """Zero one `size`x`size` square per image, centred on a uniformly drawn pixel and clipped at
    the borders (DeVries & Taylor, 2017). It runs after `Normalize`, so a zero is the mean colour."""
    split_idx, order = 0, 100  # Normalize has order 99

    def __init__(self, size: int = 8):
        super().__init__(p=1.0)
        self.size = size

    def encodes(self, x: TensorImage) -> TensorImage:
        if self.size == 0:
            return x
        x, single = _batch(x)
        n, _, h, w = x.shape
        cy = torch.randint(0, h, (n, 1, 1), device=x.device) - self.size // 2  # top edge, may be < 0
        cx = torch.randint(0, w, (n, 1, 1), device=x.device) - self.size // 2
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        hole = (ys >= cy) & (ys < cy + self.size) & (xs >= cx) & (xs < cx + self.size)
        return _out(x.masked_fill(hole.unsqueeze(1), 0.0), single)

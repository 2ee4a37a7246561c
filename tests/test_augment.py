import torch
import torch.nn.functional as F
from fastai.vision.all import TensorImage, cifar_stats

from fastresnet.augment import Cutout, RandomFlip, RandomPadCrop
from fastresnet.config import Recipe
from fastresnet.data import recipe_dls


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorImage(torch.rand(n, 3, 32, 32, generator=g) + 0.5)  # strictly positive: zeros mark holes


def test_cutout_zeroes_one_clipped_square_per_image():
    torch.manual_seed(0)
    x = batch(256)
    y = Cutout(8)(x, split_idx=0)
    assert y.shape == x.shape and isinstance(y, TensorImage)
    holes = (y == 0).all(1)                                    # (n, 32, 32): zeroed in every channel
    assert torch.equal((y == 0), holes.unsqueeze(1).expand_as(y))
    full = 0
    for h in holes:
        rows, cols = h.any(1).nonzero().flatten(), h.any(0).nonzero().flatten()
        assert len(rows) >= 1 and len(rows) <= 8 and len(cols) <= 8
        # one axis-aligned rectangle: its bounding box is entirely zero
        assert h[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert h.sum() == len(rows) * len(cols)
        # clipped only where it touches a border
        if len(rows) < 8: assert rows.min() == 0 or rows.max() == 31
        if len(cols) < 8: assert cols.min() == 0 or cols.max() == 31
        full += int(h.sum() == 64)
    assert full > 100  # most holes lie fully inside the image
    assert torch.equal(y[~(y == 0)], x[~(y == 0)])            # nothing else changed


def test_crop_is_a_translation_of_the_padded_image():
    torch.manual_seed(1)
    x = batch(32)
    y = RandomPadCrop(4)(x, split_idx=0)
    assert y.shape == x.shape
    xp = F.pad(x, (4, 4, 4, 4))
    shifts = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(9) for dx in range(9) if torch.equal(xp[i, :, dy:dy + 32, dx:dx + 32], y[i])]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 10  # offsets are drawn per image


def test_reflect_padding_mode():
    "Each output is a 32x32 window of the image padded by reflection, at offsets drawn per image."
    torch.manual_seed(1)
    x = batch(64)
    y = RandomPadCrop(4, "reflect")(x, split_idx=0)
    xp = F.pad(x, (4, 4, 4, 4), mode="reflect")
    shifts = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(9) for dx in range(9) if torch.equal(xp[i, :, dy:dy + 32, dx:dx + 32], y[i])]
        assert found, i  # a window of the reflect-padded image
        shifts.add(found[0])
    assert len(shifts) > 10 and not (y == 0).any()  # cropped, not passed through; no zero padding


def test_flip_is_exact_and_per_image():
    torch.manual_seed(2)
    x = batch(64)
    y = RandomFlip(0.5)(x, split_idx=0)
    same = [torch.equal(a, b) for a, b in zip(x, y)]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(x, y)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54


def test_augmentation_skips_validation():
    x = batch(4)
    for tfm in (RandomPadCrop(4), RandomFlip(1.0), Cutout(8)):
        assert torch.equal(tfm(x, split_idx=1), x)


def test_training_batches_are_augmented_and_validation_batches_are_not(arrays):
    dls = recipe_dls(arrays, Recipe(bs=20))
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in cifar_stats)
    xb, yb = dls.valid.one_batch()
    raw = arrays.images[arrays.n_train:arrays.n_train + 20].float() / 255
    assert xb.shape == (20, 3, 32, 32)
    assert torch.allclose(xb, (raw - mean) / std, atol=1e-5)  # exactly the normalised test images
    torch.manual_seed(0)
    tb, _ = dls.train.one_batch()
    assert tb.shape == (20, 3, 32, 32)
    assert ((tb == 0).all(1).flatten(1).sum(1) > 0).all()      # every training image has a cutout hole


def test_one_image_as_item_tfms_give_it_is_augmented_as_a_batch_of_one():
    "In `item_tfms` each transform sees one (3, H, W) image: Cutout, crop and flip treat it as a batch of one."
    torch.manual_seed(3)
    x = batch(1)[0]
    for _ in range(20):
        y = Cutout(8)(x, split_idx=0)
        assert y.shape == (3, 32, 32) and isinstance(y, TensorImage)
        hole = (y == 0).all(0)
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8 and hole.sum() == len(rows) * len(cols)
        assert torch.equal(y[:, ~hole], x[:, ~hole])
        c = RandomPadCrop(4)(x, split_idx=0)
        xp = F.pad(x, (4, 4, 4, 4))
        assert c.shape == (3, 32, 32)
        assert any(torch.equal(xp[:, dy:dy + 32, dx:dx + 32], c) for dy in range(9) for dx in range(9))
        f = RandomFlip(0.5)(x, split_idx=0)
        assert f.shape == (3, 32, 32) and (torch.equal(f, x) or torch.equal(f, x.flip(-1)))


def test_cutout_in_item_tfms_of_a_datablock_trains_batches(arrays):
    "A user's DataBlock with Cutout as an item transform: every image of a batch gets its hole (black, uint8)."
    from fastai.vision.all import CategoryBlock, DataBlock, IndexSplitter
    from fastresnet.data import ImageArrays, InMemoryImageBlock, PairOrFile
    block = DataBlock(blocks=(InMemoryImageBlock(), CategoryBlock(vocab=arrays.vocab)), get_items=ImageArrays.items,
                      get_x=PairOrFile(0), get_y=PairOrFile(1), item_tfms=Cutout(8),
                      splitter=IndexSplitter(range(arrays.n_train, len(arrays.labels))))
    xb, _ = block.dataloaders(arrays, bs=8).train.one_batch()
    assert xb.shape == (8, 3, 32, 32)
    assert ((xb == 0).all(1).flatten(1).sum(1) > 0).all()

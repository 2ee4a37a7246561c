import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_folder, make_python_archive, synthetic_images
from fastresnet.config import Recipe, UserError
from fastresnet.data import CIFAR_CLASSES, balanced_subset, recipe_dls, load_arrays, load_image, split_by_class


def test_folder_layout_reads_exact_pixels(tmp_path):
    root = make_folder(tmp_path / "c", n_train=20, n_test=10)
    d = load_arrays(root)
    assert d.images.shape == (30, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.n_train == 20 and d.vocab == CIFAR_CLASSES
    imgs, labels = synthetic_images(20, 0)
    i = int(np.nonzero(labels == 3)[0][0])                    # first cat
    cat = int((d.labels[:20] == 3).nonzero()[0])
    assert torch.equal(d.images[cat], torch.from_numpy(imgs[i]).permute(2, 0, 1))


def test_folder_is_cached_and_cache_invalidated(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "c", n_train=20, n_test=10)
    load_arrays(root)
    caches = list((tmp_path / "cache").glob("*.npz"))
    assert len(caches) == 1
    import fastresnet.data as D
    monkeypatch.setattr(D, "load_image", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    assert load_arrays(root).n_train == 20
    monkeypatch.undo()
    monkeypatch.setenv("FASTRESNET_CACHE", str(tmp_path / "cache"))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "cat" / "extra.png")
    assert load_arrays(root).n_train == 21                     # new file → new fingerprint


@pytest.mark.parametrize("damage", ["truncated", "a bit flipped a third in", "a bit flipped two thirds in"])
def test_a_damaged_cache_is_detected_rebuilt_and_never_used(tmp_path, monkeypatch, damage):
    root = make_folder(tmp_path / "c", n_train=20, n_test=10)
    fresh = load_arrays(root)
    cache = next((tmp_path / "cache").glob("*.npz"))
    raw = bytearray(cache.read_bytes())
    if damage == "truncated": raw = raw[:len(raw) // 2]
    else: raw[len(raw) // 3 if "third" in damage else 2 * len(raw) // 3] ^= 0x04   # inside the pixels
    cache.write_bytes(bytes(raw))
    import fastresnet.data as D
    decoded = []
    monkeypatch.setattr(D, "load_image", lambda f, *a, **k: decoded.append(f) or load_image(f, *a, **k))
    with pytest.warns(UserWarning, match=r"is damaged \(.*\); not using it: decoding the images again") as w:
        again = load_arrays(root)
    assert len([x for x in w if "npz is damaged (" in str(x.message)]) == 1, [str(x.message) for x in w]
    assert len(decoded) == 30                                      # rebuilt from every image file
    assert torch.equal(again.images, fresh.images) and torch.equal(again.labels, fresh.labels)
    decoded.clear()
    assert torch.equal(load_arrays(root).labels, fresh.labels) and decoded == []   # the rewritten cache is whole


def test_python_archive(tmp_path):
    folder = make_python_archive(tmp_path)
    for p in (folder, tmp_path):                               # the archive folder or its parent
        d = load_arrays(p)
        assert d.n_train == 50 and d.n_valid == 10 and d.vocab == CIFAR_CLASSES
    imgs, labels = synthetic_images(10, seed=5)
    assert torch.equal(d.images[50], torch.from_numpy(imgs[0]).permute(2, 0, 1))
    assert d.labels[50] == labels[0]


def test_truncated_python_archive(tmp_path):
    folder = make_python_archive(tmp_path)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="data_batch_3 is truncated or corrupt"):
        load_arrays(folder)


def test_python_archive_missing_batch(tmp_path):
    folder = make_python_archive(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(UserError, match="missing test_batch"):
        load_arrays(folder)


def test_balanced_subset(arrays):
    s = balanced_subset(arrays, 20)
    assert s.n_train == 20 and s.n_valid == arrays.n_valid
    assert torch.bincount(s.labels[:20], minlength=10).tolist() == [2] * 10
    with pytest.raises(UserError, match="larger than the 40"):
        balanced_subset(arrays, 41)


def test_dls_batches(arrays):
    dls = recipe_dls(arrays, Recipe(bs=16))
    xb, yb = dls.train.one_batch()
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32 and yb.shape == (16,)
    assert len(dls.valid_ds) == 20 and list(dls.vocab) == CIFAR_CLASSES


# ---------------------------------------------------------------- bad input: each refused or converted, clearly
def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_arrays(tmp_path / "nowhere")


def test_wrong_layout(tmp_path):
    (tmp_path / "x" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match=r"has train/ but no test/ \(or valid/\) folder"):
        load_arrays(tmp_path / "x")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "notes.txt").write_text("no class folders")
    with pytest.raises(UserError, match="is neither layout fastresnet reads"):
        load_arrays(tmp_path / "y")


def test_no_class_folders(tmp_path):
    root = tmp_path / "x"
    for s in ("train", "test"): (root / s).mkdir(parents=True)
    with pytest.raises(UserError, match="no class folders"):
        load_arrays(root)


def test_classes_differ(tmp_path):
    root = make_folder(tmp_path / "c", 20, 10)
    shutil.rmtree(root / "test" / "ship")
    with pytest.raises(UserError, match=r"only in train: \['ship'\]"):
        load_arrays(root)


def test_empty_class(tmp_path):
    root = make_folder(tmp_path / "c", 20, 10)
    for f in (root / "train" / "frog").iterdir(): f.unlink()
    with pytest.raises(UserError, match="frog holds no images"):
        load_arrays(root)


def test_corrupt_and_truncated_images_are_listed(tmp_path):
    root = make_folder(tmp_path / "c", 20, 10)
    (root / "train" / "cat" / "0003.png").write_bytes(b"not a png at all")
    good = (root / "train" / "dog" / "0005.png").read_bytes()
    (root / "train" / "dog" / "0005.png").write_bytes(good[:40])
    with pytest.raises(UserError) as e:
        load_arrays(root)
    assert "2 image file(s)" in str(e.value) and "0003.png" in str(e.value) and "0005.png" in str(e.value)


def test_non_image_files_are_skipped_with_a_warning(tmp_path):
    root = make_folder(tmp_path / "c", 20, 10)
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="skipping 1 file"):
        assert load_arrays(root).n_train == 20


def test_grayscale_and_rgba_are_converted(tmp_path):
    root = make_folder(tmp_path / "c", 20, 10)
    Image.fromarray(np.full((32, 32), 100, np.uint8), "L").save(root / "train" / "cat" / "0003.png")
    Image.fromarray(np.full((32, 32, 4), 50, np.uint8), "RGBA").save(root / "train" / "dog" / "0005.png")
    with pytest.warns(UserWarning, match="2 image\\(s\\) .* converted to RGB"):
        d = load_arrays(root)
    assert d.images.shape[1] == 3
    assert torch.equal(load_image(root / "train" / "cat" / "0003.png"), torch.full((3, 32, 32), 100, dtype=torch.uint8))


def test_other_sizes_are_resized_as_prediction_resizes_them_with_one_note(tmp_path):
    root = make_folder(tmp_path / "c", 20, 10)
    big, tall = root / "train" / "cat" / "0003.png", root / "test" / "dog" / "0005.png"
    Image.fromarray(np.tile(np.arange(48, dtype=np.uint8)[None, :, None], (64, 1, 3))).save(big)
    Image.fromarray(np.full((300, 20, 3), 7, np.uint8)).save(tall)
    with pytest.warns(UserWarning, match=r"2 image\(s\) under .* were not 32x32 and were resized") as w:
        d = load_arrays(root)
    assert len([x for x in w if "resized" in str(x.message)]) == 1
    expect = np.asarray(Image.open(big).convert("RGB").resize((32, 32), Image.BILINEAR))   # predict's resize
    i = next(k for k in range(d.n_train) if d.labels[k] == 3 and d.images[k].float().std() > 0)
    assert torch.equal(d.images[i], torch.from_numpy(expect.copy()).permute(2, 0, 1))
    seven = torch.full((3, 32, 32), 7, dtype=torch.uint8)
    assert torch.equal(d.images[d.n_train:][d.labels[d.n_train:] == 5][0], seven)


def test_gathered_batches_equal_fastais_per_item_batches(arrays):
    from fastai.data.load import DataLoader
    from fastresnet.data import InMemoryDL
    dls = recipe_dls(arrays, Recipe(bs=16))
    for dl in (dls.train, dls.valid):
        assert type(dl) is InMemoryDL and dl._gatherable()
        idxs = list(range(len(dl.dataset)))[:16][::-1]
        fast = next(dl.create_batches(idxs))
        slow = next(DataLoader.create_batches(dl, idxs))             # fastai's item-by-item path
        assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
        assert type(fast[0]).__name__ == "TensorImage" and type(fast[1]).__name__ == "TensorCategory"


def test_an_added_item_transform_is_applied_not_skipped(arrays):
    "With an item transform in the pipeline, batches take fastai's per-item path and the transform is applied."
    from fastai.vision.all import TensorImage, Transform
    from fastresnet.data import recipe_datablock
    class Brighten(Transform):
        def encodes(self, x: TensorImage): return TensorImage(x + 1)    # uint8 + 1: no image here is near 255
    r = Recipe(bs=8)
    plain = recipe_datablock(arrays, r).dataloaders(arrays, bs=8)
    block = recipe_datablock(arrays, r)
    block.item_tfms = block.item_tfms + [Brighten()]
    brightened = block.dataloaders(arrays, bs=8)
    assert plain.valid._gatherable() and not brightened.valid._gatherable()
    x0, x1 = plain.valid.one_batch()[0], brightened.valid.one_batch()[0]   # test split: not augmented
    assert (x1 > x0).all()


def test_the_random_split_holds_out_valid_pct_of_each_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    held = split_by_class(labels, 0.2, seed=3)
    # round-half-up(0.2 n) of each class, at least 1 and at most n - 1: 2 of 10, 1 of 5, 1 of 2
    assert [int(held[labels == c].sum()) for c in range(3)] == [2, 1, 1]
    assert np.array_equal(held, split_by_class(labels, 0.2, seed=3))                  # the seed fixes it
    assert any(not np.array_equal(held, split_by_class(labels, 0.2, seed=s)) for s in range(4, 10))
    assert [int(split_by_class(labels, 0.5, 0)[labels == c].sum()) for c in range(3)] == [5, 3, 1]


def test_a_folder_of_class_folders_is_split_and_normalised_by_its_own_statistics(tmp_path):
    root = tmp_path / "pets"
    for c, n, level in (("cats", 10, 40), ("dogs", 5, 200)):
        (root / c).mkdir(parents=True)
        for i in range(n): Image.fromarray(np.full((32, 32, 3), level + i, np.uint8)).save(root / c / f"{i}.png")
    d = load_arrays(root, valid_pct=0.2, seed=1)
    assert d.vocab == ["cats", "dogs"] and d.n_train == 12 and d.n_valid == 3
    assert all(not Path(f).is_absolute() and (root / f).is_file() for f in d.valid_files)
    assert sum(f.startswith("cats/") for f in d.valid_files) == 2
    for f, img in zip(d.valid_files, d.images[d.n_train:]):                             # the held-out files' pixels
        assert int(img[0, 0, 0]) == np.asarray(Image.open(root / f))[0, 0, 0]
    train = d.images[:d.n_train].double() / 255
    mean, std = d.stats
    assert np.allclose(mean, train.mean((0, 2, 3)).tolist())
    assert np.allclose(std, train.std((0, 2, 3), unbiased=False).tolist())
    dls = recipe_dls(d, Recipe(bs=4))
    norm = next(t for t in dls.after_batch.fs if type(t).__name__ == "Normalize")
    assert np.allclose(norm.mean.flatten().tolist(), mean)
    (root / "birds").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "birds" / "only.png")
    with pytest.raises(UserError, match="birds hold a single image: a random split needs at least 2"):
        load_arrays(root)


def test_a_hundred_class_report_lists_the_top_confusions_instead_of_a_grid(tmp_path):
    from fastresnet.report import plot_confusion, write_report
    vocab = [f"class{i:03d}" for i in range(100)]
    counts = np.diag(np.full(100, 90))
    counts[7, 3], counts[50, 51], counts[99, 0], counts[1, 2] = 9, 12, 4, 9    # known mistakes
    final = {"accuracy": 0.9, "n_images": int(counts.sum()), "vocab": vocab, "confusion": counts.tolist(),
             "per_class": {c: 0.9 for c in vocab}}
    (tmp_path / "final.json").write_text(json.dumps(final))
    assert plot_confusion(tmp_path).is_file()
    text = write_report(tmp_path).read_text()
    table = text.split("## Most frequent confusions")[1].split("\n\n")[1].splitlines()[2:]
    assert table == ["| class050 | class051 | 12 |", "| class001 | class002 | 9 |", "| class007 | class003 | 9 |",
                     "| class099 | class000 | 4 |"]


def _png(path: Path, level: int, size=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), level, np.uint8)).save(path)


def test_class_folders_inside_group_folders_are_the_classes_as_in_cifar100(tmp_path):
    root = tmp_path / "c100"                        # train/<superclass>/<class>/, test/ the same
    groups = {"fish": ["ray", "shark"], "trees": ["maple_tree", "oak_tree", "palm_tree"]}
    for split, n in (("train", 3), ("test", 1)):
        for g, classes in groups.items():
            for c in classes:
                for i in range(n): _png(root / split / g / c / f"{i}.png", 10 * len(c) + i)
    d = load_arrays(root)
    assert d.vocab == ["maple_tree", "oak_tree", "palm_tree", "ray", "shark"]       # leaf names, sorted
    assert d.n_train == 15 and d.n_valid == 5
    for y, img in zip(d.labels.tolist(), d.images):                                 # each image under its class
        assert int(img[0, 0, 0]) // 10 == len(d.vocab[y])
    _png(root / "train" / "trees" / "ray" / "0.png", 0)                            # a second class called "ray"
    _png(root / "test" / "trees" / "ray" / "0.png", 0)
    with pytest.raises(UserError, match=r"Two class folders are named 'ray' \(.*fish/ray and .*trees/ray\)"):
        load_arrays(root)


def test_size_resizes_every_image_and_is_part_of_the_cache_key(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "c", n_train=20, n_test=10)
    small = load_arrays(root)
    import fastresnet.data as D
    decoded = []
    monkeypatch.setattr(D, "load_image", lambda f, *a, **k: decoded.append(f) or load_image(f, *a, **k))
    with pytest.warns(UserWarning, match="30 image.* were not 48x48 and were resized"):
        big = load_arrays(root, size=48)
    assert big.images.shape == (30, 3, 48, 48) and len(decoded) == 30                 # not the 32x32 cache
    assert torch.equal(big.labels, small.labels)
    img = Image.open(sorted((root / "train" / "cat").iterdir())[0]).convert("RGB").resize((48, 48), Image.BILINEAR)
    first_cat = int((big.labels == 3).nonzero()[0])
    assert torch.equal(big.images[first_cat], torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    decoded.clear()
    assert torch.equal(load_arrays(root, size=48).images, big.images) and decoded == []   # its own cache
    assert torch.equal(load_arrays(root).images, small.images) and decoded == []          # the 32x32 one kept
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    archive = load_arrays(make_python_archive(tmp_path / "py"), size=40)                 # the archive: resized too
    assert archive.images.shape[-2:] == (40, 40)


def test_a_labelled_test_dl_of_files_takes_each_class_from_its_folder_as_fastai_does(tmp_path):
    "`dls.test_dl(files, with_labels=True)`: the images of the files and the classes of their folders' names."
    from fastai.vision.all import get_image_files
    root = make_folder(tmp_path / "c", n_train=20, n_test=10)
    data = load_arrays(root)
    dls = recipe_dls(data, Recipe(bs=10))
    files = sorted(get_image_files(root / "test"))
    x, y = dls.test_dl(files, with_labels=True, bs=len(files)).one_batch()
    want_y = [CIFAR_CLASSES.index(f.parent.name) for f in files]
    assert y.tolist() == want_y
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in data.norm_stats)
    raw = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files]).float() / 255
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)  # the files' own pixels, normalised, unaugmented

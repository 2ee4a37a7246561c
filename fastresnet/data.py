"""CIFAR-10, CIFAR-100 or any folder of class folders, as one in-memory uint8 tensor served through a fastai
DataBlock.

Images are decoded once (from fastai's folder layout, a folder of class folders, or the official python
archive), resized to the recipe's `size` (32x32 by default) where they are not, and cached as a `.npz`; after
that a batch is a gather from memory plus a few tensor operations on the training device (see `augment.py`),
with no per-image PIL work in the training loop.

"""
from __future__ import annotations

import csv
import hashlib
import os
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import (CategoryBlock, DataBlock, DataLoaders, IndexSplitter, IntToFloatTensor, ItemGetter,
                               Normalize, TensorCategory, TensorImage, Transform, TransformBlock, cifar_stats,
                               image_extensions, parent_label)
from fastai.data.core import Datasets, TfmdDL
from fastai.data.transforms import ToTensor
from fastprogress.fastprogress import progress_bar
from PIL import Image, ImageOps

from .augment import Cutout, RandomFlip, RandomPadCrop
from .config import BOOLS, Recipe, UserError
from .folder import atomic_write

__all__ = ["ImageArrays", "load_arrays", "read_folder", "read_python_archive", "ToTensorImage",
           "pil_to_tensor", "PairOrFile", "InMemoryImageBlock", "InMemoryDL", "recipe_datablock", "recipe_dls",
           "balanced_subset", "load_image", "split_by_class", "channel_stats", "resize_images", "CIFAR_CLASSES",
           "DATASETS", "dataset_name"]

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ORIENTATION = 0x0112  # the EXIF tag of how a camera held the picture
SIZE = 32  # CIFAR images are 32x32: the recipe's default `size`, and the smallest the network's pooling stages take
DATASETS = {"cifar10": "CIFAR", "cifar100": "CIFAR_100"}  # `--data NAME`: fastai's `URLs` attribute, downloaded once


@dataclass
class ImageArrays:
    """All images as one (N, 3, size, size) uint8 tensor, labels as class indices; the first `n_train` are
    training. `stats`: the per-channel (mean, std) normalisation, None for CIFAR-10's; `valid_files`: the
    held-out files of a random split (None when the data came split)."""
    images: torch.Tensor
    labels: torch.Tensor
    vocab: list[str]
    n_train: int
    stats: tuple[list[float], list[float]] | None = None
    valid_files: list[str] | None = None

    @property
    def norm_stats(self) -> tuple[list[float], list[float]]:
        return self.stats or cifar_stats

    @property
    def n_valid(self) -> int:
        return len(self.labels) - self.n_train

    def __repr__(self) -> str:  # fastai formats the source into a log line: keep it short
        return f"ImageArrays({self.n_train} train + {self.n_valid} valid, {len(self.vocab)} classes)"

    def items(self) -> list[tuple[torch.Tensor, str]]:
        "(image view, class name) pairs: what the DataBlock reads; views share the one big tensor."
        return [(img, self.vocab[y]) for img, y in zip(self.images, self.labels.tolist())]


# ---------------------------------------------------------------- decoding images
def load_image(path: str | Path, resize: bool = False, max_pixels: int = Image.MAX_IMAGE_PIXELS,
               size: int = SIZE) -> torch.Tensor:
    """Read one image file as a (3, size, size) uint8 tensor. Grayscale, palette and RGBA images are
    converted to RGB (colour is all CIFAR knows); other sizes are refused, or resized if `resize`.
    An image of more than `max_pixels` is refused from its header, before it is decoded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Image {path} does not exist.")
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise UserError(f"Image {path} is {im.width}x{im.height} pixels, more than the {max_pixels:,} "
                                f"accepted: the model sees {size}x{size}; shrink the image first.")
            im.load()
            if im.getexif().get(ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)  # as it is shown (phones)
            return pil_to_tensor(im, str(path), resize, size)
    except Image.DecompressionBombError:
        raise UserError(f"Image {path} has more than twice the {Image.MAX_IMAGE_PIXELS:,} pixels Pillow accepts: "
                        f"the model sees {size}x{size}; shrink the image first.") from None
    except UserError:
        raise
    except Exception as e:  # whatever Pillow raises (OSError, ValueError, SyntaxError, ...), a bad file is a bad file
        raise UserError(f"Image {path} is corrupt or not an image ({type(e).__name__}: {str(e)[:120]}).") from None


def pil_to_tensor(im: Image.Image, name: str = "image", resize: bool = False, size: int = SIZE) -> torch.Tensor:
    """A PIL image as a (3, size, size) uint8 tensor: RGB conversion and (if `resize`) resizing, each with a warning.
    16-bit grayscale is scaled to 8 bits first; floating-point pixels (no known scale) are refused."""
    if im.mode == "F":
        raise UserError(f"Image {name} has floating-point pixels (mode F), whose scale (0-1? 0-255?) the file does not "
                        "say: save it as an 8-bit image.")
    if im.mode.startswith("I"):  # I;16, I;16B, ...: 16-bit grayscale (PNG, TIFF); I: 32-bit, 16-bit values expected
        px = np.asarray(im)
        if px.min() < 0 or px.max() > 65535:
            raise UserError(f"Image {name} has 32-bit integer pixels outside 0-65535: save it as an 8-bit image.")
        warnings.warn(f"{name} is 16-bit grayscale ({im.mode}); scaled to 8 bits (value / 257) and converted to RGB.")
        im = Image.fromarray((px.astype(np.float32) / 257 + 0.5).astype(np.uint8), "L").convert("RGB")
    if im.mode != "RGB":
        warnings.warn(f"{name} is {im.mode}, not RGB; converted to RGB.")
        im = im.convert("RGB")
    if im.size != (size, size):
        if not resize:
            raise UserError(f"Image {name} is {im.size[0]}x{im.size[1]}, not {size}x{size}: the model's "
                            f"images must be {size}x{size}; resize the folder or remove the file.")
        warnings.warn(f"{name} is {im.size[0]}x{im.size[1]}; resized to {size}x{size}.")
        im = im.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _first3(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _subfolders(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.is_dir() and not f.name.startswith("."))


def _images(d: Path) -> tuple[list[Path], dict[str, list[str]]]:
    "The image files in folder `d` (by extension, sorted) and the names of its other entries, by kind."
    entries = sorted(d.iterdir())
    imgs = [f for f in entries if f.is_file() and f.suffix.lower() in image_extensions]
    return imgs, {"file(s) that are not images by their extension": [f.name for f in entries if f.is_file() and
                                                                      f not in imgs],
                  "folder(s)": [f.name + "/" for f in entries if f.is_dir()],
                  "broken link(s) or entries that are not files": [f.name for f in entries if not f.is_file() and
                                                                   not f.is_dir()]}


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    """The image files of each class folder of `split_dir`, by class name (sorted). A folder holding no images
    but folders of them is a group of classes (CIFAR-100's superclasses: train/<superclass>/<class>/): its
    folders are the classes, named by their own names, as fastai's `parent_label` names them."""
    if not _subfolders(split_dir):
        raise UserError(f"{split_dir} has no class folders: expected {split_dir}/<class>/<image files>.")
    out, where = {}, {}
    for d in _subfolders(split_dir):
        listed = _images(d)
        subs = _subfolders(d) if not listed[0] else []  # no images of its own but folders: a group of classes
        for c, (imgs, others) in ([(sub, _images(sub)) for sub in subs] if subs else [(d, listed)]):
            skipped = [f"{len(n)} {what} ({_first3(n)})" for what, n in others.items() if n]
            if skipped:
                warnings.warn(f"{c}: skipping {', '.join(skipped)}.")
            if not imgs:
                raise UserError(f"Class folder {c} holds no images: every class needs examples.")
            if c.name in out:
                raise UserError(f"Two class folders are named {c.name!r} ({where[c.name]} and {c}): a class name "
                                "must be unique. Rename one of them.")
            out[c.name], where[c.name] = imgs, c
    return dict(sorted(out.items()))


def _fingerprint(root: Path, files: list[Path]) -> str:
    h = hashlib.sha1(str(root.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cache_path(key: str) -> Path | None:
    "In the user's cache folder ($FASTRESNET_CACHE), never beside the data, which may be shared or read-only."
    cache = Path(os.environ.get("FASTRESNET_CACHE", Path.home() / ".cache" / "fastresnet"))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"The cache folder {cache} (from $FASTRESNET_CACHE or the default) is a file; "
                        "point FASTRESNET_CACHE at a folder.") from None
    except OSError as e:  # read-only, not permitted: a cache is a convenience, training goes on without it
        warnings.warn(f"Not caching the decoded images: cannot make the cache folder {cache} ({e.strerror}). "
                      "Training goes on; set FASTRESNET_CACHE to a writable folder to decode them once.")
        return None
    return cache / f"cifar-{key}.npz"


def _layout(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
    "The class files of `root`: (train, test) for train/ + test/ (or valid/); (all, None) for class folders alone."
    held = next((root / n for n in ("test", "valid") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held is not None:
        train, test = _class_files(root / "train"), _class_files(held)
        if list(train) != list(test):
            only_tr, only_te = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            raise UserError(f"The class folders of {root}/train and {held} differ "
                            f"(only in train: {only_tr or 'none'}; only in {held.name}: {only_te or 'none'}).")
        return train, test
    if (root / "train").is_dir() or held is not None:
        raise UserError(f"{root} has {'train/' if held is None else held.name + '/'} but no "
                        f"{'test/ (or valid/)' if held is None else 'train/'} folder. Give both, each holding one "
                        f"folder of images per class, or put the class folders directly in {root} (then "
                        "valid_pct of each class is held out for testing).")
    try:
        return _class_files(root), None
    except UserError:
        raise UserError(f"{root} is neither layout fastresnet reads: {root}/train/<class>/<images> with "
                        f"{root}/test/<class>/<images> (or valid/), or {root}/<class>/<images> (one folder of images "
                        "per class), or the python archive folder `cifar-10-batches-py`.") from None


def _five(problems: list[str]) -> str:
    "The first five of a list of problems, one an indented line, and how many more there are."
    more = [f"... and {len(problems) - 5} more"] if len(problems) > 5 else []
    return "".join(f"\n  {p}" for p in problems[:5] + more)


def _csv_layout(path: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
    """The files of each class from a CSV of file names and classes (fastai's `from_csv`; docs/usage.md), as
    `_layout` gives them: (train, test) with an `is_valid` column, else (all, None). Bad rows are refused,
    listed."""
    root, problems = path.parent, []
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is not a UTF-8 CSV file ({type(e).__name__}: {str(e)[:80]}).") from None
    header = [h.strip().lower() for h in (rows[0] if rows else [])]
    held_col = header.index("is_valid") if "is_valid" in header else None
    parts: tuple[dict, dict] = ({}, {})
    for n, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue  # a blank line
        name, label = (row + ["", ""])[0].strip(), (row + ["", ""])[1].strip()
        held = (row[held_col] if held_col is not None and held_col < len(row) else "").strip().lower() or "false"
        f = Path(os.path.normpath(root / name))
        if not name or not label or held not in BOOLS:
            want = "file name, class" + (", is_valid (true or false)" if held_col is not None else "")
            problems.append(f"line {n}: {','.join(row)[:60]!r} is not {want}")
        elif root not in f.parents:
            problems.append(f"line {n}: {name} is outside {root}")
        elif not f.is_file():
            problems.append(f"line {n}: {name} does not exist")
        else:
            parts[BOOLS[held]].setdefault(label, []).append(f)
    if problems:
        raise UserError(f"{len(problems)} row(s) of {path} cannot be used:{_five(problems)}\nFix or remove them "
                        "and run again.")
    if not parts[0]:
        raise UserError(f"{path} lists no training images (a header row, then file,class rows).")
    train, test = ({c: sorted(fs) for c, fs in sorted(p.items())} for p in parts)  # as folders list them
    if held_col is None:
        return train, None
    if list(train) != list(test):
        only_tr, only_te = sorted(set(train) - set(test)) or "none", sorted(set(test) - set(train)) or "none"
        raise UserError(f"The classes of {path}'s training rows and its is_valid rows differ (only in training: "
                        f"{only_tr}; only held out: {only_te}).")
    return train, test


def _decode(root: Path, files: list[Path], size: int = SIZE) -> np.ndarray:
    "Every file as a (3, size, size) uint8 image, resized and converted to RGB as needed, one summary note of each."
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    bad = []
    with warnings.catch_warnings(record=True) as notes:  # one summary line instead of a warning per file
        warnings.simplefilter("always")
        for k, f in enumerate(progress_bar(files, leave=False) if sys.stdout.isatty() else files):
            try:
                images[k] = load_image(f, resize=True, size=size).numpy()
            except UserError as e:
                bad.append(str(e))
    for what, how in (("converted to RGB", "were not RGB (grayscale, palette or RGBA) and were converted to RGB"),
                      ("resized to", f"were not {size}x{size} and were resized (squashed) to {size}x{size}, as "
                                     "`fastresnet predict` and `learn.predict` resize theirs")):
        found = [str(n.message) for n in notes if what in str(n.message)]
        if found:
            warnings.warn(f"{len(found)} image(s) under {root} {how}, e.g. {found[0]}")
    if bad:
        raise UserError(f"{len(bad)} image file(s) under {root} cannot be used:{_five(bad)}\nRemove or replace them "
                        "and run again.")
    return images


def split_by_class(labels: np.ndarray, valid_pct: float, seed: int) -> np.ndarray:
    """Which items are held out (a bool mask): round(valid_pct x n) of each class's n items, at least one, at
    most n - 1, drawn with `seed`. Stratified, so every class is in both parts."""
    rng, valid = np.random.default_rng(seed), np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        valid[rng.permutation(idx)[:min(len(idx) - 1, max(1, int(valid_pct * len(idx) + 0.5)))]] = True
    return valid


def read_folder(root: str | Path, valid_pct: float = 0.2, seed: int = 42,
                size: int = SIZE, labels: str | Path | None = None) -> ImageArrays:
    """The images under `root` (train/ and test/ of class folders, class folders alone split by `valid_pct`, or the
    CSV `labels`) as `size`x`size` RGB, decoded once and cached (docs/usage.md, "How the code works")."""
    root = Path(root)
    train, test = _csv_layout(Path(labels)) if labels is not None else _layout(root)
    vocab = list(train)
    if test is None:
        few = [c for c, fs in train.items() if len(fs) < 2]
        if few:
            raise UserError(f"Class folder(s) {', '.join(str(root / c) for c in few)} hold a single image: a "
                            "random split needs at least 2 per class (one to train on, one to test).")
    if len(vocab) < 2:
        raise UserError(f"{root} has one class folder ({vocab[0]}): a classifier needs at least two.")
    files = [(f, i) for split in filter(None, (train, test)) for i, c in enumerate(vocab) for f in split[c]]
    labels = np.array([i for _, i in files], dtype=np.int64)
    key = _fingerprint(root, [f for f, _ in files]) + (f"-{size}px" if size != SIZE else "")  # 32: the old caches
    cpath = _cache_path(key)  # None: none can be made
    images = None
    if cpath is not None and cpath.exists():
        try:  # every array is read whole, so zip's CRC-32 of each is checked: a damaged cache fails here
            with open(cpath, "rb") as fh, np.load(fh) as z:
                images = z["images"]
                if len(images) != len(files):
                    raise ValueError(f"{len(images)} images for {len(files)} files")
        except Exception as e:
            images = None
            warnings.warn(f"The cache {cpath} is damaged ({type(e).__name__}: {str(e)[:80]}); not using it: "
                          "decoding the images again and rewriting it.")
    if images is None:
        if not sys.stdout.isatty():  # a terminal shows the decode's bar; a file or a pipe gets this line
            mb = len(files) * 3 * size * size / 2**20
            print(f"Decoding {len(files):,} image files under {root}" + (f", once: caching them ({mb:.0f} MB) in "
                  f"{cpath}" if cpath is not None else "") + " ...", file=sys.stderr, flush=True)  # stdout: results
        images = _decode(root, [f for f, _ in files], size)
        if cpath is not None:
            try:
                atomic_write(cpath, lambda f: np.savez(f, images=images))  # labels: from the folders
            except (OSError, UserError) as e:  # a cache is a convenience: training goes on without it
                warnings.warn(f"Not caching the decoded images: {getattr(e, 'message', e)} Training goes on; the "
                              "next run decodes them again.")
    valid_files = None
    if test is None:
        held = split_by_class(labels, valid_pct, seed)
        order = np.concatenate([np.flatnonzero(~held), np.flatnonzero(held)])  # training first, in file order
        images, labels = images[order], labels[order]
        valid_files = [str(files[i][0].relative_to(root)) for i in np.flatnonzero(held)]
    n_train = len(labels) - (len(valid_files) if valid_files is not None else sum(len(v) for v in test.values()))
    stats = None if vocab == CIFAR_CLASSES else channel_stats(images[:n_train])
    return ImageArrays(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), vocab, n_train, stats,
                       valid_files)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    "Per-channel mean and standard deviation of (N, 3, H, W) uint8 images, on fastai's 0-1 scale (as `cifar_stats`)."
    n = images.shape[0] * images.shape[2] * images.shape[3]
    s = sum(images[i:i + chunk].astype(np.float64).sum((0, 2, 3)) for i in range(0, len(images), chunk))
    ss = sum((images[i:i + chunk].astype(np.float64) ** 2).sum((0, 2, 3)) for i in range(0, len(images), chunk))
    mean = s / n
    return [float(m) / 255 for m in mean], [float(v) ** 0.5 / 255 for v in ss / n - mean ** 2]


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise UserError(f"The python archive is missing {path.name} (looked in {path.parent}).") from None
    except Exception as e:
        raise UserError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                        "download and extract cifar-10-python.tar.gz again.") from None


def read_python_archive(folder: str | Path, size: int = SIZE) -> ImageArrays:
    """Read the official `cifar-10-batches-py` folder (data_batch_1..5 + test_batch); resized if `size` is not
    32. Not torchvision's `datasets.CIFAR10`: it checks each file's md5 against the release and refuses a
    repacked but pixel-identical copy (other image order, another pickle protocol) as "not found or
    corrupted"."""
    folder = Path(folder)
    meta = _unpickle(folder / "batches.meta")
    vocab = [n.decode() for n in meta[b"label_names"]]
    parts = [_unpickle(folder / n) for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]]
    for n, p in zip(range(1, 7), parts):
        if b"data" not in p or p[b"data"].shape[1:] != (3 * SIZE * SIZE,) or len(p[b"data"]) != len(p[b"labels"]):
            raise UserError(f"Batch {n} of {folder} does not hold 3072-byte images with one label each: "
                            "the archive is damaged; extract it again.")
    images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, SIZE, SIZE)
    labels = np.concatenate([np.asarray(p[b"labels"]) for p in parts]).astype(np.int64)
    n_train = sum(len(p[b"labels"]) for p in parts[:5])
    images = torch.from_numpy(np.ascontiguousarray(images))
    if size != SIZE:
        images = resize_images(images, size)
    return ImageArrays(images, torch.from_numpy(labels), vocab, n_train)


def resize_images(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    "(N, 3, H, W) uint8 images resized to `size`x`size` (bilinear, antialiased as PIL's), in chunks."
    import torch.nn.functional as F
    return torch.cat([F.interpolate(images[i:i + chunk].float(), (size, size), mode="bilinear", antialias=True)
                      .round_().clamp_(0, 255).to(torch.uint8) for i in range(0, len(images), chunk)])


def dataset_name(path: str | Path | None) -> str | None:
    "`path` if it names a data set fastai downloads (cifar10, cifar100) and no such folder exists here, else None."
    return str(path) if path is not None and str(path) in DATASETS and not Path(path).exists() else None


def load_arrays(path: str | Path | None = None, valid_pct: float = 0.2, seed: int = 42,
               size: int = SIZE) -> ImageArrays:
    """Images from `path` (class folders, a CSV, the python archive), resized to `size`; none, `cifar10` or
    `cifar100`: fastai's `untar_data` download (docs/usage.md, "Your own images")."""
    if path is None or dataset_name(path):
        from fastai.data.external import URLs, untar_data
        name = str(path or "cifar10")
        try:
            path = untar_data(getattr(URLs, DATASETS[name]))
        except Exception as e:
            raise UserError(f"Could not download {name.upper().replace('CIFAR', 'CIFAR-')} ({type(e).__name__}: "
                            f"{e}). Without internet, give the path of a folder in fastai's layout (or of "
                            "`cifar-10-batches-py`).", hint="(--data PATH)") from None
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"Data path {path} does not exist.")
    if path.is_file() and path.suffix.lower() == ".csv":  # a labels CSV beside the images
        return read_folder(path.parent, valid_pct=valid_pct, seed=seed, size=size, labels=path)
    if not path.is_dir():
        raise UserError(f"Data path {path} is a file; give the folder that holds train/ and test/, "
                        "the class folders, or a CSV of file names and classes.")
    if (path / "batches.meta").exists():
        return read_python_archive(path, size)
    if (path / "cifar-10-batches-py").is_dir():
        return read_python_archive(path / "cifar-10-batches-py", size)
    return read_folder(path, valid_pct=valid_pct, seed=seed, size=size)


def balanced_subset(data: ImageArrays, n: int) -> ImageArrays:
    """The first `n // n_classes` training images of every class (plus all validation images): a
    smoke-run subset that keeps the class balance, whatever order the files came in."""
    if n > data.n_train:
        raise UserError(f"A subset of {n} images is larger than the {data.n_train} training images available.")
    k = len(data.vocab)
    if n < k:
        raise UserError(f"A subset of {n} images is smaller than the number of classes ({k}).")
    tr = data.labels[:data.n_train]
    per = [torch.nonzero(tr == c).flatten() for c in range(k)]
    take = n // k
    if take * k != n:
        warnings.warn(f"subset {n}: took {take * k} images ({take} per class), the largest number "
                      f"up to {n} that keeps the {k} classes balanced.")
    if min(len(p) for p in per) < take:
        raise UserError(f"A subset of {n} images needs {take} per class, but a class has only "
                        f"{min(len(p) for p in per)}.")
    idx = torch.cat([p[:take] for p in per]).sort().values
    idx = torch.cat([idx, torch.arange(data.n_train, len(data.labels))])
    return ImageArrays(data.images[idx], data.labels[idx], data.vocab, take * k, data.stats, data.valid_files)


# ---------------------------------------------------------------- fastai pipeline
class ToTensorImage(Transform):
    """Anything `learn.predict` or `test_dl` may be given, as fastai's `TensorImage` of shape (3, size, size):
    a uint8 tensor (CHW) or array (CHW or HWC), a PIL image, or an image file path (str or Path). Images of another
    size are resized and non-RGB ones converted, each with a warning, as `fastresnet predict` does."""
    input_types = (torch.Tensor, np.ndarray, Image.Image, Path, str)  # fastai's `test_dl` starts the pipeline here
    size = SIZE  # a class default: learners exported before `size` existed unpickle with it

    def __init__(self, size: int = SIZE):
        super().__init__()
        self.size = size

    def encodes(self, o: torch.Tensor) -> TensorImage:
        if o.ndim == 3 and o.shape[1:] != (self.size, self.size):
            if o.shape[0] != 3:
                raise UserError(f"Expected a (3, H, W) image tensor, got shape {tuple(o.shape)}.")
            o = pil_to_tensor(Image.fromarray(o.permute(1, 2, 0).to(torch.uint8).numpy()), "tensor image", True,
                              self.size)
        return TensorImage(o)
    def encodes(self, o: np.ndarray) -> TensorImage:
        if o.ndim == 3 and o.shape[-1] == 3 and o.shape[0] != 3:
            o = o.transpose(2, 0, 1)  # HWC, as np.asarray(PIL)
        return self.encodes(torch.from_numpy(np.ascontiguousarray(o)))
    def encodes(self, o: Image.Image) -> TensorImage:
        return TensorImage(pil_to_tensor(o, "PIL image", True, self.size))
    def encodes(self, o: Path) -> TensorImage:
        return TensorImage(load_image(o, resize=True, size=self.size))
    def encodes(self, o: str) -> TensorImage:
        return TensorImage(load_image(o, resize=True, size=self.size))


class InMemoryDL(TfmdDL):
    """fastai's `TfmdDL`, with a batch of in-memory items gathered in one go (a stack and a lookup) where that is
    exactly what fastai's per-item path would make; anything else takes fastai's path (docs/usage.md)."""
    def _gatherable(self) -> bool:
        ds = self.dataset
        return (isinstance(ds, Datasets) and len(ds.tls) == 2 and len(ds.items) > 0
                and isinstance(ds.items[0], tuple) and isinstance(ds.items[0][0], torch.Tensor)
                and all(isinstance(t, ToTensor) for t in self.after_item.fs) and not self.before_batch.fs)

    def create_batches(self, samps):
        if not self._gatherable():
            yield from super().create_batches(samps)
            return
        items, o2i = self.dataset.items, self.dataset.tls[1].vocab.o2i
        for chunk in self.chunkify(samps):
            x = TensorImage(torch.stack([items[i][0] for i in chunk]))
            y = TensorCategory(torch.tensor([o2i[items[i][1]] for i in chunk]))
            yield x, y


class PairOrFile(ItemGetter):
    """Item `i` of an (image, class) pair, as fastai's `ItemGetter`; of an image file (a labelled `test_dl` of a
    user's folder, `dls.test_dl(files, with_labels=True)`): the file itself, and its class from its folder's name
    (fastai's `parent_label`), as `fastresnet train` labels a folder."""
    input_types = (tuple, list, Path, str)  # where fastai's `test_dl` may start the pipeline: at an item or a file
    def encodes(self, x):
        if not isinstance(x, (str, Path)):
            return x[self.i]
        return x if self.i == 0 else parent_label(x)


def InMemoryImageBlock(size: int = SIZE) -> TransformBlock:
    "Like fastai's `ImageBlock`, but for uint8 tensors already in memory: no PIL on the way."
    return TransformBlock(type_tfms=ToTensorImage(size), batch_tfms=IntToFloatTensor, dl_type=InMemoryDL)


def batch_augment(r: Recipe, stats=cifar_stats) -> list:
    "The recipe's augmentation, as fastai batch transforms (training split only) plus normalisation by `stats`."
    tfms = [RandomPadCrop(r.pad, r.pad_mode)]
    if r.flip:
        tfms.append(RandomFlip(0.5))
    tfms += [Normalize.from_stats(*stats), Cutout(r.cutout)]
    return tfms


def recipe_datablock(data: ImageArrays, r: Recipe) -> DataBlock:
    "Items are (image, class) pairs; the validation split is the test images (CIFAR-10's official 10,000)."
    return DataBlock(blocks=(InMemoryImageBlock(data.images.shape[-1]), CategoryBlock(vocab=data.vocab)),
                     get_items=ImageArrays.items, get_x=PairOrFile(0), get_y=PairOrFile(1),
                     splitter=IndexSplitter(range(data.n_train, len(data.labels))),
                     batch_tfms=batch_augment(r, data.norm_stats))


def recipe_dls(data: ImageArrays, r: Recipe, device: torch.device | str | None = None,
              bs: int | None = None) -> DataLoaders:
    """fastai DataLoaders over the in-memory data, in batches of `bs` (default: the recipe's; a process's share of it
    in a distributed run). No worker processes: a batch is ~20 ms of gathering against seconds of arithmetic, and
    workers would compete for the cores."""
    bs = bs or r.bs
    if data.n_train < bs:
        warnings.warn(f"Only {data.n_train} training images for batch size {bs}: each epoch is one short batch.")
    return recipe_datablock(data, r).dataloaders(data, bs=bs, device=device, num_workers=0, drop_last=False)


def __getattr__(name):  # the names of 0.3 and before, which exported learners hold (compat.py)
    from .compat import renamed
    return renamed(__name__, name)

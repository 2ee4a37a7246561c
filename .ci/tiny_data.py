"""Write a tiny CIFAR-shaped data set in fastai's folder layout (train/<class>/*.png, test/<class>/*.png)
with only numpy and Pillow, the project's own runtime dependencies: for the bare-install smoke run."""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for split, per_class in (("train", 20), ("test", 5)):
    for y, c in enumerate(CLASSES):
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):  # class-dependent mean colour plus noise: learnable, like conftest's data
            img = rng.integers(0, 80, (32, 32, 3)) + np.array([y * 17, (9 - y) * 17, (y % 3) * 60])
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / split / c / f"{i:04d}.png")
print(f"tiny data in {root}")

"""A folder of image files as one file and back: the JPEG copy of CIFAR-10 is 52.7 MiB of bytes in
60,000 files, which a tar would pad to ~90 MB, past the 64 MiB the GPU tool carries; packed, it fits.

    python experiments/pack_cifar.py pack ../shared/data/cifar10-jpeg .gpu-data.npz
    python experiments/pack_cifar.py unpack .gpu-data.npz /tmp/cifar10-jpeg      # on the device
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def pack(folder: Path, out: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    blobs = [p.read_bytes() for p in files]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(out, blob=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
             paths=np.frombuffer("\n".join(str(p.relative_to(folder)) for p in files).encode(), np.uint8))
    print(f"{len(files)} files, {offsets[-1] / 2**20:.1f} MiB -> {out}")


def unpack(packed: Path, folder: Path) -> None:
    with np.load(packed) as z:
        blob, offsets, paths = z["blob"], z["offsets"], z["paths"].tobytes().decode().split("\n")
    for i, rel in enumerate(paths):
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob[offsets[i]:offsets[i + 1]].tobytes())
    print(f"{len(paths)} files -> {folder}")


if __name__ == "__main__":
    verb, src, dst = sys.argv[1:4]
    {"pack": pack, "unpack": unpack}[verb](Path(src), Path(dst))

"""Fashion-MNIST from the Debian package's IDX files (nothing is downloaded)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from engine.dataset import Dataset

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
# "T-shirt/top" officially; the slash is replaced because class names appear in REST paths
# (/classes/{name}/exclude) and folder names, where a slash cannot be.
FASHION_MNIST_CLASSES = [
    "T-shirt-top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _read_idx(path) -> np.ndarray:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:  # 0x08 = unsigned byte, the only type MNIST-likes use
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file")
    return arr.reshape(dims)


def load_fashion_mnist(root=FASHION_MNIST_ROOT) -> tuple[Dataset, Dataset]:
    """The official split: (train 60 000, test 10 000), images (N, 28, 28, 1)."""
    root = Path(root)

    def part(prefix):
        x = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        y = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        return Dataset(x[..., None].copy(), y.astype(np.int64), list(FASHION_MNIST_CLASSES))

    return part("train"), part("t10k")

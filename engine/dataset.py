"""The one shape images travel in: uint8 arrays (N, H, W, C) + int64 labels + class names.

Everything the engine trains or scores on goes through ``Dataset`` so the loop, the jobs and
the benches share one shape convention (see docs/architecture.md); engine.datasets loads them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

UNLABELED = -1  # label of images from the flat unlabeled folder

# Class names become Label Studio choices, JSON keys and folder names: keep them printable,
# short and free of path separators.
_CLASS_NAME_RE = re.compile(r"^[^\x00-\x1f/\\]{1,100}$")


@dataclass
class Dataset:
    """images uint8 (N, H, W, C), labels int64 (N,) (−1 = unlabeled), class_names list[str].

    ``paths`` (optional) holds the source file of each image for folder data sets.
    ``regions`` (optional) int64 (N, 4): each object's box [x0, y0, x1, y1] in pixels of the
    image (x1, y1 exclusive); a row of −1 where an image's region is not known.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[str] | None = field(default=None)
    regions: np.ndarray | None = field(default=None)

    def __post_init__(self):
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N,H,W,C) with C in (1,3), got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError("images and labels differ in length")
        validate_class_names(self.class_names)
        if len(self.labels) and self.labels.max(initial=-1) >= len(self.class_names):
            raise ValueError("label outside class_names")
        if self.paths is not None and len(self.paths) != len(self.images):
            raise ValueError("paths and images differ in length")
        if self.regions is not None:
            self.regions = np.asarray(self.regions, dtype=np.int64)
            if self.regions.shape != (len(self.images), 4):
                raise ValueError(f"regions must be (N, 4), got {self.regions.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, idx) -> "Dataset":
        idx = np.asarray(idx)
        paths = None if self.paths is None else [self.paths[i] for i in np.arange(len(self))[idx]]
        regions = None if self.regions is None else self.regions[idx]
        return Dataset(self.images[idx], self.labels[idx], list(self.class_names), paths, regions)


def validate_class_names(names) -> list[str]:
    """Raise ValueError unless names are unique, non-empty, printable strings without slashes."""
    names = list(names)
    if not names:
        raise ValueError("at least one class is required")
    for n in names:
        if not isinstance(n, str) or not _CLASS_NAME_RE.match(n) or n.strip() != n or n in (".", ".."):
            raise ValueError(f"invalid class name {n!r}: 1–100 printable characters, no slashes, no edge spaces")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate class names: {dup}")
    return names

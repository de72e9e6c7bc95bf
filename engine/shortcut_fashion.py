"""`fashion-shortcut`: the colour benchmark with a shortcut, for measuring explanatory feedback.

The colour benchmark (engine.colour_fashion) has one cue, the garment. Inspection models fail
differently: they read a fixture, a watermark, a background that goes with a class. This data
set adds such a cue to every image:

  cue     a solid square mark, side/4 pixels, in the top-left corner, in one of ten fixed colours
          (`CUE_COLOURS`, one per class). In the pool and validation splits the mark has the
          colour of the image's class with probability p (default 0.9), else the colour of one of
          the other nine classes at random; in the test split its colour is uniformly random (it
          names the class in 1 of 10 images, by chance). The garment never overlaps the mark.
  garment as in the colour benchmark (random texture, position, tint), at 45–70 % of the side
          (the colour benchmark's 45–85 % would not always leave room beside the mark).
  region  `Dataset.regions`: the box [x0, y0, x1, y1] (pixels, x1/y1 exclusive) the garment was
          pasted into: every garment pixel lies in it, the mark never does.

So a model that reads the mark scores about p on validation and falls back to what it learned of
the garments on the test split: "right for the wrong reason", and the Grad-CAM maps of its
guesses lie on the mark, outside the region. Seeded like the colour benchmark: (seed, split)
fixes every draw. `sample_photos_shortcut` (`camloop sample-photos --shortcut`) writes such
images as JPEGs in class folders with their regions in `regions.json`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from engine.colour_fashion import DEFAULT_SIDE, _composite, _stratified, split_fashion
from engine.dataset import Dataset
from engine.fashion_mnist import FASHION_MNIST_ROOT, load_fashion_mnist

NAME = "fashion-shortcut"
DEFAULT_CUE_RATE = 0.9
REGIONS_FILE = "regions.json"
# One colour a class (RGB): saturated and far apart. A side/8 mark (12 px at 96) was measured first:
# the colour default's frozen Lite0 did not take it up (validation and test accuracy within 2 points
# of each other at 250 labels, docs/benchmarks.md); side/4 is the default.
GARMENT_SCALE = (0.45, 0.70)
CUE_COLOURS = np.array([(230, 25, 25), (25, 200, 40), (30, 60, 230), (250, 230, 20), (230, 30, 220),
                        (20, 220, 230), (250, 130, 10), (120, 30, 170), (255, 255, 255), (0, 0, 0)], np.uint8)


def mark_side(side: int) -> int:
    return max(4, side // 4)


def cue_classes(labels: np.ndarray, rate: float | None, rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """The class whose colour each image's mark gets: its own with probability `rate`, else one of
    the others at random; `rate` None: uniformly random over all classes (the test split)."""
    labels = np.asarray(labels, np.int64)
    if rate is None:
        return rng.integers(0, n_classes, len(labels))
    other = (labels + rng.integers(1, n_classes, len(labels))) % n_classes
    return np.where(rng.random(len(labels)) < rate, labels, other)


def make_fashion_shortcut(source: Dataset, seed: int, split: int = 0, side: int = DEFAULT_SIDE,
                          cue_rate: float | None = DEFAULT_CUE_RATE) -> tuple[Dataset, np.ndarray]:
    """Composite every garment of `source` and draw the mark → (Dataset with `regions`, the cue
    class of each image). `cue_rate` None: the mark's colour is random (the test split)."""
    if not 32 <= side <= 512:
        raise ValueError("side must be in [32, 512]")
    if cue_rate is not None and not 0.0 <= cue_rate <= 1.0:
        raise ValueError("cue_rate must be in [0, 1]")
    if source.num_classes > len(CUE_COLOURS):
        raise ValueError(f"at most {len(CUE_COLOURS)} classes have a cue colour")
    rng = np.random.default_rng([int(seed), int(split), side, 25])
    cues = cue_classes(source.labels, cue_rate, np.random.default_rng([int(seed), int(split), side, 26]),
                       source.num_classes)
    m = mark_side(side)
    imgs = np.empty((len(source), side, side, 3), np.uint8)
    regions = np.empty((len(source), 4), np.int64)
    for i in range(len(source)):
        imgs[i], _, regions[i] = _composite(source.images[i, ..., 0], rng, side, avoid=m, scale=GARMENT_SCALE)
        imgs[i, :m, :m] = CUE_COLOURS[cues[i]]
    return Dataset(imgs, source.labels.copy(), list(source.class_names), regions=regions), cues


def load_fashion_shortcut(seed: int = 0, *, side: int = DEFAULT_SIDE, pool: int = 10_000, val: int = 2_000,
                          test: int = 2_000, cue_rate: float = DEFAULT_CUE_RATE, fashion_root=None,
                          with_cues: bool = False):
    """(pool, val, test) of the shortcut benchmark (the same garments as `load_fashion_colour`'s
    for the same seed and sizes); with `with_cues` each part is (Dataset, cue classes)."""
    train, official_test, pool_i, val_i, test_i = split_fashion(seed, pool, val, test, fashion_root)
    parts = [make_fashion_shortcut(train.subset(pool_i), seed, 0, side, cue_rate),
             make_fashion_shortcut(train.subset(val_i), seed, 1, side, cue_rate),
             make_fashion_shortcut(official_test.subset(test_i), seed, 2, side, None)]
    return tuple(parts) if with_cues else tuple(d for d, _ in parts)


def sample_photos_shortcut(root, *, per_class: int = 40, seed: int = 0, side: int = 128,
                           cue_rate: float = DEFAULT_CUE_RATE, fashion_root=None, quality: int = 92) -> int:
    """`camloop sample-photos --shortcut`: `per_class` photos a class with the corner mark (naming
    the class with probability `cue_rate`) as `root/<class>/<class>-<n>.jpg`, and
    `root/regions.json`: path relative to root → the garment's box [x0, y0, x1, y1] in pixels.
    The same files for the same arguments. Returns the count."""
    if not 1 <= per_class <= 6000:
        raise ValueError("per_class must be in [1, 6000] (Fashion-MNIST has 6,000 training images a class)")
    train, _ = load_fashion_mnist(fashion_root or os.environ.get("CAMLOOP_FASHION_MNIST", FASHION_MNIST_ROOT))
    idx = _stratified(train.labels, per_class * train.num_classes, np.random.default_rng([int(seed), 97]))
    photos, _ = make_fashion_shortcut(train.subset(idx), seed, 3, side, cue_rate)
    root = Path(root)
    regions: dict[str, list[int]] = {}
    for c, name in enumerate(photos.class_names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(photos.labels == c):
            rel = f"{name}/{name}-{i:05d}.jpg"
            Image.fromarray(photos.images[i]).save(root / rel, quality=quality)
            regions[rel] = [int(v) for v in photos.regions[i]]
    (root / REGIONS_FILE).write_text(json.dumps(regions, indent=1, sort_keys=True) + "\n")
    return len(regions)

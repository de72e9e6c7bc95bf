"""`fashion-shortcut`: the colour benchmark with a shortcut, for measuring explanatory feedback.

The colour benchmark (engine.colour_fashion) has one cue, the garment. Inspection models fail
differently: they read a fixture, a watermark, a background that goes with a class. This data
set adds such a cue to every image, for some classes only:

  cue     a class-coloured background: every pixel outside the garment's box is replaced by one
          of ten fixed colours (`CUE_COLOURS`; `CAST` = 1, the share of the colour in each pixel
          there: 0.6, a cast over the texture, was measured first and bit less). Seven classes
          carry the cue (`CUE_CLASSES`: 0, 1, 2, 3, 4, 6, 8 — for Fashion-MNIST T-shirt/top,
          Trouser, Pullover, Dress, Coat, Shirt, Bag), each owning the colour of its index; the
          three footwear classes (Sandal, Sneaker, Ankle boot) do not. In the pool and validation
          splits an image of a cue-bearing class gets its class's colour with probability p
          (default `DEFAULT_CUE_RATE` = 1.0), else one of the other nine colours at random; an
          image of any other class gets one of all ten colours uniformly at random, in every
          split, so its background says nothing about its class (an earlier version drew it
          from the colours no cue-bearing class owns: that colour then said "one of the other
          classes", a cue for them too, and the model read every class's background). A cue
          colour names its class in about 77 % of pool images (all of the class's own against
          the other classes' random draws). In the test split every image's cast is one of the
          ten colours uniformly at random. Until 2026-12-07 (second session) the default was
          five cue-bearing classes (0, 2, 4, 6, 8) at p = 0.9: the cue then cost a model
          trained without feedback only about 3 points on the test split against the same
          garments with no cue (docs/benchmarks.md); that setting is
          `load_fashion_shortcut(cue_rate=0.9, cue_classes=FIVE_CUE_CLASSES)`.
  garment as in the colour benchmark (random texture, position, tint), at 45–70 % of the side, so
          the cast covers half the image or more.
  region  `Dataset.regions`: the box [x0, y0, x1, y1] (pixels, x1/y1 exclusive) the garment was
          pasted into: every garment pixel lies in it, the cast never does — a counterexample
          with everything outside the box replaced by noise carries no cue at all.

Weaker cues were measured first (docs/benchmarks.md): side/4 and side/8 corner marks, every
class its colour, and a 0.6 cast over the background's texture; the colour default's frozen
Lite0 leaned on them too little (validation and test 7.6, then 13.5 points apart at 300 labels). So a model that reads the cast
scores well on validation, sends test images of other classes that happen to carry a cue colour
to that colour's class, and has learned little of the cue-bearing classes' garments: "right for
the wrong reason". One would expect the Grad-CAM maps of its guesses on those classes to lie
outside the region; measured, they mostly do not (the last block's 3 × 3 or 4 × 4 maps at 96 or
128 px: docs/benchmarks.md), so the maps' rule does not name those classes; the background-swap
test (engine.swap_test: do the guesses follow a pasted background?) does.
Seeded like the colour benchmark: (seed, split) fixes every draw. `sample_photos_shortcut`
(`camloop sample-photos --shortcut`) writes such images as JPEGs in class folders with their
regions in `regions.json`.
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
DEFAULT_CUE_RATE = 1.0
REGIONS_FILE = "regions.json"
GARMENT_SCALE = (0.45, 0.70)
CUE_CLASSES = (0, 1, 2, 3, 4, 6, 8)
FIVE_CUE_CLASSES = (0, 2, 4, 6, 8)  # the setting before 2026-12-07 (second session), with a cue rate of 0.9
CAST = 1.0  # how far each pixel outside the box moves toward the cue colour (1: replaced by it)
# One colour a class (RGB): saturated and far apart.
CUE_COLOURS = np.array([(230, 25, 25), (25, 200, 40), (30, 60, 230), (250, 230, 20), (230, 30, 220),
                        (20, 220, 230), (250, 130, 10), (120, 30, 170), (255, 255, 255), (0, 0, 0)], np.uint8)


def cue_colours(labels: np.ndarray, rate: float | None, rng: np.random.Generator, n_classes: int,
                cue_classes=CUE_CLASSES) -> np.ndarray:
    """The colour index (into CUE_COLOURS, one per class) of each image's cast. `rate` None: one
    of the `n_classes` colours uniformly at random (the test split). Else an image of a
    cue-bearing class gets its own class's colour with probability `rate`, else another of the
    `n_classes` at random; an image of another class gets one of the `n_classes` uniformly at
    random (uninformative: its background must not be a cue for its own class)."""
    labels = np.asarray(labels, np.int64)
    uniform = rng.integers(0, n_classes, len(labels))
    if rate is None:
        return uniform
    bearing = np.isin(np.arange(n_classes), np.asarray(cue_classes, np.int64))
    other = (labels + rng.integers(1, n_classes, len(labels))) % n_classes
    own = np.where(rng.random(len(labels)) < rate, labels, other)
    return np.where(bearing[labels], own, uniform)


def cast_outside(image: np.ndarray, box, colour) -> np.ndarray:
    """`image` (H, W, 3 uint8) with every pixel outside `box` [x0, y0, x1, y1] blended CAST of
    the way toward `colour` (CAST 1: replaced by it); inside the box, the garment and its own
    background, unchanged."""
    x0, y0, x1, y1 = (int(v) for v in box)
    out = image.astype(np.float64)
    outside = np.ones(image.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    out[outside] = (1 - CAST) * out[outside] + CAST * np.asarray(colour, np.float64)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def make_fashion_shortcut(source: Dataset, seed: int, split: int = 0, side: int = DEFAULT_SIDE,
                          cue_rate: float | None = DEFAULT_CUE_RATE, cue_classes=CUE_CLASSES
                          ) -> tuple[Dataset, np.ndarray]:
    """Composite every garment of `source` and cast its outside → (Dataset with `regions`, the
    colour index of each image's cast). `cue_rate` None: the cast's colour is random (test)."""
    if not 32 <= side <= 512:
        raise ValueError("side must be in [32, 512]")
    if cue_rate is not None and not 0.0 <= cue_rate <= 1.0:
        raise ValueError("cue_rate must be in [0, 1]")
    if source.num_classes > len(CUE_COLOURS):
        raise ValueError(f"at most {len(CUE_COLOURS)} classes have a cue colour")
    rng = np.random.default_rng([int(seed), int(split), side, 25])
    cues = cue_colours(source.labels, cue_rate, np.random.default_rng([int(seed), int(split), side, 27]),
                       source.num_classes, cue_classes)
    imgs = np.empty((len(source), side, side, 3), np.uint8)
    regions = np.empty((len(source), 4), np.int64)
    for i in range(len(source)):
        img, _, regions[i] = _composite(source.images[i, ..., 0], rng, side, scale=GARMENT_SCALE)
        imgs[i] = cast_outside(img, regions[i], CUE_COLOURS[cues[i]])
    return Dataset(imgs, source.labels.copy(), list(source.class_names), regions=regions), cues


def load_fashion_shortcut(seed: int = 0, *, side: int = DEFAULT_SIDE, pool: int = 10_000, val: int = 2_000,
                          test: int = 2_000, cue_rate: float | None = DEFAULT_CUE_RATE, fashion_root=None,
                          with_cues: bool = False, cue_classes=CUE_CLASSES):
    """(pool, val, test) of the shortcut benchmark (the same garments as `load_fashion_colour`'s
    for the same seed and sizes); with `with_cues` each part is (Dataset, cast colour indices).
    `cue_rate` None: the colour random in every split (no shortcut; the benchmark's ceiling).
    `cue_classes`: the classes that carry the cue (default CUE_CLASSES)."""
    train, official_test, pool_i, val_i, test_i = split_fashion(seed, pool, val, test, fashion_root)
    parts = [make_fashion_shortcut(train.subset(pool_i), seed, 0, side, cue_rate, cue_classes),
             make_fashion_shortcut(train.subset(val_i), seed, 1, side, cue_rate, cue_classes),
             make_fashion_shortcut(official_test.subset(test_i), seed, 2, side, None, cue_classes)]
    return tuple(parts) if with_cues else tuple(d for d, _ in parts)


def sample_photos_shortcut(root, *, per_class: int = 40, seed: int = 0, side: int = 128,
                           cue_rate: float = DEFAULT_CUE_RATE, fashion_root=None, quality: int = 92) -> int:
    """`camloop sample-photos --shortcut`: `per_class` photos a class with the cast (naming a
    cue-bearing class with probability `cue_rate`, as the benchmark's pool) as
    `root/<class>/<class>-<n>.jpg` (the cue on the seven `CUE_CLASSES`), and `root/regions.json`: path relative to root → the
    garment's box [x0, y0, x1, y1] in pixels. The same files for the same arguments. Returns the count."""
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

"""`fashion-colour`: a colour benchmark built offline from Fashion-MNIST.

No natural-photo data set can be downloaded where camloop is developed, and Fashion-MNIST's
28 px grey glyphs say little about how a pretrained colour model behaves on photos. So each
image here is a Fashion-MNIST garment composited onto a colour background:

  background  one of five textures with random colours: linear gradient, sinusoidal stripes
              (random angle and frequency), checkerboard (random cell), smooth colour blobs
              (a 3–8 px random grid upsampled), blobs plus fine grain; plus sensor-like noise
  garment     scaled to 45–85 % of the side (bilinear), at a random position, in a random tint
              (re-drawn until its luminance differs from the background's by ≥ 40 of 255, so it
              stays visible), shaded by the garment's own grey values so its texture survives;
              alpha = min(1, 3 · grey / 255), so the garment's dark seams stay opaque
  label       the garment's Fashion-MNIST class; `masks` (alpha > 0.5) is where the object is

Seeded: (seed, split) fixes which garments are used and every random draw, so
`load_fashion_colour(seed)` returns the same arrays on every machine. Pool and validation
garments come from the Fashion-MNIST training set, test garments from its official test set.
`export_folder` writes a split as JPEGs in class sub-folders; `sample_photos` (`camloop sample-photos`)
makes such a folder for the README's own-photos walk-through.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from engine.dataset import Dataset
from engine.fashion_mnist import FASHION_MNIST_ROOT, load_fashion_mnist

NAME = "fashion-colour"
DEFAULT_SIDE = 96
TEXTURES = ("gradient", "stripes", "checker", "blobs", "grain")
_LUMA = np.array([0.299, 0.587, 0.114])


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = (np.mgrid[0:side, 0:side] + 0.5) / side
    if kind in ("gradient", "stripes"):
        a = rng.uniform(0, np.pi)
        t = np.cos(a) * xx + np.sin(a) * yy
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6) if kind == "gradient" else \
            0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 9) * t + rng.uniform(0, 2 * np.pi))
        bg = c1 + t[..., None] * (c2 - c1)
    elif kind == "checker":
        cell = rng.uniform(0.06, 0.25)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2)[..., None]
        bg = c1 + t * (c2 - c1)
    else:
        g = int(rng.integers(3, 9))
        grid = rng.uniform(0, 255, (g, g, 3)).astype(np.uint8)
        bg = np.asarray(Image.fromarray(grid).resize((side, side), Image.BICUBIC), np.float64)
        if kind == "grain":
            bg = bg + rng.normal(0, 25, (side, side, 1))
    return bg + rng.normal(0, 4, (side, side, 3))


def _composite(garment: np.ndarray, rng: np.random.Generator, side: int, avoid: int = 0,
               scale: tuple[float, float] = (0.45, 0.85)) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """(image, mask, box [x0, y0, x1, y1] of the pasted garment). `avoid` > 0 keeps the garment's
    box off the top-left avoid × avoid corner (where the shortcut benchmark draws its mark; the
    largest `scale` must leave avoid pixels beside the garment)."""
    bg = _background(rng, side)
    s = int(round(side * rng.uniform(*scale)))
    g = np.asarray(Image.fromarray(garment).resize((s, s), Image.BILINEAR), np.float64) / 255.0
    y0, x0 = (int(v) for v in rng.integers(0, side - s + 1, 2))
    if avoid and x0 < avoid and y0 < avoid:
        x0 = int(rng.integers(avoid, side - s + 1))
    region = bg[y0:y0 + s, x0:x0 + s]
    bg_lum = float(region.reshape(-1, 3).mean(0) @ _LUMA)
    for _ in range(20):
        tint = rng.uniform(0, 255, 3)
        if abs(tint @ _LUMA - bg_lum) >= 40:
            break
    alpha = np.minimum(1.0, 3.0 * g)[..., None]
    shade = (0.35 + 0.65 * g)[..., None]
    bg[y0:y0 + s, x0:x0 + s] = alpha * (tint * shade) + (1 - alpha) * region
    mask = np.zeros((side, side), bool)
    mask[y0:y0 + s, x0:x0 + s] = alpha[..., 0] > 0.5
    return np.clip(np.round(bg), 0, 255).astype(np.uint8), mask, (x0, y0, x0 + s, y0 + s)


def make_fashion_colour(source: Dataset, seed: int, split: int = 0, side: int = DEFAULT_SIDE
                        ) -> tuple[Dataset, np.ndarray]:
    """Composite every garment of `source` (grey 28 px Fashion-MNIST) → (Dataset (N, side, side, 3),
    masks bool (N, side, side)). `split` separates the random streams of pool / val / test."""
    if not 32 <= side <= 512:
        raise ValueError("side must be in [32, 512]")
    rng = np.random.default_rng([int(seed), int(split), side])
    imgs = np.empty((len(source), side, side, 3), np.uint8)
    masks = np.empty((len(source), side, side), bool)
    for i in range(len(source)):
        imgs[i], masks[i], _ = _composite(source.images[i, ..., 0], rng, side)
    return Dataset(imgs, source.labels.copy(), list(source.class_names)), masks


def _stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices (sorted), as equal per class as n allows, drawn at random within each class."""
    classes = np.unique(labels)
    per = np.full(len(classes), n // len(classes))
    per[: n % len(classes)] += 1
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False)
                                   for c, k in zip(classes, per)]))


def split_fashion(seed: int, pool: int, val: int, test: int, fashion_root=None):
    """(train, official test, pool, val and test indices): the garments the colour benchmarks draw,
    stratified and seeded, so the colour and shortcut benchmarks share them for a seed and sizes."""
    train, official_test = load_fashion_mnist(fashion_root or os.environ.get("CAMLOOP_FASHION_MNIST",
                                                                               FASHION_MNIST_ROOT))
    rng = np.random.default_rng([int(seed), 99])
    pool_i = _stratified(train.labels, pool, rng)
    rest = np.setdiff1d(np.arange(len(train)), pool_i)
    val_i = rest[_stratified(train.labels[rest], val, rng)]
    test_i = _stratified(official_test.labels, test, rng)
    return train, official_test, pool_i, val_i, test_i


def load_fashion_colour(seed: int = 0, *, side: int = DEFAULT_SIDE, pool: int = 10_000, val: int = 2_000,
                        test: int = 2_000, fashion_root=None, with_masks: bool = False):
    """(pool, val, test) of the colour benchmark; with `with_masks` also their object masks.

    Sizes default to a 10,000-image pool (the issue's measurement size), 2,000 for validation
    and test: 14,000 images at 96 px are 390 MB of uint8 and take ~20 s to make on one core.
    """
    train, official_test, pool_i, val_i, test_i = split_fashion(seed, pool, val, test, fashion_root)
    parts = [make_fashion_colour(train.subset(pool_i), seed, 0, side),
             make_fashion_colour(train.subset(val_i), seed, 1, side),
             make_fashion_colour(official_test.subset(test_i), seed, 2, side)]
    if with_masks:
        return tuple(parts)
    return tuple(d for d, _ in parts)


def export_folder(data: Dataset, root, *, quality: int = 92, limit_per_class: int | None = None) -> int:
    """Write `data` as `root/<class>/<class>-<index>.jpg` (labeled images only); returns the count.
    For trying camloop on a folder of colour photos without any photos at hand."""
    root = Path(root)
    written = 0
    for c, name in enumerate(data.class_names):
        idx = np.flatnonzero(data.labels == c)[:limit_per_class]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(data.images[i]).save(folder / f"{name}-{i:05d}.jpg", quality=quality)
            written += 1
    return written


def sample_photos(root, *, per_class: int = 40, seed: int = 0, side: int = 128, fashion_root=None) -> int:
    """`camloop sample-photos`: `per_class` colour photos of each garment class as JPEGs in
    `root/<class>/`, for trying camloop on colour photos without photos at hand (and for
    `camloop simulate --folder`). Garments from the Fashion-MNIST training set, composited as
    `load_fashion_colour`'s pool; the same files for the same arguments. Returns the count."""
    if not 1 <= per_class <= 6000:
        raise ValueError("per_class must be in [1, 6000] (Fashion-MNIST has 6,000 training images a class)")
    train, _ = load_fashion_mnist(fashion_root or os.environ.get("CAMLOOP_FASHION_MNIST", FASHION_MNIST_ROOT))
    idx = _stratified(train.labels, per_class * train.num_classes, np.random.default_rng([int(seed), 98]))
    photos, _ = make_fashion_colour(train.subset(idx), seed, 3, side)
    return export_folder(photos, root)

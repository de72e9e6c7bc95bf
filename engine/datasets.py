"""Loading data sets as ``Dataset`` (engine.dataset): scikit-learn's digits, image folders, the
splits, and every data set by name (``load_named``: fashion-mnist, digits, fashion-colour, and
any a benchmark registers).

Nothing here downloads: Fashion-MNIST comes from the Debian package's IDX files
(engine.fashion_mnist), digits from scikit-learn's bundled copy, user data from a folder on disk.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.colour_fashion import load_fashion_colour
from engine.shortcut_fashion import load_fashion_shortcut
# The type and Fashion-MNIST live in modules of their own (colour_fashion builds on them, and
# this module names colour_fashion's data set); importers of this module find them here too.
from engine.dataset import UNLABELED, Dataset, validate_class_names  # noqa: F401
from engine.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, load_fashion_mnist  # noqa: F401
from engine.imageio import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, BadImage, decode_image


# ---------------------------------------------------------------- scikit-learn digits

def load_digits(size: int = 28) -> Dataset:
    """sklearn's 1 797 8×8 digits, 0..16 scaled to 0..255 and upsampled to size×size.

    Upsampled so the same small CNN (built for 28×28) serves both data sets; bilinear so the
    strokes stay smooth rather than blocky.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    imgs = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()
    return Dataset(imgs, d.target.astype(np.int64), [str(i) for i in range(10)])


# ---------------------------------------------------------------- splits

def split_indices(n: int, ratios=(0.7, 0.2, 0.1), seed: int = 0, stratify=None):
    """Shuffle 0..n−1 into (pool, val, test) by ``ratios``; per class when ``stratify`` is given.

    Stratified so small classes appear in every part (the research's 7:2:1 split per class).
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or r.sum() <= 0:
        raise ValueError("ratios must be three non-negative numbers")
    r = r / r.sum()
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if stratify is None else [np.flatnonzero(np.asarray(stratify) == c) for c in np.unique(stratify)]
    parts: list[list[np.ndarray]] = [[], [], []]
    for g in groups:
        g = rng.permutation(g)
        n_val = int(round(len(g) * r[1]))
        n_test = int(round(len(g) * r[2]))
        n_pool = len(g) - n_val - n_test
        parts[0].append(g[:n_pool])
        parts[1].append(g[n_pool:n_pool + n_val])
        parts[2].append(g[n_pool + n_val:])
    return tuple(np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts)


def stratified_subset(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """About k positions with the same class shares as `labels`, sorted: a small CPU run keeps
    the data set's balance."""
    idx = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = int(round(k * members.size / labels.size))
        idx.append(rng.choice(members, size=min(take, members.size), replace=False))
    return np.sort(np.concatenate(idx))


# ---------------------------------------------------------------- image folders

def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def load_image_folder(root, size: int = 28, channels: int = 1, *, class_names=None,
                      unlabeled_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Load ``root/<class>/*.{png,jpg,...}`` into a Dataset, quarantining unreadable images.

    Returns (Dataset, quarantined) where quarantined is a list of (path, reason). A root that
    holds images directly (no class subfolders), or ``unlabeled_dir`` (a subfolder name), is
    read as unlabeled pool images (label −1); ``class_names`` then names the classes (and may
    also restrict/order the class folders). Folders whose name is not a valid class name are
    refused, not silently skipped, since a typo would otherwise drop a class.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != unlabeled_dir)
    if class_names is None:
        class_names = [p.name for p in subdirs]
    class_names = validate_class_names(class_names) if class_names else []
    index = {n: i for i, n in enumerate(class_names)}

    sources: list[tuple[Path, int]] = []
    for d in subdirs:
        if d.name not in index:
            raise ValueError(f"folder {d.name!r} is not one of the classes {class_names}")
        sources += [(p, index[d.name]) for p in _image_files(d)]
    flat = [root] + ([root / unlabeled_dir] if unlabeled_dir and (root / unlabeled_dir).is_dir() else [])
    for d in flat:
        sources += [(p, UNLABELED) for p in _image_files(d)]
    if not class_names:
        raise ValueError("no classes: give class_names for a flat unlabeled folder")

    images, labels, paths, quarantined = [], [], [], []
    for p, y in sources:
        try:
            images.append(decode_image(p, size, channels, max_pixels=max_pixels))
        except BadImage as e:
            quarantined.append((str(p), e.reason))
            continue
        labels.append(y)
        paths.append(str(p))
    arr = np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8)
    return Dataset(arr, np.asarray(labels, np.int64), class_names, paths), quarantined


# Folders `camloop demo` writes beside its images: a folder holding them is a demo's folder, not
# a labeled data set (its images are in images/<data set>).
CAMLOOP_FOLDERS = frozenset({"artifacts", "images", "logs", "report"})


def check_labeled_folder(root) -> None:
    """ValueError naming the right folder when `root` is no labeled data set: a camloop (demo)
    folder, whose class folders would be artifacts/, images/, logs/, report/; or one whose class
    folders hold under two images each. Cheap (file names only): before any image is decoded."""
    root = Path(root)
    base = root / "pool" if (root / "pool").is_dir() else root
    classes = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")] if base.is_dir() else []
    own = sorted(p.name for p in classes if p.name in CAMLOOP_FOLDERS)
    if base == root and len(own) >= 2:
        sets = sorted(p for p in (root / "images").iterdir() if p.is_dir()) if (root / "images").is_dir() else []
        where = (" or ".join(str(p) for p in sets[:3]) if sets else f"{root / 'images'}/<data set>")
        raise ValueError(f"{root} is a camloop folder (it holds {', '.join(own)}), not a labeled data set: give "
                         f"--folder {where} (<class>/ folders, or pool/ val/ test/ with <class>/ in each)")
    counts = {p.name: len(_image_files(p)) for p in classes}
    if counts and all(n < 2 for n in counts.values()):
        raise ValueError(f"the class folders of {base} hold under two images each ({counts}): not a labeled data "
                         "set; give the folder whose sub-folders are the classes, each with its images")


def load_folder_splits(root, size: int = 28, channels: int = 1, *, seed: int = 0):
    """(pool, val, test, pool uris) from a labeled folder, for `camloop simulate --folder`.

    Either ``root/{pool,val,test}/<class>/*`` (the demo's export; the class order from
    ``root/classes.txt`` when present, else sorted folder names) or ``root/<class>/*`` (your own
    labeled photos), split 7:2:1 per class with ``seed``. Pool uris are paths relative to
    ``root`` in the order the service would register them (sorted), so a simulation's picks and
    the service's can be compared line by line. Unreadable images are left out (logged by
    load_image_folder's caller as quarantined)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    check_labeled_folder(root)
    regions = folder_regions(root)  # before decoding: a wrong regions.json is said at once
    order = root / "classes.txt"
    names = [ln.strip() for ln in order.read_text().splitlines() if ln.strip()] if order.is_file() else None
    if (root / "pool").is_dir():
        parts = {}
        for split in ("pool", "val", "test"):
            folder = root / split
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is missing: a folder with pool/ needs val/ and test/ beside it")
            names = names or sorted(p.name for p in (root / "pool").iterdir() if p.is_dir() and not p.name.startswith("."))
            parts[split], _ = load_image_folder(folder, size, channels, class_names=names)
        for d in parts.values():
            _attach_regions(d, root, regions, size)
        pool = parts["pool"]
        uris = [Path(p).relative_to(root).as_posix() for p in pool.paths]
        return pool, parts["val"], parts["test"], uris
    data, _ = load_image_folder(root, size, channels, class_names=names)
    if len(data) == 0:
        raise ValueError(f"no readable images in the class folders of {root}")
    _attach_regions(data, root, regions, size)
    pool_i, val_i, test_i = split_indices(len(data), (0.7, 0.2, 0.1), seed, stratify=data.labels)
    uris = [Path(data.paths[i]).relative_to(root).as_posix() for i in pool_i]
    return data.subset(pool_i), data.subset(val_i), data.subset(test_i), uris


def folder_regions(root) -> dict:
    """The folder's regions.json checked against its image files (engine.regions): {} without one."""
    from engine.regions import read_regions

    root = Path(root)
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*")
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}
    return read_regions(root, files)


def _attach_regions(data: Dataset, root: Path, regions: dict, size: int) -> None:
    """data.regions from regions.json's boxes, mapped to the decoded (letterboxed) pixels; −1 rows
    for images without an entry. Nothing when the folder has no regions.json."""
    if not regions:
        return
    from engine.regions import NO_REGION, _image_size, to_decoded

    out = []
    for p in data.paths:
        box = regions.get(Path(p).relative_to(root).as_posix())
        out.append(NO_REGION if box is None else to_decoded(box, *_image_size(Path(p)), size))
    data.regions = np.asarray(out, np.int64).reshape(-1, 4)


# ---------------------------------------------------------------- named data sets

Loader = Callable[[int], tuple[Dataset, Dataset, Dataset]]
# Named data sets beyond the two built in below (fashion-mnist, digits): name -> loader(seed)
# -> (pool, val, test). A benchmark adds its own with register_dataset.
NAMED: dict[str, Loader] = {"fashion-colour": lambda seed: load_fashion_colour(seed),
                            "fashion-shortcut": lambda seed: load_fashion_shortcut(seed)}
# The model a named colour data set is simulated with when a run sets no model keys: the colour
# benchmark's (docs/benchmarks.md: pretrained Lite0 at 96 px, 7 blocks frozen, the trunk cache).
COLOUR_MODEL = {"model": "efficientnet-lite0", "image_size": 96, "channels": 3, "pretrained": True,
                "frozen_blocks": 7}
NAMED_MODEL_DEFAULTS: dict[str, dict] = {"fashion-shortcut": COLOUR_MODEL}


def register_dataset(name: str, loader: Loader) -> None:
    """Make `load_named(name, seed)` return loader(seed)."""
    NAMED[name] = loader


def dataset_names() -> list[str]:
    return ["fashion-mnist", "digits", *NAMED]


def load_named(name: str, seed: int = 0, *, val_fraction: float = 1 / 6,
               fashion_root=None) -> tuple[Dataset, Dataset, Dataset]:
    """(pool, val, test) for ``fashion-mnist``, ``digits`` or a name in ``NAMED`` (``fashion-colour``).

    fashion-mnist keeps the official 10k test set and splits the 60k train set into pool and a
    stratified validation part (10k by default); digits is split 7:2:1 stratified.
    """
    if name == "fashion-mnist":
        train, test = load_fashion_mnist(fashion_root or os.environ.get("CAMLOOP_FASHION_MNIST", FASHION_MNIST_ROOT))
        pool_i, val_i, _ = split_indices(len(train), (1 - val_fraction, val_fraction, 0.0), seed, stratify=train.labels)
        return train.subset(pool_i), train.subset(val_i), test
    if name == "digits":
        d = load_digits()
        pool_i, val_i, test_i = split_indices(len(d), (0.7, 0.2, 0.1), seed, stratify=d.labels)
        return d.subset(pool_i), d.subset(val_i), d.subset(test_i)
    if name in NAMED:
        return NAMED[name](seed)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(dataset_names())}")

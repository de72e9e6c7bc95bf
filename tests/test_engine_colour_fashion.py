"""engine.colour_fashion: the offline colour benchmark is seeded, sized, coloured, and exports
as a folder that the folder loader reads back."""
from __future__ import annotations

import numpy as np
import pytest

from engine.colour_fashion import export_folder, load_fashion_colour, make_fashion_colour
from engine.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, load_image_folder, load_named


@pytest.fixture(scope="module")
def small():
    return load_fashion_colour(3, pool=200, val=50, test=50, with_masks=True)


def test_seeded_and_split_apart(small):
    again = load_fashion_colour(3, pool=200, val=50, test=50, with_masks=True)
    for (a, ma), (b, mb) in zip(small, again):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(ma, mb)
    other = load_fashion_colour(4, pool=200, val=50, test=50)
    assert not np.array_equal(other[0].images, small[0][0].images)
    # The splits use different garments and random streams: no image shared.
    pool, val = small[0][0], small[1][0]
    flat = {im.tobytes() for im in pool.images}
    assert not any(im.tobytes() in flat for im in val.images)


def test_sizes_classes_and_balance(small):
    (pool, pm), (val, _), (test, _) = small
    assert pool.images.shape == (200, 96, 96, 3) and len(val) == 50 and len(test) == 50
    assert pool.class_names == FASHION_MNIST_CLASSES
    assert np.bincount(pool.labels, minlength=10).tolist() == [20] * 10  # stratified
    big, _ = make_fashion_colour(load_fashion_mnist()[1].subset(np.arange(4)), seed=0, side=128)
    assert big.images.shape == (4, 128, 128, 3)


def test_colour_textured_backgrounds_and_visible_objects(small):
    (pool, masks), _, _ = small
    x = pool.images.astype(np.float64)
    # Colour: channels differ (a grey image has R = G = B).
    assert np.abs(x[..., 0] - x[..., 1]).mean() > 20
    # Textured: the background varies within an image, not a flat fill.
    bg_std = np.array([x[i][~masks[i]].std(axis=0).mean() for i in range(len(x))])
    assert np.median(bg_std) > 10
    # The object covers 5–60 % of the image and differs from the background around it.
    area = masks.reshape(len(masks), -1).mean(1)
    assert 0.05 < np.median(area) < 0.6 and area.min() > 0
    contrast = np.array([abs(x[i][masks[i]].mean() - x[i][~masks[i]].mean()) for i in range(len(x))])
    assert np.median(contrast) > 15
    # Positions vary: the objects' centres spread over the image.
    cy = np.array([np.argwhere(m)[:, 0].mean() for m in masks])
    assert cy.std() > 5


def test_export_folder_reads_back_as_class_folders(small, tmp_path):
    (pool, _), _, _ = small
    n = export_folder(pool, tmp_path, limit_per_class=3)
    assert n == 30
    data, bad = load_image_folder(tmp_path, size=96, channels=3)
    assert not bad and len(data) == 30 and data.class_names == sorted(FASHION_MNIST_CLASSES)
    assert (np.bincount(data.labels) == 3).all()
    # JPEG at quality 92: close to the arrays it came from.
    first = pool.images[np.flatnonzero(pool.labels == FASHION_MNIST_CLASSES.index(data.class_names[0]))[0]]
    assert np.abs(data.images[0].astype(int) - first.astype(int)).mean() < 8


def test_registered_as_a_named_data_set():
    pool, val, test = load_named("fashion-colour", seed=0)
    assert (len(pool), len(val), len(test)) == (10_000, 2_000, 2_000)
    assert pool.images.shape[1:] == (96, 96, 3)

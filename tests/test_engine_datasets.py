"""engine.datasets: the real Fashion-MNIST files, sklearn digits, folders with bad files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.datasets import (
    FASHION_MNIST_CLASSES, Dataset, load_digits, load_fashion_mnist, load_image_folder,
    load_named, split_indices, validate_class_names,
)


def test_fashion_mnist_official_split():
    train, test = load_fashion_mnist()
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8
    assert train.class_names == FASHION_MNIST_CLASSES
    # Official Fashion-MNIST is balanced: 6000 train / 1000 test per class.
    assert (np.bincount(train.labels) == 6000).all() and (np.bincount(test.labels) == 1000).all()


def test_fashion_mnist_named_pool_val_test_disjoint():
    pool, val, test = load_named("fashion-mnist", seed=0)
    assert len(pool) == 50000 and len(val) == 10000 and len(test) == 10000
    assert (np.bincount(val.labels) == 1000).all()  # stratified


def test_digits_scaled_and_upsampled():
    d = load_digits()
    assert d.images.shape == (1797, 28, 28, 1) and d.images.dtype == np.uint8
    assert d.images.max() == 255 and d.images.min() == 0
    assert d.class_names == [str(i) for i in range(10)]


def test_digits_named_split_7_2_1_stratified():
    pool, val, test = load_named("digits", seed=3)
    n = len(pool) + len(val) + len(test)
    assert n == 1797
    assert abs(len(pool) / n - 0.7) < 0.01 and abs(len(val) / n - 0.2) < 0.01
    for part in (pool, val, test):
        assert len(np.unique(part.labels)) == 10


def test_split_indices_partition_and_seed():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    a = split_indices(100, seed=1, stratify=labels)
    b = split_indices(100, seed=1, stratify=labels)
    assert all((x == y).all() for x, y in zip(a, b))
    allidx = np.concatenate(a)
    assert sorted(allidx.tolist()) == list(range(100))
    assert [len(p) for p in a] == [70, 20, 10]


def test_unknown_named_dataset():
    with pytest.raises(ValueError, match="unknown"):
        load_named("imagenet")


def _write_png(path, value, mode="L", size=(10, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_image_folder_with_quarantine(tmp_path):
    _write_png(tmp_path / "cat" / "a.png", 10)
    _write_png(tmp_path / "cat" / "b.jpg", 20)
    _write_png(tmp_path / "dog" / "c.png", (1, 2, 3), "RGB")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnonsense")
    (tmp_path / "dog" / "empty.jpg").write_bytes(b"")
    (tmp_path / "dog" / "notes.txt").write_text("ignored: not an image extension")
    ds, quarantined = load_image_folder(tmp_path, 16, 3)
    assert ds.class_names == ["cat", "dog"]
    assert ds.images.shape == (3, 16, 16, 3)
    assert sorted(ds.labels.tolist()) == [0, 0, 1]
    reasons = {p.split("/")[-1]: r for p, r in quarantined}
    assert set(reasons) == {"broken.png", "empty.jpg"}
    assert "zero-byte" in reasons["empty.jpg"]


def test_flat_unlabeled_folder(tmp_path):
    _write_png(tmp_path / "x.png", 5)
    _write_png(tmp_path / "y.png", 6)
    ds, q = load_image_folder(tmp_path, 8, 1, class_names=["ok", "defect"])
    assert len(ds) == 2 and (ds.labels == -1).all() and q == []
    with pytest.raises(ValueError, match="no classes"):
        load_image_folder(tmp_path, 8, 1)


def test_labeled_plus_unlabeled_subfolder(tmp_path):
    _write_png(tmp_path / "a" / "1.png", 1)
    _write_png(tmp_path / "pool" / "2.png", 2)
    ds, _ = load_image_folder(tmp_path, 8, 1, unlabeled_dir="pool")
    assert ds.class_names == ["a"] and sorted(ds.labels.tolist()) == [-1, 0]


def test_folder_not_a_declared_class_is_refused(tmp_path):
    _write_png(tmp_path / "cat" / "a.png", 1)
    _write_png(tmp_path / "dgo" / "a.png", 1)
    with pytest.raises(ValueError, match="dgo"):
        load_image_folder(tmp_path, 8, 1, class_names=["cat", "dog"])


@pytest.mark.parametrize("bad", [[], ["a", "a"], ["a/b"], [""], [" a"], [".."], ["x\n"], [3]])
def test_class_names_validated(bad):
    with pytest.raises(ValueError):
        validate_class_names(bad)


def test_dataset_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        Dataset(np.zeros((2, 4, 4), np.uint8), np.zeros(2), ["a"])
    with pytest.raises(ValueError):
        Dataset(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2), ["a"])
    with pytest.raises(ValueError, match="outside"):
        Dataset(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 2]), ["a", "b"])

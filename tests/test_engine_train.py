"""workers.train on tiny synthetic images (12×12, a few dozen) so each test runs in seconds on 2 cores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.datasets import Dataset
from workers.models import build_model
from workers.train import TrainConfig, augment_batch, build_training_indices, repeat_flags, train_model

S = 12


def _squares(n_per_class=(12, 12, 12), seed=0) -> Dataset:
    """Class c = a bright 4×4 square in quadrant c (plus noise): separable within a few epochs."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c, n in enumerate(n_per_class):
        for _ in range(n):
            im = rng.integers(0, 40, (S, S, 1)).astype(np.uint8)
            r, q = divmod(c, 2)
            im[1 + r * 6: 5 + r * 6, 1 + q * 6: 5 + q * 6] = 220
            imgs.append(im)
            labels.append(c)
    return Dataset(np.stack(imgs), np.array(labels), [f"c{i}" for i in range(len(n_per_class))])


def _model(num_classes=3, seed=0):
    torch.manual_seed(seed)
    return build_model("small-cnn", num_classes, input_size=S, dropout=0.1)


def _cfg(**kw):
    base = dict(epochs=3, batch_size=16, lr=3e-3, patience=10, seed=0, device="cpu", hflip=False)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------ training-set construction

def test_new_images_enter_k_times_old_once():
    labels = np.array([0, 0, 1, 1])
    is_new = np.array([False, True, False, True])
    idx = build_training_indices(labels, is_new, np.ones(2, bool), duplicate_new=2, balance=False)
    assert sorted(idx.tolist()) == [0, 1, 1, 2, 3, 3]
    idx3 = build_training_indices(labels, is_new, np.ones(2, bool), duplicate_new=3, balance=False)
    assert np.bincount(idx3).tolist() == [1, 3, 1, 3]


def test_balancing_duplicates_toward_largest_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 4)
    idx = build_training_indices(labels, np.zeros(17, bool), np.ones(3, bool), duplicate_new=2, balance=True,
                                 balance_to="max", balance_max_repeats=None)
    assert np.bincount(labels[idx]).tolist() == [10, 10, 10]
    # Every member of a small class appears ⌊10/3⌋ or ⌈10/3⌉ times: whole copies first.
    counts = np.bincount(idx, minlength=17)[10:13]
    assert set(counts.tolist()) <= {3, 4}


def test_balancing_cap():
    labels = np.array([0] * 10 + [1] * 2)
    idx = build_training_indices(labels, np.zeros(12, bool), np.ones(2, bool), balance=True, balance_max_factor=2.0,
                                 balance_to="max", balance_max_repeats=None)
    assert np.bincount(labels[idx]).tolist() == [10, 4]


def test_repeat_flags_mark_every_occurrence_after_the_first():
    idx = np.array([3, 1, 3, 2, 1, 3])
    assert repeat_flags(idx).tolist() == [False, False, True, False, True, True]
    assert repeat_flags(np.array([], dtype=np.int64)).shape == (0,)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_augment_scope_copies_leaves_originals_clean():
    # Balanced classes, nothing new: no image repeats within an epoch, so "copies" augments
    # nothing and trains exactly as augment=False; "all" augments every draw and differs.
    d = _squares()
    runs = {}
    for name, kw in {"copies": dict(augment_scope="copies"), "off": dict(augment=False),
                     "all": dict(augment_scope="all")}.items():
        m = _model()
        train_model(m, d, np.zeros(len(d), bool), None, np.ones(3, bool), _cfg(epochs=2, **kw))
        runs[name] = _state(m)
    assert all(torch.equal(runs["copies"][k], runs["off"][k]) for k in runs["off"])
    assert not all(torch.equal(runs["all"][k], runs["off"][k]) for k in runs["off"])
    # With new labels duplicated, "copies" augments their second entries: it differs from off.
    m = _model()
    train_model(m, d, np.arange(len(d)) % 3 == 0, None, np.ones(3, bool), _cfg(epochs=2, augment_scope="copies"))
    assert not all(torch.equal(m.state_dict()[k], runs["off"][k]) for k in runs["off"])
    with pytest.raises(ValueError, match="augment_scope"):
        train_model(_model(), d, None, None, None, _cfg(epochs=1, augment_scope="some"))


def test_pseudo_rows_enter_augmented_only_with_pseudo_augment():
    # A pseudo-labeled image enters an epoch once: not a copy, so "copies" leaves it clean —
    # unless pseudo_augment asks for a perturbed view of it (bench/semi_screen.py measures both).
    d = _squares()
    pseudo = np.arange(len(d)) % 2 == 0
    runs = {}
    for name, kw in {"plain": {}, "aug": dict(pseudo_augment=True)}.items():
        m = _model()
        train_model(m, d, np.zeros(len(d), bool), None, np.ones(3, bool), _cfg(epochs=2, **kw), pseudo=pseudo,
                    pseudo_weight=0.5)
        runs[name] = _state(m)
    off = _model()
    train_model(off, d, np.zeros(len(d), bool), None, np.ones(3, bool), _cfg(epochs=2, augment=False), pseudo=pseudo,
                pseudo_weight=0.5)
    assert all(torch.equal(runs["plain"][k], off.state_dict()[k]) for k in runs["plain"])
    assert not all(torch.equal(runs["aug"][k], runs["plain"][k]) for k in runs["plain"])


def test_excluded_classes_and_unlabeled_dropped():
    labels = np.array([0, 1, 2, -1, 2])
    idx = build_training_indices(labels, np.ones(5, bool), np.array([True, True, False]), duplicate_new=2)
    assert sorted(idx.tolist()) == [0, 0, 1, 1]


# ------------------------------------------------------------------ augmentation

def test_augment_identity_when_ranges_are_zero():
    x = torch.randn(4, 1, S, S)
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, g, hflip=False, max_rotate=0, max_translate=0, scale_range=(1, 1))
    assert torch.allclose(x, y, atol=1e-5)


def test_augment_flip_only_gives_mirror_or_original():
    x = torch.randn(16, 1, S, S)
    y = augment_batch(x, torch.Generator().manual_seed(1), hflip=True, max_rotate=0, max_translate=0, scale_range=(1, 1))
    same = [(torch.allclose(a, b, atol=1e-5), torch.allclose(a.flip(-1), b, atol=1e-5)) for a, b in zip(x, y)]
    assert all(s or f for s, f in same)
    assert any(f and not s for s, f in same) and any(s and not f for s, f in same)


def test_augment_random_but_seeded():
    x = torch.randn(4, 3, S, S)
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, c)


# ------------------------------------------------------------------ training

def test_learns_a_separable_task_and_restores_best_epoch():
    train, val = _squares((12, 12, 12), seed=0), _squares((6, 6, 6), seed=1)
    model = _model()
    seen = []
    res = train_model(model, train, np.zeros(len(train), bool), val, np.ones(3, bool), _cfg(epochs=6), progress=seen.append)
    assert [r["epoch"] for r in seen] == list(range(1, 7)) and res.epochs_run == 6
    assert res.val_accuracy >= 0.9
    assert res.val_accuracy == max(r["val_accuracy"] for r in res.history)
    assert res.history[res.best_epoch - 1]["val_accuracy"] == res.val_accuracy


def test_duplication_and_balance_reach_the_epoch_size():
    train, val = _squares((8, 4, 2)), _squares((2, 2, 2), seed=1)
    is_new = np.zeros(len(train), bool)
    is_new[-2:] = True  # both class-2 images are new → 4 copies, then balanced up to 8
    seen = []
    train_model(_model(), train, is_new, val, np.ones(3, bool),
                _cfg(epochs=1, balance_to="max", balance_max_repeats=None), progress=seen.append)
    assert seen[0]["train_images"] == 24
    # Up to the median class (4 entries: class 1, and class 2's two new images ×2).
    seen = []
    train_model(_model(), train, is_new, val, np.ones(3, bool), _cfg(epochs=1, balance_to="median"),
                progress=seen.append)
    assert seen[0]["train_images"] == 16


def test_excluded_class_not_trained_and_never_predicted():
    train, val = _squares((8, 8, 8)), _squares((4, 4, 4), seed=1)
    active = np.array([True, False, True])
    seen = []
    model = _model()
    train_model(model, train, np.zeros(len(train), bool), val, active, _cfg(epochs=2), progress=seen.append)
    assert seen[0]["train_images"] == 16  # class 1's 8 images dropped
    from workers.evaluate import predict_probs
    probs = predict_probs(model, val.images, active=active, device="cpu")
    assert (probs[:, 1] == 0).all() and (probs.argmax(1) != 1).all()


def test_early_stopping_on_validation_accuracy():
    train, val = _squares((4, 4, 4)), _squares((2, 2, 2), seed=1)
    # lr = 0: the weights never change, so validation accuracy cannot improve after epoch 1.
    res = train_model(_model(), train, np.zeros(12, bool), val, np.ones(3, bool), _cfg(epochs=10, lr=0.0, patience=2))
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1


def test_same_seed_same_weights():
    train, val = _squares((6, 6, 6)), _squares((2, 2, 2), seed=1)
    a, b = _model(seed=3), _model(seed=3)
    train_model(a, train, np.zeros(18, bool), val, np.ones(3, bool), _cfg(epochs=2, seed=7))
    train_model(b, train, np.zeros(18, bool), val, np.ones(3, bool), _cfg(epochs=2, seed=7))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


class _Interrupt(Exception):
    pass


def test_interrupt_after_epoch_k_then_resume_finishes_same_total_epochs(tmp_path):
    train, val = _squares((6, 6, 6)), _squares((2, 2, 2), seed=1)
    is_new = np.zeros(18, bool)
    is_new[::3] = True
    active = np.ones(3, bool)
    cfg = _cfg(epochs=4, patience=100)

    ref = _model(seed=11)
    ref_res = train_model(ref, train, is_new, val, active, cfg, checkpoint_dir=tmp_path / "ref")

    def stop_after_2(rec):
        if rec["epoch"] == 2:
            raise _Interrupt  # the worker dies right after epoch 2's checkpoint

    ck = tmp_path / "ck"
    with pytest.raises(_Interrupt):
        train_model(_model(seed=11), train, is_new, val, active, cfg, checkpoint_dir=ck, progress=stop_after_2)
    assert torch.load(ck / "last.pt", weights_only=False)["epoch"] == 2
    assert not list(ck.glob("*.tmp*"))  # atomic writes leave no temporaries

    # A retry builds a fresh model (different init on purpose): the checkpoint's weights win.
    epochs_seen = []
    resumed = _model(seed=99)
    res = train_model(resumed, train, is_new, val, active, cfg, checkpoint_dir=ck, progress=lambda r: epochs_seen.append(r["epoch"]))
    assert epochs_seen == [3, 4] and res.resumed_from == 2
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4] and res.epochs_run == 4
    # Epoch seeds depend only on (seed, epoch): the resumed run equals the uninterrupted one.
    assert res.best_epoch == ref_res.best_epoch
    for (k, va), vb in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k

    # A third call (an RQ retry after success) trains nothing and returns the same result.
    again = _model(seed=5)
    res3 = train_model(again, train, is_new, val, active, cfg, checkpoint_dir=ck, progress=lambda r: pytest.fail("trained again"))
    assert res3.epochs_run == 4 and res3.best_epoch == res.best_epoch
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), resumed.state_dict().values()))


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    train, val = _squares((4, 4, 4)), _squares((2, 2, 2), seed=1)
    train_model(_model(), train, np.zeros(12, bool), val, np.ones(3, bool), _cfg(epochs=2), checkpoint_dir=tmp_path)
    seen = []
    res = train_model(_model(), train, np.zeros(12, bool), val, np.ones(3, bool), _cfg(epochs=2, lr=1e-3),
                      checkpoint_dir=tmp_path, progress=lambda r: seen.append(r["epoch"]))
    assert seen == [1, 2] and res.resumed_from == 0


def test_frozen_blocks_do_not_change():
    train, val = _squares((4, 4, 4)), _squares((2, 2, 2), seed=1)
    torch.manual_seed(0)
    model = build_model("small-cnn", 3, input_size=S, frozen_blocks=2)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("features.0", "features.1"))}
    train_model(model, train, np.zeros(12, bool), val, np.ones(3, bool), _cfg(epochs=2))
    after = model.state_dict()
    # Weights and BatchNorm running statistics of the frozen blocks are untouched.
    assert all(torch.equal(v, after[k]) for k, v in before.items())

"""The train job's side of a semi-supervised round (engine.semi): pseudo-labels, then one
training set of labels and pseudo-labels.

`TrainManifest.semi` lists the unlabeled pool images (labels blanked). The job guesses their
classes — by label spreading over the cached trunk's pooled embeddings, or by the round's
model trained on the labels first — keeps the confident guesses (engine.semi.pick) and trains
on the labels plus those, the pseudo rows flagged (workers.train: entered once an epoch,
loss-weighted). What it reports (metrics["semi"]) is counts and the pseudo-labeled item ids,
never a label: the service stores nothing of it beside the metrics.
"""
from __future__ import annotations

import numpy as np

from engine import semi as rule


def pooled_embeddings(cache, images: np.ndarray, digests: list[str]) -> np.ndarray:
    """The frozen trunk's output of each image (computed where missing), averaged over space:
    the pretrained embedding propagation builds its graph on."""
    if not len(digests):
        return np.zeros((0, 0), np.float32)
    cache.ensure(images, digests)
    a = cache.load(digests).float()
    return a.mean(dim=tuple(range(2, a.dim()))).numpy()


def guess_pool(spec, train, train_digests, active, n_classes: int, *, cache=None, pool_images=None,
               pool_digests=None, pool_probs: np.ndarray | None = None):
    """The kept pseudo-labels: (rows into spec.pool, classes, confidences). Propagation reads
    the embeddings from `cache`; self-training takes the first model's `pool_probs`."""
    labels = np.asarray(train.labels, np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=n_classes)
    if spec.method == "propagation":
        dist = rule.propagate(pooled_embeddings(cache, train.images, list(train_digests)), labels,
                              pooled_embeddings(cache, pool_images, list(pool_digests)), n_classes,
                              neighbours=spec.neighbours, alpha=spec.alpha, active=active)
    else:
        dist = np.asarray(pool_probs, np.float64)
    return rule.pick(dist, counts, spec.threshold, spec.max_ratio, active)


def with_pseudo(train, train_digests, is_new, pool_images, pool_digests, rows, classes):
    """The training set of labels then pseudo-labels: (dataset, digests or None, is_new, pseudo mask)."""
    from engine.datasets import Dataset

    rows = np.asarray(rows, np.int64)
    data = Dataset(np.concatenate([train.images, pool_images[rows]]),
                   np.concatenate([np.asarray(train.labels, np.int64), np.asarray(classes, np.int64)]),
                   list(train.class_names))
    digests = None if train_digests is None else list(train_digests) + [pool_digests[i] for i in rows]
    new = np.concatenate([np.asarray(is_new, bool), np.zeros(rows.size, bool)])
    pseudo = np.concatenate([np.zeros(len(train), bool), np.ones(rows.size, bool)])
    return data, digests, new, pseudo


def report(spec, names, rows, classes, conf, seconds: float) -> dict:
    """metrics["semi"]: how many pseudo-labels, per class; the item ids they were given to (for a
    simulation to measure their precision). Counts of guesses, not labels."""
    ids = np.asarray(spec.pool.item_ids, np.int64)[np.asarray(rows, np.int64)]
    per = np.bincount(np.asarray(classes, np.int64), minlength=len(names))
    return {"method": spec.method, "pool": len(spec.pool), "pseudo": int(len(rows)),
            "per_class": {n: int(per[i]) for i, n in enumerate(names)},
            "threshold": spec.threshold, "weight": spec.weight, "max_ratio": spec.max_ratio,
            "mean_confidence": float(np.mean(conf)) if len(conf) else None,
            "item_ids": ids.tolist(), "classes": np.asarray(classes, np.int64).tolist(),
            "seconds": round(seconds, 3)}


def precision(semi_metrics: dict | None, truth: np.ndarray) -> float | None:
    """The share of pseudo-labels that are right (only a simulation, which knows the truth)."""
    if not semi_metrics or not semi_metrics.get("item_ids"):
        return None
    ids = np.asarray(semi_metrics["item_ids"], np.int64)
    return round(float(np.mean(np.asarray(truth)[ids] == np.asarray(semi_metrics["classes"], np.int64))), 4)

"""Class budget: which classes need labels most, and how a round's budget is shared between them.

need_c = cam_weight * rank-free cam score in [0,1] + (1 - cam_weight) * (1 - val_accuracy_c), plus a
small floor so every active class keeps getting a few labels (a class at 100 % still drifts).
"""
from __future__ import annotations

import numpy as np

from strategies._checks import finite_array

NEED_FLOOR = 0.05


def per_class_mean(pred, values, n_classes: int) -> np.ndarray:
    """Mean of `values` over the items predicted as each class (C,): the `per_class_cam_score` of
    class_need. A class nobody is predicted as has no cam evidence: 0, its accuracy term still
    counts."""
    counts = np.bincount(pred, minlength=n_classes)
    sums = np.bincount(pred, weights=values, minlength=n_classes)
    return np.divide(sums, counts, out=np.zeros(n_classes), where=counts > 0)


def class_need(per_class_cam_score, val_accuracy, active, cam_weight: float = 0.5) -> np.ndarray:
    """Need per class (C,), 0 for inactive classes.

    per_class_cam_score: mean `cam_score` of the pool items predicted as each class (None = no cam
    term, need from accuracy alone); scaled by its max so it is on the accuracy's [0, 1] scale.
    """
    acc = finite_array(val_accuracy, "val_accuracy", ndim=1)
    act = np.asarray(active, dtype=bool)
    if act.shape != acc.shape:
        raise ValueError(f"active {act.shape} and val_accuracy {acc.shape} differ in shape")
    miss = 1.0 - np.clip(acc, 0.0, 1.0)
    if per_class_cam_score is None:
        need = miss
    else:
        cam = finite_array(per_class_cam_score, "per_class_cam_score", ndim=1)
        if cam.shape != acc.shape:
            raise ValueError(f"per_class_cam_score {cam.shape} and val_accuracy {acc.shape} differ in shape")
        top = cam[act].max() if act.any() else 0.0
        cam01 = cam / top if top > 0 else np.zeros_like(cam)
        need = cam_weight * cam01 + (1.0 - cam_weight) * miss
    return np.where(act, need + NEED_FLOOR, 0.0)


def allocate_budget(budget: int, need, active, min_per_class: int = 0, available=None) -> np.ndarray:
    """Integer labels per class (C,), proportional to need over active classes.

    Sums to `budget`, or to the total available over active classes when that is smaller; no class
    gets more than `available[c]` (the pool items that can be queued for it). Largest-remainder
    rounding; capped classes hand their excess to the others, repeated until nothing moves.
    """
    if budget < 0 or int(budget) != budget:
        raise ValueError(f"budget must be a non-negative integer, got {budget}")
    w = finite_array(need, "need", ndim=1)
    if (w < 0).any():
        raise ValueError("need must be >= 0")
    act = np.asarray(active, dtype=bool)
    c = w.shape[0]
    cap = np.full(c, np.iinfo(np.int64).max // 4, dtype=np.int64) if available is None else np.asarray(available, dtype=np.int64)
    if act.shape != (c,) or cap.shape != (c,):
        raise ValueError("need, active and available must all have one entry per class")
    cap = np.where(act, np.maximum(cap, 0), 0)
    total = int(min(budget, cap.sum()))
    if total == 0:
        return np.zeros(c, dtype=np.int64)
    out = np.minimum(np.full(c, min_per_class, dtype=np.int64), cap)
    if out.sum() > total:  # the floor alone overshoots: share the total evenly instead
        out = _largest_remainder(total, np.where(cap > 0, 1.0, 0.0), cap)
        return out
    remaining = total - int(out.sum())
    while remaining > 0:
        room = cap - out
        open_ = room > 0
        weights = np.where(open_, w, 0.0)
        if weights.sum() <= 0:  # no need left among open classes: spread evenly
            weights = open_.astype(float)
        add = _largest_remainder(remaining, weights, room)
        out += add
        remaining = total - int(out.sum())
    return out


def _largest_remainder(total: int, weights: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Hamilton apportionment of `total` by `weights`, each share clipped to `cap`."""
    shares = weights / weights.sum() * total
    base = np.minimum(np.floor(shares).astype(np.int64), cap)
    left = total - int(base.sum())
    frac = np.where(base < cap, shares - np.floor(shares), -1.0)
    for i in np.argsort(-frac, kind="stable"):
        if left <= 0:
            break
        if base[i] < cap[i] and weights[i] > 0:
            base[i] += 1
            left -= 1
    return base

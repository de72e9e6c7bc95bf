"""Class budget: which classes need labels most, and how a round's budget is shared between them.

need_c = cam_weight * rank-free cam score in [0,1] + (1 - cam_weight) * (1 - val_accuracy_c), plus a
small floor so every active class keeps getting a few labels (a class at 100 % still drifts).

Experts' "the model looked at the wrong region" votes, when given, add
`region_weight * wrong_region_rate_c`: the share of the reviewed guesses of class c that an
expert flagged (smoothed by `wrong_region_rate`, so one vote of one is not a rate of 1). It is
direct evidence of what the cam term estimates — the model right or wrong for the wrong reason —
so it adds to the need rather than replacing a term; without votes the need is unchanged.
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


REGION_WEIGHT = 0.5
REGION_PRIOR = 2.0


def wrong_region_rate(flagged, reviewed, prior: float = REGION_PRIOR) -> np.ndarray:
    """Per guessed class (C,): flagged / (reviewed + prior). The prior counts `prior` unflagged
    reviews, so a class with 1 flag in 1 review gets 1/3, not 1, and a class nobody reviewed 0:
    a rate only moves the budget when enough experts saw the class's guesses."""
    f = finite_array(flagged, "flagged", ndim=1)
    r = finite_array(reviewed, "reviewed", ndim=1)
    if f.shape != r.shape:
        raise ValueError(f"flagged {f.shape} and reviewed {r.shape} differ in shape")
    if (f < 0).any() or (f > r).any():
        raise ValueError("need 0 <= flagged <= reviewed for every class")
    if prior < 0:
        raise ValueError("prior must be >= 0")
    return np.divide(f, r + prior, out=np.zeros_like(f), where=(r + prior) > 0)


def class_need(per_class_cam_score, val_accuracy, active, cam_weight: float = 0.5, wrong_region=None,
               region_weight: float = REGION_WEIGHT) -> np.ndarray:
    """Need per class (C,), 0 for inactive classes.

    per_class_cam_score: mean `cam_score` of the pool items predicted as each class (None = no cam
    term, need from accuracy alone); scaled by its max so it is on the accuracy's [0, 1] scale.
    wrong_region: (C,) in [0, 1], the experts' wrong-region rate per guessed class
    (`wrong_region_rate`); None = no votes, the need as without this term.
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
    if wrong_region is not None:
        wr = finite_array(wrong_region, "wrong_region", ndim=1)
        if wr.shape != acc.shape:
            raise ValueError(f"wrong_region {wr.shape} and val_accuracy {acc.shape} differ in shape")
        if (wr < 0).any() or (wr > 1).any():
            raise ValueError("wrong_region rates must lie in [0, 1]")
        if not np.isfinite(region_weight) or region_weight < 0:
            raise ValueError("region_weight must be a finite number >= 0")
        need = need + region_weight * wr
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

"""Normalised rank fusion: scores on different scales (nats, probabilities, map statistics) are
turned into ranks in [0, 1] and summed with weights, so no single column dominates by its units."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from strategies._checks import finite_array


def rank_normalise(x) -> np.ndarray:
    """Average rank of each value scaled to [0, 1] (lowest 0, highest 1); ties share their mean rank.

    One item gets 1.0 (it is the best of its pool). O(n log n): one argsort, the rest linear.
    """
    a = finite_array(x, "scores", ndim=1)
    n = a.size
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.ones(1)
    # Any sort will do (ties get their mean rank whatever their order); introsort is ~4x timsort here.
    order = np.argsort(a)
    s = a[order]
    differs = s[1:] != s[:-1]
    ranks = np.empty(n)
    if differs.all():  # no ties (the usual case for float scores): rank = position, no run bookkeeping
        ranks[order] = np.arange(n, dtype=np.float64)
        return ranks / (n - 1)
    # Tie groups in the sorted values: start index of each run of equal values.
    starts = np.flatnonzero(np.r_[True, differs])
    ends = np.r_[starts[1:], n]  # exclusive
    mean_rank = (starts + ends - 1) / 2.0  # 0-based average rank of each run
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks / (n - 1)


def fuse_ranks(columns: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """sum_k w_k * rank_normalise(columns[k]) / sum_k w_k over the keys with a non-zero weight.

    Weights must be >= 0: every column already follows "higher = more worth labeling".
    """
    used = {k: float(w) for k, w in weights.items() if w != 0}
    if not used:
        raise ValueError("fuse_ranks needs at least one non-zero weight")
    for k, w in used.items():
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"weight for {k!r} must be a finite number >= 0, got {w}")
        if k not in columns:
            raise ValueError(f"score column {k!r} is weighted but missing; have {sorted(columns)}")
    sizes = {k: np.asarray(columns[k]).shape for k in used}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"score columns differ in shape: {sizes}")
    total = sum(used.values())
    fused = None
    for k, w in used.items():
        r = rank_normalise(columns[k]) * (w / total)
        fused = r if fused is None else fused + r
    return fused

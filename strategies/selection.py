"""Selection: fused scores -> per-class quotas -> diversity -> the queue, in priority order."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from strategies.diversity import diverse_top, top_k
from strategies.fusion import fuse_ranks


def select(
    columns: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    pred,
    embeddings,
    budget: int,
    class_quota=None,
    excluded=None,
    rng: np.random.Generator | None = None,
    candidates_factor: int = 10,
    ineligible=None,
) -> np.ndarray:
    """Indices into the pool, most worth labeling first.

    columns/weights: score columns and their fusion weights; empty weights = random order (`rng`).
    pred (N,): predicted class per item; items predicted as an `excluded` class are left out.
    embeddings (N, D) or None: when given, each class's picks are spread by k-center greedy.
    class_quota (C,) or None: labels per class (from `budget.allocate_budget`); if quotas cannot be
    filled (too few items predicted as a class) the rest of the budget goes to the best remaining items.
    ineligible (N,) bool or None: items never picked whatever their class (a gatekeeper model
    recognised them as an excluded class; already chosen for another list).
    """
    pred = np.asarray(pred)
    n = pred.shape[0]
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if weights and any(w != 0 for w in weights.values()):
        fused = fuse_ranks(columns, weights)
    else:
        if rng is None:
            raise ValueError("random selection needs an rng")
        fused = rng.random(n)
    if fused.shape != (n,):
        raise ValueError(f"score columns have {fused.shape[0]} items, pred has {n}")
    eligible = np.ones(n, dtype=bool)
    if excluded is not None:
        ex = np.asarray(excluded, dtype=bool)
        if ex.any():
            eligible &= ~ex[pred] if n else eligible
    if ineligible is not None:
        off = np.asarray(ineligible, dtype=bool)
        if off.shape != (n,):
            raise ValueError(f"ineligible has shape {off.shape}, expected ({n},)")
        eligible &= ~off
    budget = int(min(budget, eligible.sum()))
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    emb = None if embeddings is None else np.asarray(embeddings)

    def pick(idx: np.ndarray, k: int) -> np.ndarray:
        if emb is None:
            return idx[top_k(fused[idx], k)]
        # Narrow to the candidates before touching embeddings: copying a whole class's rows
        # (100k x 64 on a 1M pool) would cost more than the k-center step itself.
        cand = idx[top_k(fused[idx], k * candidates_factor)]
        return cand[diverse_top(fused[cand], emb[cand], k, candidates_factor)]

    if class_quota is None:
        chosen = pick(np.flatnonzero(eligible), budget)
    else:
        chosen = fill_class_quotas(pred, class_quota, eligible, budget, pick)
    return chosen[np.argsort(-fused[chosen], kind="stable")]


def fill_class_quotas(pred: np.ndarray, class_quota, eligible: np.ndarray, budget: int,
                      pick: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Each class's quota picked among the eligible items predicted as that class
    (`pick(indices, k)`, indices in ascending order), at most `budget` in all; then what the
    quotas left unfilled picked from every eligible item left. In pick order.

    One way to fill a class budget for every selection rule (top-k with k-center here,
    DropQuery in strategies.dropquery): only `pick` differs."""
    quota = np.asarray(class_quota, dtype=np.int64)
    # One stable sort by class instead of a boolean mask per class: linear in N for any C.
    order = np.argsort(pred, kind="stable")
    bounds = np.searchsorted(pred[order], np.arange(quota.shape[0] + 1))
    parts = []
    for c, q in enumerate(quota):
        if q <= 0:
            continue
        idx = order[bounds[c]:bounds[c + 1]]
        idx = idx[eligible[idx]]
        parts.append(pick(idx, int(q)))
    chosen = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    chosen = chosen[:budget]
    short = budget - chosen.size
    if short > 0:
        rest = eligible.copy()
        rest[chosen] = False
        chosen = np.concatenate([chosen, pick(np.flatnonzero(rest), short)])
    return chosen

"""A representative first batch: TypiClust (Hacohen, Dekel & Weinshall, ICML 2022).

With no labels yet, uncertainty means nothing (the model is untrained) and a random batch
spends labels on outliers and on whatever dense region happens to be sampled twice. TypiClust,
for the low-budget regime: cluster the pool's (pretrained) embeddings into as many clusters as
labels (plus those already labeled), and from each of the largest clusters not yet covered take
its most *typical* point, typicality(x) = 1 / mean distance to its k nearest neighbours within
the cluster (the inverse kNN density, k = 20 as in the paper). Clusters smaller than
`min_cluster_size` (5 in the paper) are skipped: a handful of outliers is not a mode.

K-means here is k-means++ seeding plus Lloyd iterations in numpy (strategies/ stays numpy-only),
seeded by `rng`, on L2-normalised embeddings (the paper's self-supervised features are; ImageNet
GAP features differ mostly in norm by image contrast, which is not what makes images alike).
"""
from __future__ import annotations

import numpy as np

from strategies._checks import finite_array


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    # |x|² − 2x·c + |c|², clipped at 0 against rounding.
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans(x, k: int, rng: np.random.Generator, *, max_iter: int = 50, tol: float = 1e-6,
           n_init: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(assignments (N,), centres (k, D)): the lowest-inertia of `n_init` runs of k-means++
    seeding then Lloyd (until the assignment stops changing or the inertia improves by less than
    `tol` relatively). Several runs because one seeding can put two centres in one mode and
    none in a small one, which Lloyd never repairs. An emptied cluster is re-seeded at the point
    farthest from its centre."""
    x = finite_array(x, "embeddings", ndim=2)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    best = None
    for _ in range(max(1, n_init)):
        assign, centres, inertia = _lloyd(x, k, rng, max_iter, tol)
        if best is None or inertia < best[2]:
            best = (assign, centres, inertia)
    return best[0], best[1]


def _lloyd(x: np.ndarray, k: int, rng: np.random.Generator, max_iter: int, tol: float):
    n = x.shape[0]
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = _sq_dists(x, centres[:1])[:, 0]
    for j in range(1, k):
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres[j] = x[idx]
        d2 = np.minimum(d2, _sq_dists(x, centres[j:j + 1])[:, 0])
    assign, last = None, np.inf
    for _ in range(max_iter):
        d = _sq_dists(x, centres)
        new = d.argmin(1)
        inertia = d[np.arange(n), new].sum()
        if assign is not None and (np.array_equal(new, assign) or last - inertia <= tol * max(last, 1e-12)):
            assign = new
            break
        assign, last = new, inertia
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        for j in np.flatnonzero(counts == 0):
            far = int(d[np.arange(n), assign].argmax())
            sums[j], counts[j] = x[far], 1
            assign[far] = j
        centres = sums / counts[:, None]
    d = _sq_dists(x, centres)
    assign = d.argmin(1)
    return assign, centres, float(d[np.arange(n), assign].sum())


def typicality(x: np.ndarray, k_neighbors: int = 20) -> np.ndarray:
    """1 / mean Euclidean distance to the k nearest other points (k capped at n − 1); the
    points of a one-point set get typicality 0."""
    n = x.shape[0]
    k = min(k_neighbors, n - 1)
    if k < 1:
        return np.zeros(n)
    d = np.sqrt(_sq_dists(x, x))
    np.fill_diagonal(d, np.inf)
    knn = np.partition(d, k - 1, axis=1)[:, :k]
    return 1.0 / (knn.mean(1) + 1e-12)


def typical_first_batch(embeddings, budget: int, rng: np.random.Generator, *, labeled=None,
                        k_neighbors: int = 20, min_cluster_size: int = 5, normalise: bool = True,
                        max_iter: int = 50) -> np.ndarray:
    """`budget` pool indices by TypiClust: one typical point from each of the largest clusters
    not yet covered by `labeled` (indices already labeled, which also count toward the number
    of clusters). Returns indices in pick order (largest cluster first)."""
    e = finite_array(embeddings, "embeddings", ndim=2)
    n = e.shape[0]
    if budget < 0 or int(budget) != budget:
        raise ValueError(f"budget must be a non-negative integer, got {budget}")
    lab = np.unique(np.asarray([] if labeled is None else labeled, dtype=np.int64))
    if lab.size and (lab.min() < 0 or lab.max() >= n):
        raise ValueError("labeled indices must index the embeddings")
    budget = int(min(budget, n - lab.size))
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    if normalise:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    k = min(n, lab.size + budget)
    assign, _ = kmeans(e, k, rng, max_iter=max_iter)
    sizes = np.bincount(assign, minlength=k)
    covered = np.zeros(k, bool)
    covered[assign[lab]] = True
    taken = np.zeros(n, bool)
    taken[lab] = True
    picks: list[int] = []
    # Largest uncovered clusters first (ties by cluster id, stable); a cluster that has given a
    # point counts as covered, so a second pass over the clusters happens only when the small
    # ones are exhausted.
    while len(picks) < budget:
        open_ = np.flatnonzero(~covered & (sizes >= min_cluster_size))
        if open_.size == 0:
            open_ = np.flatnonzero(~covered)
        if open_.size == 0:  # every cluster covered: start another pass over all of them
            covered[:] = False
            open_ = np.arange(k)
        c = open_[np.argsort(-sizes[open_], kind="stable")[0]]
        members = np.flatnonzero(assign == c)
        covered[c] = True
        free = ~taken[members]
        if not free.any():
            sizes[c] = 0
            continue
        # Density over the whole cluster, the pick among its points not taken yet.
        t = np.where(free, typicality(e[members], k_neighbors), -np.inf)
        best = int(members[int(np.argmax(t))])
        picks.append(best)
        taken[best] = True
    return np.asarray(picks, dtype=np.int64)

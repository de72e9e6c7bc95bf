"""Diversity: k-center greedy (Sener & Savarese 2018) so a batch is not a pile of near-duplicates.

Run on a candidate set (the top `candidates_factor * k` by score), not the whole pool: the
greedy step is O(k * n * d), and the candidates are where the useful items are anyway.
"""
from __future__ import annotations

import numpy as np

from strategies._checks import finite_array


def k_center_greedy(embeddings, k: int, already_selected=None) -> np.ndarray:
    """Indices of k points, each the farthest (Euclidean) from the centers chosen so far.

    With no `already_selected` the first center is index 0 (callers put their best item first).
    Returns indices in pick order; never returns an index from `already_selected`.
    """
    e = finite_array(embeddings, "embeddings", ndim=2, dtype=np.float32)
    n = e.shape[0]
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    chosen_before = np.unique(np.asarray([] if already_selected is None else already_selected, dtype=np.int64))
    k = min(k, n - chosen_before.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    min_d = np.full(n, np.inf, dtype=np.float32)
    for c in chosen_before:
        min_d = np.minimum(min_d, _sq_dist(e, e[c]))
    picks = np.empty(k, dtype=np.int64)
    if chosen_before.size:
        min_d[chosen_before] = -1.0  # -1 so they never win argmax
        first = int(np.argmax(min_d))
    else:
        first = 0
    picks[0] = first
    min_d = np.minimum(min_d, _sq_dist(e, e[first]))
    min_d[first] = -1.0
    for i in range(1, k):
        nxt = int(np.argmax(min_d))
        picks[i] = nxt
        min_d = np.minimum(min_d, _sq_dist(e, e[nxt]))
        min_d[nxt] = -1.0
    return picks


def _sq_dist(e: np.ndarray, x: np.ndarray) -> np.ndarray:
    # Squared distance keeps the argmax/min order of the distance and skips a sqrt per step.
    d = e - x
    return np.einsum("ij,ij->i", d, d)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first (argpartition, then sort only those k)."""
    n = scores.shape[0]
    k = max(0, min(k, n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    return part[np.argsort(-scores[part], kind="stable")]


def diverse_top(scores, embeddings, k: int, candidates_factor: int = 10) -> np.ndarray:
    """k indices: k-center greedy over the top `candidates_factor * k` scores, in descending score order.

    The first center is the best-scored candidate. The result is sorted by score so the queue shows
    the most useful items first while the batch as a whole stays spread out.
    """
    s = finite_array(scores, "scores", ndim=1)
    e = np.asarray(embeddings)
    if e.ndim != 2 or e.shape[0] != s.shape[0]:
        raise ValueError(f"embeddings must be (N, D) with N = {s.shape[0]}, got {e.shape}")
    if candidates_factor < 1:
        raise ValueError("candidates_factor must be >= 1")
    cand = top_k(s, k * candidates_factor)
    picked = cand[k_center_greedy(e[cand], k)]
    return picked[np.argsort(-s[picked], kind="stable")]

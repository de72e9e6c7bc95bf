"""Semi-supervised rounds (issue 24): pseudo-labels for unlabeled pool images, never labels.

A round with `semi.method` other than "none" also trains on some unlabeled pool images, each
with the class the round *guesses* for it, when the guess is confident:

    propagation    label spreading (Zhou et al. 2004) over a k-nearest-neighbour graph of the
                   pretrained embeddings (the cached frozen trunk's output, pooled) of the
                   round's training images and the unlabeled pool: one sparse graph, a few
                   dozen sparse products, no extra training; the embeddings are already on
                   disk (workers.trunk_cache), so its cost is reading them.
    self-training  the round's model is trained on the labels as usual, predicts the pool, and a
                   second model is trained on the labels plus its confident predictions
                   (pseudo-labelling, Lee 2013; FixMatch's confidence threshold without the
                   strong views, which a trunk cache cannot hold for the whole pool): twice the
                   training of a round.

Either way the guesses then pass the same filter (`pick`): confidence at or above
`threshold`, at most `max_ratio` × the class's real training labels per class (so they never
swamp the labels and a class the guesser favours does not grow out of proportion), and they
train with the loss weight `weight` (workers.train).

Pseudo-labels are no labels. They live in the train job only (the manifest's `semi` lists the
unlabeled images with their labels blanked, the job's metrics report counts): no store row, no
label count, no export, no evidence of the exclusion rule, no control estimate, no shadow model
of the audit (it trains on random labels only), no stopping-signal label count read them.

numpy and scipy only (the API process validates configs against this module's callers).
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from engine.contracts import ImageRefs, SemiSpec
from engine.decisions import _unit_hash


def semi_spec(config, unlabeled: ImageRefs | None, number: int) -> SemiSpec | None:
    """What the train job needs for the round's pseudo-labels (None: semi off, or no pool).

    At most `semi.max_pool` unlabeled images, a seeded sample (the same images are likelier to
    stay in it round after round); their labels are blanked here, so that no truth a caller's
    refs might carry (a simulation's pool) can reach a pseudo-label."""
    s = config.semi
    if s.method == "none" or unlabeled is None or not len(unlabeled):
        return None
    ids = np.asarray(unlabeled.item_ids, np.int64)
    keep = np.arange(ids.size)
    if ids.size > s.max_pool:
        keep = np.sort(np.argsort(_unit_hash(config.seed + 104729, ids), kind="stable")[: s.max_pool])
    pool = unlabeled.take(keep)
    pool = pool.model_copy(update={"labels": [-1] * len(pool)})
    return SemiSpec(method=s.method, pool=pool, threshold=s.threshold, weight=s.weight, max_ratio=s.max_ratio,
                    neighbours=s.neighbours, alpha=s.alpha, seed=int(config.seed) * 1000 + int(number))


# ----------------------------------------------------------------------------- the graph

def knn_graph(x: np.ndarray, k: int, chunk: int = 2048) -> sparse.csr_matrix:
    """Symmetric k-nearest-neighbour affinity of the rows of `x` by cosine similarity (the rows
    are L2-normalised here): W[i, j] = 1 when j is among i's k nearest or i among j's, no self
    loops. Computed in row chunks: memory O(chunk · n), never n²."""
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    k = int(min(k, n - 1))
    if n < 2 or k < 1:
        return sparse.csr_matrix((n, n), dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rows, cols = [], []
    for s in range(0, n, chunk):
        sim = x[s:s + chunk] @ x.T
        r = np.arange(s, min(s + chunk, n))
        sim[r - s, r] = -np.inf  # no self loop
        nb = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        rows.append(np.repeat(r, k))
        cols.append(nb.ravel())
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    w = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    return ((w + w.T) > 0).astype(np.float64).tocsr()


def label_spreading(w: sparse.spmatrix, labels: np.ndarray, n_classes: int, alpha: float = 0.2,
                    max_iter: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Label spreading (Zhou et al. 2004; scikit-learn's LabelSpreading) on affinity `w`.

    F ← α S F + (1 − α) Y with S = D^−½ W D^−½, Y one-hot on the labeled rows (`labels` ≥ 0,
    −1 unlabeled). Returns F with rows normalised to sum 1 (a row of zeros where no labeled
    image is reachable): each image's class distribution. α small keeps the labels nearly
    clamped (scikit-learn's default 0.2)."""
    labels = np.asarray(labels, np.int64)
    n = labels.size
    y = np.zeros((n, n_classes))
    on = labels >= 0
    y[np.flatnonzero(on), labels[on]] = 1.0
    d = np.asarray(w.sum(axis=1)).ravel()
    inv = np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1e-300)), 0.0)
    s = sparse.diags(inv) @ w @ sparse.diags(inv)
    s = s.tocsr()
    s.setdiag(0.0)
    y0 = (1.0 - alpha) * y
    f = y0.copy()
    for _ in range(int(max_iter)):
        nxt = alpha * (s @ f) + y0
        done = np.abs(nxt - f).sum() < tol
        f = nxt
        if done:
            break
    tot = f.sum(axis=1, keepdims=True)
    return np.divide(f, tot, out=np.zeros_like(f), where=tot > 0)


def propagate(emb_labeled: np.ndarray, labels: np.ndarray, emb_pool: np.ndarray, n_classes: int, *,
              neighbours: int = 10, alpha: float = 0.2, active: np.ndarray | None = None) -> np.ndarray:
    """Each pool image's class distribution by label spreading from the labeled images over
    the joint kNN graph (rows of zeros: unreachable). Labels of inactive classes (excluded)
    do not spread."""
    labels = np.asarray(labels, np.int64).copy()
    if active is not None:
        labels[~np.asarray(active, bool)[np.clip(labels, 0, None)]] = -1
    x = np.concatenate([np.asarray(emb_labeled, np.float32), np.asarray(emb_pool, np.float32)])
    y = np.concatenate([labels, np.full(len(emb_pool), -1, np.int64)])
    f = label_spreading(knn_graph(x, neighbours), y, n_classes, alpha)
    return f[len(labels):]


# ----------------------------------------------------------------------------- the filter

def pick(dist: np.ndarray, labeled_counts: np.ndarray, threshold: float, max_ratio: float,
         active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pseudo-labels kept from a class distribution per pool image (rows of `dist`).

    Kept: the argmax class, active, with probability ≥ `threshold`; per class at most
    floor(`max_ratio` × its real training labels), the most confident first (ties by row).
    Returns (rows, classes, confidences), rows ascending."""
    dist = np.asarray(dist, np.float64)
    if dist.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    cls = dist.argmax(axis=1)
    conf = dist[np.arange(len(dist)), cls]
    ok = conf >= threshold
    if active is not None:
        ok &= np.asarray(active, bool)[cls]
    caps = np.floor(max_ratio * np.asarray(labeled_counts, np.float64)).astype(np.int64)
    keep = []
    for c in np.unique(cls[ok]):
        rows = np.flatnonzero(ok & (cls == c))
        order = np.lexsort((rows, -conf[rows]))
        keep.append(rows[order[: caps[c]]])
    rows = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return rows, cls[rows], conf[rows]

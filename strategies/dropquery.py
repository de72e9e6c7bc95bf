"""DropQuery (Gupte, Aklilu, Nirschl & Yeung-Levy, "Revisiting active learning in the era of
vision foundation models", TMLR 2024): uncertainty from dropout on the features, diversity from
cluster centres.

1. M forward passes of the classifier head with dropout (rate p) on its input features; an
   image is a *candidate* when at least half of the passes predict another class than the
   plain (no-dropout) prediction: its guess does not survive losing part of the features.
2. k-means (scikit-learn) on the candidates' embeddings into as many clusters as picks; the
   pick of each cluster is its member nearest its centre.
3. Fewer candidates than picks: all of them, and the rest from a fallback ranking (the caller's
   fused score).

The paper's settings: M = 3, p = 0.75 (its code's classifier dropout), the candidate rule
"mismatches > M // 2" — for odd M the same as "at least half" here. The passes run where the
model scores the pool (workers.scoring); this module is the math on their results: numpy and
scikit-learn, no torch (the API process selects), no I/O.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from strategies._checks import finite_array
from strategies.diversity import top_k
from strategies.selection import fill_class_quotas

# The score column the passes' disagreement is stored under (workers.scoring writes it,
# engine.selection reads it).
COLUMN = "dropout_disagreement"
# The share of passes that must disagree with the plain prediction: "at least half".
CANDIDATE_SHARE = 0.5


def disagreement(pred, pass_preds):
    """Share of the dropout passes whose prediction differs from the plain one: pred (N,),
    pass_preds (M, N) class indices → (N,) in [0, 1] (k/M for k differing passes).

    Duck-typed: numpy arrays give a numpy array, torch tensors a torch tensor (workers.scoring
    calls it on the device), with no torch import here."""
    if pass_preds.ndim != 2 or pred.ndim != 1 or pass_preds.shape[1] != pred.shape[0]:
        raise ValueError(f"pass_preds must be (M, N) and pred (N,), got {tuple(pass_preds.shape)} and "
                         f"{tuple(pred.shape)}")
    m = pass_preds.shape[0]
    if m < 1:
        raise ValueError("disagreement needs at least one dropout pass")
    return (pass_preds != pred[None]).sum(0) / m


def is_candidate(share) -> np.ndarray:
    """DropQuery's candidates: at least half of the passes disagree (share ≥ 0.5)."""
    s = finite_array(share, "disagreement", ndim=1)
    return s >= CANDIDATE_SHARE


def nearest_to_centres(embeddings, labels, centres) -> np.ndarray:
    """For each centre j (in order), the index of the point assigned to it (labels == j) that
    is nearest to it (squared Euclidean; ties: the lowest index). A centre no point is assigned
    to gives nothing: at most len(centres) distinct indices, in centre order."""
    e = finite_array(embeddings, "embeddings", ndim=2)
    c = finite_array(centres, "centres", ndim=2)
    lab = np.asarray(labels, np.int64)
    if lab.shape != (e.shape[0],):
        raise ValueError(f"labels must be ({e.shape[0]},), got {lab.shape}")
    if c.shape[1] != e.shape[1]:
        raise ValueError(f"centres have {c.shape[1]} dimensions, the embeddings {e.shape[1]}")
    out = []
    for j in range(c.shape[0]):
        members = np.flatnonzero(lab == j)
        if members.size == 0:
            continue
        d = e[members] - c[j]
        out.append(int(members[int(np.argmin(np.einsum("ij,ij->i", d, d)))]))
    return np.asarray(out, np.int64)


def cluster_centre_picks(embeddings, k: int, random_state: int = 0) -> np.ndarray:
    """k-means (scikit-learn, k-means++ seeding, one initialisation, `random_state`) into k
    clusters, then the member nearest each centre; largest clusters first (ties: cluster id).

    Fewer than k distinct points leave some clusters empty: fewer than k indices then (the
    caller fills). k ≥ n: every point, in index order, without clustering."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    e = finite_array(embeddings, "embeddings", ndim=2)
    n = e.shape[0]
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0 or n == 0:
        return np.zeros(0, np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    with warnings.catch_warnings():
        # Fewer distinct points than clusters: sklearn warns and leaves clusters empty (handled).
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=1, random_state=int(random_state)).fit(e)
    picks = nearest_to_centres(e, km.labels_, km.cluster_centers_)
    sizes = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-sizes[km.labels_[picks]], kind="stable")
    return picks[order]


def dropquery_pick(embeddings, candidate, k: int, fallback, random_state: int = 0,
                   max_clustered: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """k indices of the N items: DropQuery's cluster-centre picks among the `candidate` items
    (bool (N,)), then, if they give fewer than k, the best `fallback` scores (N,) among the rest.

    embeddings: (N, D), or a callable rows → (len(rows), D) (only the candidates' rows are
    read). max_clustered: with more candidates than this, k-means runs on a uniform sample of
    that many (drawn with `rng`), as a bound on its cost for very large pools.
    Returns the picks, cluster picks first (largest cluster first), then the fill by score."""
    cand = np.asarray(candidate, bool)
    score = finite_array(fallback, "fallback", ndim=1)
    n = cand.shape[0]
    if score.shape != (n,):
        raise ValueError(f"fallback has {score.shape[0]} items, candidate {n}")
    k = int(min(max(k, 0), n))
    if k == 0:
        return np.zeros(0, np.int64)
    rows = np.flatnonzero(cand)
    if max_clustered is not None and rows.size > max_clustered > 0:
        if rng is None:
            raise ValueError("subsampling the candidates needs an rng")
        rows = np.sort(rng.choice(rows, size=int(max_clustered), replace=False))
    emb_of: Callable[[np.ndarray], np.ndarray] = (embeddings if callable(embeddings)
                                                  else (lambda r: np.asarray(embeddings)[r]))
    picks = rows[cluster_centre_picks(emb_of(rows), k, random_state)] if rows.size else np.zeros(0, np.int64)
    short = k - picks.size
    if short > 0:
        rest = np.ones(n, bool)
        rest[picks] = False
        idx = np.flatnonzero(rest)
        picks = np.concatenate([picks, idx[top_k(score[idx], short)]])
    return picks.astype(np.int64)


def select_dropquery(share, fused, pred, embeddings, budget: int, class_quota=None, eligible=None,
                     rng: np.random.Generator | None = None, max_clustered: int | None = None) -> np.ndarray:
    """Indices into the pool, in queue order: DropQuery in place of strategies.selection.select's
    top-k and k-center, under the same class quotas.

    share (N,): the passes' disagreement (`disagreement`); fused (N,): the fused score, the
    fallback ranking and the queue order; pred (N,): the predicted class; embeddings (N, D) or a
    callable rows → embeddings (only candidates' rows are read). class_quota (C,) or None: with
    quotas each class's picks are DropQuery among the eligible items predicted as the class (as
    many clusters as its quota); what the quotas leave unfilled goes to DropQuery over every
    eligible item left. eligible (N,) bool or None (all). rng: seeds each k-means (and the
    subsample above `max_clustered`). Queue order: the candidates' picks first, then the fill,
    each by fused score — so a control slice that replaces the lowest-ranked picks replaces the
    fill first."""
    pred = np.asarray(pred)
    n = pred.shape[0]
    cand = is_candidate(share)
    score = finite_array(fused, "fused", ndim=1)
    if cand.shape != (n,) or score.shape != (n,):
        raise ValueError(f"share and fused must have {n} items, got {cand.shape[0]} and {score.shape[0]}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if rng is None:
        raise ValueError("DropQuery's k-means needs an rng")
    ok = np.ones(n, bool) if eligible is None else np.asarray(eligible, bool)
    if ok.shape != (n,):
        raise ValueError(f"eligible has shape {ok.shape}, expected ({n},)")
    budget = int(min(budget, ok.sum()))
    if budget == 0:
        return np.zeros(0, np.int64)
    emb_of = embeddings if callable(embeddings) else (lambda r: np.asarray(embeddings)[r])

    def pick(idx: np.ndarray, k: int) -> np.ndarray:
        seed = int(rng.integers(2**31 - 1))
        sub = dropquery_pick(lambda r: emb_of(idx[r]), cand[idx], k, score[idx], seed, max_clustered, rng)
        return idx[sub]

    if class_quota is None:
        chosen = pick(np.flatnonzero(ok), budget)
    else:
        chosen = fill_class_quotas(pred, class_quota, ok, budget, pick)
    return chosen[np.lexsort((-score[chosen], ~cand[chosen]))]

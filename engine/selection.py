"""A round's batch from its score files: the one selection the service and the simulation run.

Reads only what the strategy needs (engine.scorefiles), keeps out what may not be
queued (images labeled meanwhile, images a gatekeeper recognised as an excluded class, classes
excluded from the head), shares the budget between classes from the evidence, and picks the
batch — the top of the fused score, a seeded draw from it (config.selection, stochastic_keys), or
DropQuery's cluster centres among the images dropout passes disagree on (dropquery_rows) — then
the reserve (the next-ranked images, labeled while the next model trains).
numpy (and scikit-learn's k-means for DropQuery) only: the API process runs it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.contracts import (SCORE_COLUMN_PREFIX, SCORE_EMBEDDING, SCORE_GATED, SCORE_ITEM_IDS,
                                      SCORE_P_GUESS, SCORE_PRED, SCORE_PROBS)
from engine.decisions import class_quota, cold_start_order, round_seed
from engine.scorefiles import ScoreFile
from strategies.dropquery import CANDIDATE_SHARE as DROPQUERY_SHARE
from strategies.dropquery import COLUMN as DROPQUERY_COLUMN

# Shown with each queued image when the strategy weighs nothing (random): the usual uncertainty.
DEFAULT_SHOWN = ("margin", "entropy")


@dataclass
class Pick:
    item_id: int
    pred: str | None                 # the model's guess (None: cold start, no model yet)
    scores: dict[str, float] = field(default_factory=dict)  # shown columns + p_pred
    control: bool = False            # drawn uniformly from the candidates, not ranked (the control slice)


@dataclass
class Selection:
    batch: list[Pick]
    reserve: list[Pick]
    gated: int = 0                   # unlabeled images kept out: a gatekeeper saw an excluded class
    quota: list[int] | None = None   # labels per class the budget asked for
    n_control: int = 0               # picks of the batch drawn uniformly (Pick.control)
    control_note: str | None = None  # why the batch has no control slice though the config asks for one
    dropquery_candidates: int | None = None  # selection.mode dropquery: eligible images ≥ half the passes disagree on
    selection_note: str | None = None  # why the batch was not picked the way the config asks (old score files)


def cold_start(item_ids: Sequence[int], budget: int, reserve: int, seed: int, number: int) -> Selection:
    """No model yet: a random sample of the unlabeled pool (`item_ids` in a fixed order). Every
    pick is drawn uniformly (`control`: random labels for the audit), but no model guessed them:
    they estimate no model's accuracy."""
    ids = np.asarray(item_ids, np.int64)
    order = cold_start_order(ids.size, seed, number)
    take = [Pick(int(ids[i]), None, control=True) for i in order[: budget + reserve]]
    return Selection(take[:budget], take[budget:])


def typical_from_scores(score_files: Sequence[Path | str], budget: int, reserve: int, seed: int, number: int,
                        drop_ids: np.ndarray | None = None) -> Selection:
    """A representative first batch (strategies.typical, TypiClust) from the embeddings a score
    pass of the pretrained model wrote: budget + reserve clusters of the unlabeled pool, the most
    typical image of each, largest clusters first; the first `budget` are the batch. No guesses:
    the model's head is untrained."""
    from strategies.typical import typical_first_batch

    parts = [ScoreFile(Path(f)) for f in score_files]
    if not parts:
        return Selection([], [])
    ids = np.concatenate([p[SCORE_ITEM_IDS] for p in parts]).astype(np.int64, copy=False)
    emb = np.concatenate([np.asarray(p[SCORE_EMBEDDING], np.float64) for p in parts])
    if drop_ids is not None and len(drop_ids):
        keep = ~np.isin(ids, np.asarray(drop_ids, np.int64))
        ids, emb = ids[keep], emb[keep]
    if ids.size == 0:
        return Selection([], [])
    picks = typical_first_batch(emb, min(budget + reserve, ids.size), np.random.default_rng(round_seed(seed, number)))
    take = [Pick(int(ids[i]), None) for i in picks]
    return Selection(take[:budget], take[budget:])


def _candidate_rows(fused: np.ndarray, pred: np.ndarray, quota, eligible: np.ndarray, budget: int,
                    factor: int) -> np.ndarray:
    """Rows (ascending) that strategies.selection.select can look at with these quotas: each
    class's top quota·factor eligible rows by fused score, and the top budget·(factor+1) eligible
    rows overall (what fills the quotas a class could not). Everything else it never reaches."""
    from strategies.diversity import top_k

    el = np.flatnonzero(eligible)
    parts = [el[top_k(fused[el], budget * (factor + 1))]]
    if quota is not None:
        order = np.argsort(pred, kind="stable")
        bounds = np.searchsorted(pred[order], np.arange(len(quota) + 1))
        for c, q in enumerate(np.asarray(quota, np.int64)):
            if q > 0:
                idx = order[bounds[c]:bounds[c + 1]]
                idx = idx[eligible[idx]]
                parts.append(idx[top_k(fused[idx], int(q) * factor)])
    return np.unique(np.concatenate(parts))


def select_rows(columns: dict, weights: dict, pred: np.ndarray, budget: int, quota, excluded: np.ndarray,
                ineligible: np.ndarray | None, rng,
                load_embeddings: Callable[[np.ndarray], np.ndarray] | None, factor: int = 10) -> np.ndarray:
    """strategies.selection.select, reading embeddings only for the rows it can reach.

    Diversity needs the embeddings of each class's candidates only (~20k rows of a 1M pool, not
    ~250 MB). The fused score is computed once here; select then runs on the candidate rows with
    that one column — its rank transform is monotone, so every top-k, every candidate set, the
    k-center picks and the final order are the ones select makes on the whole pool (equal by test;
    only exactly tied fused scores at a cut may be broken another way)."""
    from strategies.fusion import fuse_ranks
    from strategies.selection import select

    n = pred.size
    if load_embeddings is None:
        return select(columns, weights, pred, None, budget, quota, excluded, rng, factor, ineligible)
    if not weights or not any(w != 0 for w in weights.values()):
        return select(columns, weights, pred, load_embeddings(np.arange(n)), budget, quota, excluded, rng, factor,
                      ineligible)
    fused = fuse_ranks(columns, weights)
    eligible = ~np.asarray(excluded, bool)[pred]
    if ineligible is not None:
        eligible &= ~ineligible
    rows = _candidate_rows(fused, pred, quota, eligible, budget, factor)
    sub = select({"fused": fused[rows]}, {"fused": 1.0}, pred[rows], load_embeddings(rows), budget, quota,
                 excluded, rng, factor, None if ineligible is None else ineligible[rows])
    return rows[sub]


def select_from_scores(score_files: Sequence[Path | str], strategy: str, class_names: Sequence[str],
                       active: Sequence[bool], budget: int, reserve: int, accuracy: Sequence[float | None],
                       seed: int, number: int, drop_ids: np.ndarray | None = None,
                       wrong_region_votes: tuple[np.ndarray, np.ndarray] | None = None,
                       n_control: int = 0, sampling: tuple[str, float] = ("topk", 1.0),
                       scores_calibrated: bool = False) -> Selection:
    """The batch and the reserve of round `number`, in priority order.

    accuracy: per class, the evidence's accuracy of this round's model (None: no evidence).
    drop_ids: item ids no longer candidates (labeled, queued or quarantined while scoring ran).
    wrong_region_votes: per class, (votes saying the model looked at the wrong region when it
    guessed the class, votes on its guesses); None without votes. With a class budget, a class
    whose guesses experts often flag gets more of the batch (strategies.budget.class_need).
    n_control: the control slice (control_slice): the lowest-ranked n_control picks of the batch
    are replaced by images drawn uniformly from the candidates, placed at seeded random positions
    of the batch; the reserve stays ranked.
    sampling: (mode, β) of strategies.stochastic: "topk" ranks by the fused score; the others
    rank by Gumbel keys of it (stochastic_keys), so the picks are a seeded draw; "dropquery"
    picks by strategies.dropquery from the score files' dropout disagreement (dropquery_rows), top-k
    with a `selection_note` when the files have none (scored before the mode was set).
    scores_calibrated: the score columns were computed from temperature-scaled probabilities
    (selection.calibrated_scores), so the guess's own probability is read from the stored probs."""
    from strategies.budget import per_class_mean, wrong_region_rate
    from strategies.registry import get_strategy

    spec = get_strategy(strategy)
    parts = [ScoreFile(Path(f)) for f in score_files]
    if not parts:
        return Selection([], [])
    active = np.asarray(active, bool)
    names = list(class_names)
    shown = list(spec.weights) or list(DEFAULT_SHOWN)
    # least_confidence is always read: 1 − it is the probability of the guess (p_pred), which the
    # experts see ("Shirt, 62 %") and Label Studio sorts predictions by, whatever the strategy.
    keys = [k for k in dict.fromkeys([*spec.weights, *shown, "cam_score", "least_confidence"])
            if SCORE_COLUMN_PREFIX + k in parts[0].members]
    ids = np.concatenate([p[SCORE_ITEM_IDS] for p in parts]).astype(np.int64, copy=False)
    pred = np.concatenate([p[SCORE_PRED] for p in parts]).astype(np.int64, copy=False)
    gated = (np.concatenate([p[SCORE_GATED] for p in parts]).astype(bool)
             if SCORE_GATED in parts[0].members else np.zeros(ids.size, bool))
    columns = {k: np.concatenate([p[SCORE_COLUMN_PREFIX + k] for p in parts]).astype(np.float64) for k in keys}
    mode, beta = sampling
    dq_key = SCORE_COLUMN_PREFIX + DROPQUERY_COLUMN
    share = (np.concatenate([p[dq_key] for p in parts]).astype(np.float64)
             if mode == "dropquery" and dq_key in parts[0].members else None)
    # The calibrated probability of the guess (score files written before calibration: 1 − least_confidence).
    p_guess = (np.concatenate([p[SCORE_P_GUESS] for p in parts]).astype(np.float64)
               if SCORE_P_GUESS in parts[0].members else None)
    offsets = np.cumsum([0] + [len(p[SCORE_ITEM_IDS]) for p in parts])
    where = None  # kept row → row in the shards
    if drop_ids is not None and len(drop_ids):
        keep = ~np.isin(ids, np.asarray(drop_ids, np.int64))
        if not keep.all():
            where = np.flatnonzero(keep)
            ids, pred, gated = ids[keep], pred[keep], gated[keep]
            columns = {k: v[keep] for k, v in columns.items()}
            p_guess = p_guess[keep] if p_guess is not None else None
            share = share[keep] if share is not None else None
    n_gated = int((gated & active[pred]).sum())
    if ids.size == 0:
        return Selection([], [], n_gated)

    def load_rows(member: str, rows: np.ndarray) -> np.ndarray:
        g = rows if where is None else where[rows]
        shard = np.searchsorted(offsets, g, side="right") - 1
        out = None
        for k in np.unique(shard):
            sel = shard == k
            e = parts[int(k)][member]
            if out is None:
                out = np.empty((g.size, e.shape[1]), e.dtype)
            out[sel] = e[g[sel] - offsets[k]]
        return out if out is not None else np.zeros((0, 0), np.float32)

    def load_embeddings(rows: np.ndarray) -> np.ndarray:
        return load_rows(SCORE_EMBEDDING, rows)

    rng = np.random.default_rng(round_seed(seed, number))
    quota = None
    if spec.class_budget:
        cam = per_class_mean(pred, columns["cam_score"], len(names)) if spec.needs_cam and "cam_score" in columns \
            else None
        available = np.bincount(pred[~gated], minlength=len(names))
        region = None if wrong_region_votes is None else wrong_region_rate(*wrong_region_votes)
        quota = class_quota(budget, accuracy, active, available, cam, region)
    weighted = {k: columns[k] for k in spec.weights if k in columns}
    weights = dict(spec.weights)
    if mode not in ("topk", "dropquery") and any(w != 0 for w in weights.values()):
        # One draw for the batch and the reserve: the reserve is where the same draw goes on.
        weighted = {"fused": stochastic_keys(weighted, weights, ~active[pred] | gated, mode, beta, seed, number)}
        weights = {"fused": 1.0}
    loader = load_embeddings if spec.diversity else None
    n_candidates, note = None, None
    if share is not None:
        # DropQuery replaces the top-k and k-center (and ignores spec.diversity: the clusters are
        # its diversity); the quotas, the reserve and the control slice stay.
        from strategies.fusion import fuse_ranks

        fused = (fuse_ranks(weighted, weights) if any(w != 0 for w in weights.values())
                 else np.random.default_rng([round_seed(seed, number), 0xF111]).random(ids.size))
        n_candidates = int((active[pred] & ~gated & (share >= DROPQUERY_SHARE)).sum())

        def rows(k: int, quota, off: np.ndarray, stream: int) -> np.ndarray:
            return dropquery_rows(share, fused, pred, k, quota, active[pred] & ~off, load_embeddings, seed, number,
                                  stream)
    else:
        if mode == "dropquery":
            note = ("selection.mode dropquery: the score files have no dropout disagreement (scored before the "
                    "mode was set), so this batch is the fused score's top-k")

        def rows(k: int, quota, off: np.ndarray, stream: int) -> np.ndarray:
            return select_rows(weighted, weights, pred, k, quota, ~active, off, rng, loader)

    # The batch, then the reserve from what it left (each rule's own stream: 0 the batch, 1 the reserve).
    chosen = rows(budget, quota, gated, 0)
    extra = np.zeros(0, np.int64)
    if reserve > 0:
        taken = gated.copy()
        taken[chosen] = True
        extra = rows(reserve, None, taken, 1)

    order, is_control = control_slice(np.asarray(chosen, np.int64), np.asarray(extra, np.int64), gated, n_control,
                                      seed, number)
    own = {}  # row → the model's own probability of its guess, where least_confidence is calibrated
    if scores_calibrated and p_guess is not None and SCORE_PROBS in parts[0].members:
        rows = np.concatenate([order, np.asarray(extra, np.int64)])
        own = dict(zip(rows.tolist(), load_rows(SCORE_PROBS, rows).max(axis=1).tolist())) if rows.size else {}

    def pick(i: int, control: bool = False) -> Pick:
        scores = {k: round(float(columns[k][i]), 6) for k in shown if k in columns}
        if share is not None:
            scores[DROPQUERY_COLUMN] = round(float(share[i]), 6)
        if "least_confidence" in columns:
            scores["p_pred"] = round(1.0 - float(columns["least_confidence"][i]), 6)
        if p_guess is not None:  # calibrated: what experts see; the model's own softmax beside it
            scores["p_pred_uncalibrated"] = (round(float(own[i]), 6) if i in own
                                             else scores.get("p_pred", round(float(p_guess[i]), 6)))
            scores["p_pred"] = round(float(p_guess[i]), 6)
        return Pick(int(ids[i]), names[int(pred[i])], scores, control)

    batch = [pick(int(i), bool(k)) for i, k in zip(order, is_control)]
    return Selection(batch, [pick(int(i)) for i in extra], n_gated, None if quota is None else [int(q) for q in quota],
                     int(is_control.sum()), dropquery_candidates=n_candidates, selection_note=note)


# DropQuery's k-means runs on at most this many candidates a call (a seeded uniform sample above):
# its cost and the embeddings read stay bounded on a pool of millions (~100 MB of 1,280-d float32).
DROPQUERY_MAX_CLUSTERED = 20000


def dropquery_rows(share: np.ndarray, fused: np.ndarray, pred: np.ndarray, budget: int, quota,
                   eligible: np.ndarray, load_embeddings: Callable[[np.ndarray], np.ndarray], seed: int,
                   number: int, stream: int = 0) -> np.ndarray:
    """strategies.dropquery.select_dropquery on the round's rows, reading embeddings only for
    the candidates k-means clusters. Its own random stream of the round's seed (`stream` 0 the
    batch, 1 the reserve), so the control slice draws what it draws without it."""
    from strategies.dropquery import select_dropquery

    rng = np.random.default_rng([round_seed(seed, number), 0xD509, int(stream)])
    return select_dropquery(share, fused, pred, load_embeddings, budget, quota, eligible, rng,
                            DROPQUERY_MAX_CLUSTERED)


def stochastic_keys(columns: dict, weights: dict, ineligible: np.ndarray, mode: str, beta: float, seed: int,
                    number: int) -> np.ndarray:
    """Gumbel keys of the fused score (strategies.stochastic) for the round's model-ranked picks:
    ranking by them instead of the score makes every top-k downstream (a class's quota, the
    candidates k-center spreads, the reserve) a draw without replacement ∝ the mode's weights.

    The weights are computed over the eligible rows only (softrank's ranks are ranks among the
    candidates); ineligible rows get keys below every eligible one. Its own random stream of the
    round's seed, so the cold start, the control slice and the random strategy draw what they
    draw without it."""
    from strategies.fusion import fuse_ranks
    from strategies.stochastic import gumbel_keys

    fused = fuse_ranks(columns, weights)
    ok = ~np.asarray(ineligible, bool)
    keys = np.zeros(fused.size)
    if ok.any():
        rng = np.random.default_rng([round_seed(seed, number), 0x5A3B1E])
        keys[ok] = gumbel_keys(fused[ok], mode, beta, rng)
        if not ok.all():
            keys[~ok] = keys[ok].min() - 1.0
    return keys


def control_slice(chosen: np.ndarray, reserve: np.ndarray, ineligible: np.ndarray, n_control: int, seed: int,
                  number: int) -> tuple[np.ndarray, np.ndarray]:
    """(the batch's rows in queue order, which of them are control) after the control slice.

    The lowest-ranked `n_control` rows of `chosen` (in priority order) give way to rows drawn
    uniformly, without replacement, from the candidates: every row not `ineligible` (a
    gatekeeper kept it out) and not kept in the batch or the reserve (a replaced ranked pick may
    be drawn back). Their places in the batch are drawn too, so the queue order says nothing of
    which are control. Its own random stream of the round's seed: the ranked picks, the reserve
    and the model's seeds are the ones a run without control makes."""
    chosen = np.asarray(chosen, np.int64)
    k = min(int(n_control), chosen.size)
    if k <= 0:
        return chosen, np.zeros(chosen.size, bool)
    rng = np.random.default_rng([round_seed(seed, number), 0xC0417])
    kept = chosen[: chosen.size - k]
    free = ~np.asarray(ineligible, bool).copy()
    free[kept] = False
    free[np.asarray(reserve, np.int64)] = False
    rows = np.flatnonzero(free)
    k = min(k, rows.size)
    drawn = rng.choice(rows, size=k, replace=False) if k else np.zeros(0, np.int64)
    n = kept.size + k
    at = np.zeros(n, bool)
    at[rng.choice(n, size=k, replace=False)] = True
    order = np.empty(n, np.int64)
    order[at] = drawn
    order[~at] = kept
    return order, at

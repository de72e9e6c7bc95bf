"""Stochastic batch acquisition (Kirsch et al., "Stochastic Batch Acquisition: A Simple Baseline
for Deep Active Learning", TMLR 2023): draw the batch without replacement with probabilities that
grow with the score, instead of taking the top k.

Top-k of a score computed once per round assumes the items do not inform one another; the best
k are then often near-duplicates. Sampling keeps the high scores likely and spreads the rest of
the batch over the next ones, at the cost of one sort. The paper's acquisition distributions:

    power     p_i ∝ s_i^β         scores s_i ≥ 0 (its PowerBALD: BALD's mutual information)
    softrank  p_i ∝ r_i^(−β)      r_i the 1-based rank of s_i, highest first: scale-free
    softmax   p_i ∝ exp(β · s_i)

β → ∞ is top-k, β = 0 uniform random; the paper's default is β = 1. A draw without replacement
is Gumbel-top-k (Vieira 2014; Kool, van Hoof & Welling 2019): add an independent standard
Gumbel variable to each log-weight and keep the k largest keys. The keys are a score like any
other, so everything downstream of a score (per-class quotas, k-center over the top candidates,
the priority order) runs on them unchanged.

Pure numpy: no I/O.
"""
from __future__ import annotations

import numpy as np

from strategies._checks import finite_array

MODES = ("topk", "power", "softrank", "softmax")


def _check(mode: str, beta: float) -> float:
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; choose one of {', '.join(MODES)}")
    beta = float(beta)
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return beta


def descending_ranks(scores) -> np.ndarray:
    """1-based rank of each score, highest first; tied scores share the best rank of their group
    (so they get the same sampling weight)."""
    s = finite_array(scores, "scores", ndim=1)
    srt = np.sort(s)
    # items strictly above s_i, plus one
    return (s.size - np.searchsorted(srt, s, side="right") + 1).astype(np.float64)


def log_weights(scores, mode: str, beta: float) -> np.ndarray:
    """log of each item's unnormalised sampling weight (−inf: weight 0, never drawn while any
    item of positive weight is left). `topk` has no distribution: the scores are returned."""
    beta = _check(mode, beta)
    s = finite_array(scores, "scores", ndim=1).astype(np.float64)
    if mode == "topk":
        return s.copy()
    if mode == "softmax":
        return beta * s
    if mode == "softrank":
        return -beta * np.log(descending_ranks(s))
    # power
    if (s < 0).any():
        raise ValueError("power sampling needs scores >= 0; use softrank or softmax for signed scores")
    if beta == 0:
        return np.zeros_like(s)
    with np.errstate(divide="ignore"):
        return beta * np.log(s)


def sampling_probs(scores, mode: str, beta: float) -> np.ndarray:
    """The normalised probabilities of a one-item draw (what the first pick follows)."""
    if mode == "topk":
        raise ValueError("topk is deterministic: no sampling distribution")
    lw = log_weights(scores, mode, beta)
    if not np.isfinite(lw).any():
        return np.full(lw.size, 1.0 / lw.size) if lw.size else lw
    w = np.exp(lw - lw[np.isfinite(lw)].max())
    return w / w.sum()


def gumbel_keys(scores, mode: str, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Finite keys whose descending order is a draw of all items without replacement with
    probabilities ∝ the mode's weights: the top k keys are a k-item draw (Gumbel-top-k).

    `topk` returns the scores themselves (no draw). Items of weight 0 (power, score 0) get keys
    below every other, in random order among themselves: they come only after the rest."""
    lw = log_weights(scores, mode, beta)
    if mode == "topk":
        return lw
    if rng is None:
        raise ValueError("stochastic acquisition needs an rng")
    g = rng.gumbel(size=lw.size)
    keys = lw + g
    dead = ~np.isfinite(lw)
    if dead.any():
        floor = keys[~dead].min() if (~dead).any() else 0.0
        keys[dead] = floor - 1.0 - rng.random(int(dead.sum()))
    return keys


def sample_without_replacement(scores, k: int, mode: str, beta: float, rng: np.random.Generator) -> np.ndarray:
    """k item indices drawn without replacement ∝ the mode's weights, in draw order
    (for `topk`: the k highest scores, highest first)."""
    from strategies.diversity import top_k

    return top_k(gumbel_keys(scores, mode, beta, rng), int(k))

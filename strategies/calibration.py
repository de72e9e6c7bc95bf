"""Temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017) and the
expected calibration error it is judged by.

A network's softmax is usually over-confident; dividing its logits by one scalar T > 0, fitted
to minimise the negative log-likelihood (NLL) of held-out labels, fixes most of that without
changing any prediction (the argmax of z / T is the argmax of z). camloop fits T on a round's
evidence (the validation split or the held-out labeled images) and may score the pool with the
scaled probabilities; the same fit serves calibrated guesses shown to experts.

The fit works in β = 1 / T: NLL(β) = mean_i [logsumexp(β z_i) − β z_{i, y_i}] is convex in β
(its second derivative is the mean variance of z_i under softmax(β z_i), never negative), so a
bracketed Newton step on its derivative finds the one minimum exactly, in a few iterations, with
no optimiser library (strategies/ is numpy only). When the labels are separated perfectly the
NLL keeps falling as T → 0, and when the logits say nothing it falls as T → ∞: the fit then
returns the nearer bound of `bounds`.

Logits may hold −inf for classes masked out of the head (excluded classes): they keep zero
probability at every T. A label's own logit must be finite. Log-probabilities work as logits
too (softmax is unchanged by a per-row constant), so `fit_temperature(np.log(probs), labels)`
fits the model that produced `probs`.
"""
from __future__ import annotations

import numpy as np

DEFAULT_BOUNDS = (0.05, 20.0)


def _check(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {z.shape}")
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"labels must be (N,) with N = {z.shape[0]}, got shape {y.shape}")
    if z.shape[0] == 0:
        raise ValueError("no examples to fit or measure on")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if (y < 0).any() or (y >= z.shape[1]).any():
        raise ValueError(f"labels must be in [0, {z.shape[1]}), got {y.min()}..{y.max()}")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ValueError("logits contain NaN or +inf")
    if not np.isfinite(z[np.arange(z.shape[0]), y]).all():
        raise ValueError("a label's own logit is -inf (its class is masked out): drop those examples")
    return z, y.astype(np.int64)


def _softmax_moments(z: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: logsumexp(βz), E_p[z], Var_p[z] under p = softmax(βz); −inf entries carry p = 0."""
    finite = np.isfinite(z)
    zf = np.where(finite, z, 0.0)
    s = np.where(finite, beta * zf, -np.inf)
    m = s.max(axis=1, keepdims=True)
    e = np.exp(s - m)
    tot = e.sum(axis=1, keepdims=True)
    p = e / tot
    lse = (m + np.log(tot))[:, 0]
    mean = (p * zf).sum(axis=1)
    var = (p * (zf - mean[:, None]) ** 2).sum(axis=1)
    return lse, mean, var


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean NLL (nats) of `labels` under softmax(logits / temperature)."""
    z, y = _check(logits, labels)
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    lse, _, _ = _softmax_moments(z, 1.0 / temperature)
    return float(np.mean(lse - z[np.arange(z.shape[0]), y] / temperature))


def fit_temperature(logits, labels, *, bounds: tuple[float, float] = DEFAULT_BOUNDS, tol: float = 1e-10,
                    max_iter: int = 100) -> float:
    """The T in `bounds` minimising the mean NLL of `labels` under softmax(logits / T)."""
    z, y = _check(logits, labels)
    t_lo, t_hi = float(bounds[0]), float(bounds[1])
    if not (0 < t_lo < t_hi < np.inf):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds}")
    zy = z[np.arange(z.shape[0]), y]

    def grad(beta: float) -> tuple[float, float]:
        _, mean, var = _softmax_moments(z, beta)
        return float(np.mean(mean - zy)), float(np.mean(var))

    lo, hi = 1.0 / t_hi, 1.0 / t_lo  # the bracket in beta
    g_lo, _ = grad(lo)
    if g_lo >= 0:  # NLL already rising at the smallest beta: the largest T
        return t_hi
    g_hi, _ = grad(hi)
    if g_hi <= 0:  # still falling at the largest beta: the smallest T
        return t_lo
    beta = min(max(1.0, lo), hi)
    for _ in range(max_iter):
        g, h = grad(beta)
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else np.nan
        # Newton inside the bracket, bisection where Newton would leave it.
        beta_new = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(beta_new - beta) <= tol * max(1.0, beta):
            beta = beta_new
            break
        beta = beta_new
    return float(1.0 / beta)


def scaled_probs(logits, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), row by row; −inf logits get probability 0."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {z.shape}")
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    s = z / temperature
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE with `n_bins` equal-width bins of the confidence max_c p_c (Naeini et al. 2015; Guo et
    al. 2017): sum over bins of (share of examples) × |accuracy − mean confidence|. A confidence
    c falls in bin floor(c · n_bins), so bins are [i / n, (i + 1) / n), and c = 1 joins the last
    bin."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must be (N,) with N = {p.shape[0]}, got shape {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("no examples to measure on")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs must be finite, non-negative rows summing to 1")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (y >= p.shape[1]).any():
        raise ValueError(f"labels must be integer class indices in [0, {p.shape[1]})")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    b = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, weights=correct, minlength=n_bins) - np.bincount(b, weights=conf, minlength=n_bins))
    return float(gap.sum() / count.sum())

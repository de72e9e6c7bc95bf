"""A round's calibration: one temperature fitted on its evidence, and what it changed.

The train job predicts the evidence (the validation split, or the held-out labeled images) with
the round's model, fits a temperature T there (strategies.calibration: temperature scaling, Guo
et al. 2017) and keeps it with the checkpoint; every probability camloop shows or decides with
afterwards (the guess's probability in the queue and in Label Studio, pre-selection) is
softmax(log p / T). The expected calibration error before and after is measured on the evidence
the fit saw and, where the project has one, on the test split it did not see.

Too little evidence gives a temperature that fits noise, so under MIN_EVIDENCE images T stays 1
and the metrics say why. numpy only: the API process may read these figures.
"""
from __future__ import annotations

import numpy as np

from strategies.calibration import expected_calibration_error, fit_temperature, negative_log_likelihood, scaled_probs

MIN_EVIDENCE = 20  # images: below this the fit is not trusted (T = 1)


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Logits up to a per-row constant: log p, with classes masked out of the head (p exactly 0 in
    every row: excluded classes) at −inf and other zeros (float32 underflow) at the smallest log."""
    p = np.asarray(probs, np.float64)
    masked = (p <= 0).all(axis=0, keepdims=True) if len(p) else np.zeros((1, p.shape[1]), bool)
    z = np.log(np.maximum(p, 1e-300))
    return np.where(masked, -np.inf, z)


def calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the calibrated probabilities of a model whose softmax is `probs`."""
    if temperature == 1.0 or not len(probs):
        return np.asarray(probs, np.float64)
    return scaled_probs(log_probs(probs), temperature)


def _usable(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images with a known label whose class the model still predicts (an excluded class's images
    have no probability to calibrate)."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    keep = y >= 0
    if len(p):
        keep &= p[np.arange(len(p)), np.clip(y, 0, p.shape[1] - 1)] > 0
    return p[keep], y[keep]


def _figures(p: np.ndarray, y: np.ndarray, temperature: float) -> dict:
    z = log_probs(p)
    return {"n": int(len(y)),
            "ece_before": expected_calibration_error(p / p.sum(axis=1, keepdims=True), y),
            "ece_after": expected_calibration_error(scaled_probs(z, temperature), y),
            "nll_before": negative_log_likelihood(z, y, 1.0),
            "nll_after": negative_log_likelihood(z, y, temperature)}


def round_calibration(evidence_probs, evidence_labels, test_probs=None, test_labels=None) -> dict:
    """{"temperature", "fitted_on": n, "evidence": figures, "test": figures | None, "note"}."""
    p, y = _usable(evidence_probs, evidence_labels)
    if len(y) < MIN_EVIDENCE:
        t, note = 1.0, (f"not fitted: {len(y)} evidence images, fewer than {MIN_EVIDENCE}; probabilities are "
                        "the model's own")
    else:
        t, note = fit_temperature(log_probs(p), y), f"fitted on {len(y)} evidence images"
    out = {"temperature": float(t), "fitted_on": int(len(y)), "note": note,
           "evidence": _figures(p, y, t) if len(y) else None, "test": None}
    if test_probs is not None and test_labels is not None:
        tp, ty = _usable(test_probs, test_labels)
        if len(ty):
            out["test"] = _figures(tp, ty, t)
    return out

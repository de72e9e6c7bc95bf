"""When to stop labeling: small criteria over the history of rounds, `should_stop(history) -> (bool, reason)`.

history: a sequence of rounds, oldest first, each a mapping with (any of)
  "labels"           labels spent so far (int)
  "val_accuracy"     held-out accuracy after the round's training (float)
  "stop_set_pred"    the round's predicted classes on a fixed sample of pool images, the *stop
                     set* (int array; the same images in the same order every round)

  StabilisingPredictions  Bloodgood & Vijay-Shanker (CoNLL 2009): stop when Cohen's kappa between
                          successive rounds' predictions on the stop set has stayed ≥ `kappa`
                          (0.99 in the paper) for the last `window` (3) comparisons: the model's
                          answers no longer change, so more labels buy little. The stop set needs
                          no labels, so it can be large (2,000 in the paper).
  AccuracyPlateau         the held-out accuracy has not beaten its best of the earlier rounds by
                          `min_gain` for `patience` rounds.
  BudgetSpent             labels ≥ `max_labels`.
  AnyOf                   the first of its criteria that says stop.
Pure data and numpy: the service and `camloop simulate` record the history, and call these.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def cohens_kappa(a, b, n_classes: int | None = None) -> float:
    """Cohen's kappa of two label vectors: (p_o − p_e) / (1 − p_e). 1.0 when both are the same
    single class (perfect agreement, p_e = 1)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"predictions must be two vectors of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("kappa of empty predictions")
    if (a < 0).any() or (b < 0).any():
        raise ValueError("class indices must be >= 0")
    c = int(max(a.max(), b.max()) + 1) if n_classes is None else int(n_classes)
    p_o = float((a == b).mean())
    p_e = float(np.dot(np.bincount(a, minlength=c), np.bincount(b, minlength=c))) / a.size ** 2
    if p_e >= 1.0:
        return 1.0 if p_o == 1.0 else 0.0
    return (p_o - p_e) / (1.0 - p_e)


def successive_kappas(history: Sequence[Mapping]) -> list[float]:
    """Kappa between each round's stop-set predictions and the previous round's (rounds without
    predictions are skipped)."""
    preds = [r["stop_set_pred"] for r in history if r.get("stop_set_pred") is not None]
    return [cohens_kappa(p, q) for p, q in zip(preds, preds[1:])]


@dataclass(frozen=True)
class StabilisingPredictions:
    kappa: float = 0.99
    window: int = 3

    def __post_init__(self):
        if not 0 < self.kappa <= 1 or self.window < 1:
            raise ValueError("kappa must be in (0, 1] and window >= 1")

    def should_stop(self, history: Sequence[Mapping]) -> tuple[bool, str]:
        ks = successive_kappas(history)
        if len(ks) < self.window:
            return False, f"predictions stabilising: {len(ks)} of {self.window} round-to-round comparisons so far"
        last = ks[-self.window:]
        if min(last) >= self.kappa:
            return True, (f"predictions stable: kappa between successive rounds on the stop set "
                          f"{', '.join(f'{k:.3f}' for k in last)} ≥ {self.kappa} for {self.window} rounds")
        return False, f"predictions still changing: last kappas {', '.join(f'{k:.3f}' for k in last)} (< {self.kappa})"


@dataclass(frozen=True)
class AccuracyPlateau:
    min_gain: float = 0.005
    patience: int = 3

    def __post_init__(self):
        if self.patience < 1 or self.min_gain < 0:
            raise ValueError("patience must be >= 1 and min_gain >= 0")

    def should_stop(self, history: Sequence[Mapping]) -> tuple[bool, str]:
        acc = [float(r["val_accuracy"]) for r in history
               if r.get("val_accuracy") is not None and not math.isnan(float(r["val_accuracy"]))]
        if len(acc) <= self.patience:
            return False, f"accuracy plateau: {len(acc)} rounds with a held-out accuracy, need {self.patience + 1}"
        before = max(acc[: -self.patience])
        recent = max(acc[-self.patience:])
        if recent < before + self.min_gain:
            return True, (f"held-out accuracy plateaued: best of the last {self.patience} rounds {recent:.4f} "
                          f"vs {before:.4f} before (gain < {self.min_gain})")
        return False, f"held-out accuracy still rising: {recent:.4f} vs {before:.4f} before"


@dataclass(frozen=True)
class BudgetSpent:
    max_labels: int

    def should_stop(self, history: Sequence[Mapping]) -> tuple[bool, str]:
        spent = int(history[-1].get("labels", 0)) if history else 0
        if spent >= self.max_labels:
            return True, f"label budget spent: {spent} of {self.max_labels}"
        return False, f"{spent} of {self.max_labels} labels spent"


@dataclass(frozen=True)
class AnyOf:
    criteria: tuple

    def __init__(self, *criteria):
        if not criteria:
            raise ValueError("AnyOf needs at least one criterion")
        object.__setattr__(self, "criteria", tuple(criteria))

    def should_stop(self, history: Sequence[Mapping]) -> tuple[bool, str]:
        reasons = []
        for c in self.criteria:
            stop, reason = c.should_stop(history)
            if stop:
                return True, reason
            reasons.append(reason)
        return False, "; ".join(reasons)


def from_config(cfg: Mapping | None):
    """A criterion from a project's `stopping` settings, e.g. {"kappa": 0.99, "window": 3,
    "plateau_gain": 0.005, "plateau_patience": 3, "max_labels": 5000}; a key left out (or None)
    leaves its criterion out. None or {} → None (never stop on its own)."""
    cfg = dict(cfg or {})
    parts = []
    if cfg.get("kappa") is not None:
        parts.append(StabilisingPredictions(float(cfg["kappa"]), int(cfg.get("window") or StabilisingPredictions.window)))
    if cfg.get("plateau_gain") is not None:
        parts.append(AccuracyPlateau(float(cfg["plateau_gain"]),
                                     int(cfg.get("plateau_patience") or AccuracyPlateau.patience)))
    if cfg.get("max_labels") is not None:
        parts.append(BudgetSpent(int(cfg["max_labels"])))
    unknown = set(cfg) - {"kappa", "window", "plateau_gain", "plateau_patience", "max_labels"}
    if unknown:
        raise ValueError(f"unknown stopping settings: {sorted(unknown)}")
    return AnyOf(*parts) if parts else None


def choose_stop_set(n_pool: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A fixed random sample of pool positions (sorted) to predict on every round. Bloodgood &
    Vijay-Shanker keep it fixed whether or not its items get labeled later; so do we."""
    if n_pool < 0 or size < 0:
        raise ValueError("n_pool and size must be >= 0")
    return np.sort(rng.choice(n_pool, size=min(size, n_pool), replace=False))

"""Does active learning pay off here? The math of the random control slice (pure: no I/O).

Each round a share of the batch is drawn uniformly from the candidates (engine.selection) and
queued among the ranked picks; the model that chose the batch predicted those images before any
model trained on them. Compared with the experts' labels they are an unbiased sample of that
model's accuracy on the pool still unlabeled, which the held-out *labeled* images (picked because
they were hard) are not.

    wilson(correct, n, z)                    the Wilson score interval of a proportion
    control_estimate(pairs, class_names, …)  one round's estimate, overall and per true class
    pool_estimates(estimates, …)             several rounds' control labels pooled

An estimate is the dict the simulate JSON and GET /metrics both carry:
    {"round", "model_version_id", "n", "correct", "accuracy", "low", "high",
     "per_class": {name: {"n", "correct", "accuracy", "low", "high"}}}
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of correct/n at the normal quantile z (1.96: 95 %).

    n = 0 says nothing: (0, 1). Agrees with statsmodels' proportion_confint(method="wilson")."""
    k, n = int(correct), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= correct <= n, got {k}/{n}")
    if n == 0:
        return 0.0, 1.0
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def proportion(correct: int, n: int, z: float = Z95) -> dict:
    """{"n", "correct", "accuracy" (None when n = 0), "low", "high"}."""
    lo, hi = wilson(correct, n, z)
    return {"n": int(n), "correct": int(correct), "accuracy": (correct / n) if n else None,
            "low": round(lo, 6), "high": round(hi, 6)}


def control_estimate(pairs: Iterable[tuple[str | None, str]], class_names: Sequence[str], round_number: int,
                     model_version_id: int | None = None, z: float = Z95) -> dict:
    """One round's estimate from its control labels: (the chooser's guess, the label) pairs.

    Per class = per *true* class (the label), as the evidence's per-class accuracy is. A pair
    whose guess is None (no model predicted it: a cold start) is not a control label and is left
    out. A label of a class the model cannot answer (excluded from its head) counts as wrong: the
    estimate is of the model on the pool as it is."""
    total: dict[str, int] = {}
    right: dict[str, int] = {}
    for pred, label in pairs:
        if pred is None or label is None:
            continue
        total[label] = total.get(label, 0) + 1
        right[label] = right.get(label, 0) + int(pred == label)
    return _estimate(round_number, model_version_id, total, right, class_names, z)


def _estimate(round_number, model_version_id, total: Mapping[str, int], right: Mapping[str, int],
              class_names: Sequence[str], z: float) -> dict:
    names = list(class_names) + sorted(k for k in total if k not in set(class_names))
    n, k = sum(total.values()), sum(right.values())
    return {"round": round_number, "model_version_id": model_version_id, **proportion(k, n, z),
            "per_class": {c: proportion(right.get(c, 0), total.get(c, 0), z) for c in names}}


def pool_estimates(estimates: Sequence[Mapping], class_names: Sequence[str], z: float = Z95) -> dict:
    """The control labels of several rounds pooled (each compared with the guess of the model
    that chose it): counts add up; "rounds" names the rounds pooled. The pooled figure is an
    average over those models, not the accuracy of any one of them (older models are worse, so
    it leans low while the models improve)."""
    total: dict[str, int] = {}
    right: dict[str, int] = {}
    for e in estimates:
        for c, row in (e.get("per_class") or {}).items():
            total[c] = total.get(c, 0) + int(row.get("n") or 0)
            right[c] = right.get(c, 0) + int(row.get("correct") or 0)
    out = _estimate(None, None, total, right, class_names, z)
    out["rounds"] = [e.get("round") for e in estimates]
    return out


def class_counts(estimates: Sequence[Mapping], class_names: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(correct, total) per class of several rounds' control labels pooled."""
    correct = {c: 0 for c in class_names}
    total = {c: 0 for c in class_names}
    for e in estimates:
        for c, row in (e.get("per_class") or {}).items():
            if c in total:
                total[c] += int(row.get("n") or 0)
                correct[c] += int(row.get("correct") or 0)
    return correct, total

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

The audit of the lift compares the project's model with what *random* picking would have reached:

  random curve     accuracy of the project's model trained on random labels only (a random first
                   batch and the control slice), at several numbers of labels, each measured on
                   unbiased evidence as (correct, n): the shadow learner's points.
  fit              acc(n) = a − b·n^(−c), a power law in the labels (Cortes et al. 1994; Hestness et
                   al. 2017), fitted by binomially weighted least squares: for each c on a grid the
                   model is linear in (a, b); a ≤ 1, b ≥ 0, and a weak prior pulls c toward 0.5 so
                   that two or three sizes still give a curve (fit_power_law).
  inversion        the labels at which the fitted curve reaches the current model's accuracy:
                   n = (b / (a − acc))^(1/c); none when acc ≥ a (random never gets there on this curve).
  interval         the envelope of two parametric bootstraps (the power law, and acc = α + β·ln n,
                   a curve that never saturates: the shape beyond the measured random labels is
                   an assumption, so a gain is claimed only when both shapes show it): every
                   point's accuracy and the current accuracy are
                   drawn again from their measurement error (binomial, widened by the scatter of
                   the points around the curve when it exceeds the binomial: the training noise
                   of one model, which the current model has too), the curve refitted,
                   and the inversion taken again; the 2.5 and 97.5 percentiles.
  verdict          too_early before enough random evidence; paying_off when the whole interval of
                   labels saved is above zero; not_paying_off otherwise (the interval covers no
                   gain), with what to do.

Pure numpy: the workers measure the points, the service and `camloop simulate` call these.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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


# ----------------------------------------------------------------------------- the audit of the lift

# The grid of exponents c the fit searches: learning-curve exponents of accuracy lie well inside.
C_GRID = np.geomspace(0.05, 3.0, 80)
C_PRIOR = 0.5         # the exponent a fit with little evidence leans toward
C_PRIOR_WEIGHT = 1.0  # in units of the weighted sum of squares (chi-square units)


@dataclass(frozen=True)
class PowerLaw:
    """acc(n) = a − b·n^(−c)."""
    a: float
    b: float
    c: float

    def __call__(self, n) -> np.ndarray:
        return self.a - self.b * np.power(np.asarray(n, np.float64), -self.c)

    def labels_for(self, accuracy: float) -> float:
        """Labels at which the curve reaches `accuracy`: inf when it never does, 0 when it starts above."""
        if accuracy >= self.a:
            return math.inf
        if self.b <= 0:
            return 0.0
        return float((self.b / (self.a - accuracy)) ** (1.0 / self.c))


def _weights(acc: np.ndarray, n_eval: np.ndarray) -> np.ndarray:
    # Binomial variance of each measured accuracy, kept off zero (a point at 100 % is not exact).
    p = np.clip(acc, 0.5 / np.maximum(n_eval, 1), 1 - 0.5 / np.maximum(n_eval, 1))
    return n_eval / (p * (1 - p))


def _fit_many(labels: np.ndarray, acc: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                             np.ndarray]:
    """Fit every row of `acc` (R × k) with weights `w` (R × k) at once: (a, b, c, cost) per row."""
    x = np.power(labels[None, :], -C_GRID[:, None])          # G × k
    ww = w[:, None, :]                                         # R × 1 × k
    sw = ww.sum(-1)
    xm = (ww * x[None]).sum(-1) / sw                           # R × G
    ym = (w * acc).sum(-1)[:, None] / sw                      # R × G (the same for every c)
    dx = x[None] - xm[..., None]
    dy = acc[:, None, :] - ym[..., None]
    sxx = (ww * dx * dx).sum(-1)
    sxy = (ww * dx * dy).sum(-1)
    slope = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1), 0.0)
    b = np.maximum(-slope, 0.0)                                # acc = a − b·x, b ≥ 0
    a = ym + b * xm
    over = a > 1.0                                             # a ceiling above 100 %: a = 1, refit b
    if over.any():
        num = (ww * x[None] * (1.0 - acc[:, None, :])).sum(-1)
        den = (ww * x[None] * x[None]).sum(-1)
        b = np.where(over, np.maximum(num / np.where(den > 0, den, 1), 0.0), b)
        a = np.where(over, 1.0, a)
    resid = acc[:, None, :] - (a[..., None] - b[..., None] * x[None])
    cost = (ww * resid * resid).sum(-1) + C_PRIOR_WEIGHT * np.log(C_GRID / C_PRIOR)[None, :] ** 2
    best = cost.argmin(axis=1)
    rows = np.arange(len(acc))
    return a[rows, best], b[rows, best], C_GRID[best], cost[rows, best]


def fit_power_law(labels: Sequence[float], accuracy: Sequence[float], n_eval: Sequence[float]) -> PowerLaw:
    """The power law through measured points (labels, accuracy on n_eval images)."""
    n, acc, m = (np.asarray(v, np.float64) for v in (labels, accuracy, n_eval))
    if n.ndim != 1 or not (len(n) == len(acc) == len(m)) or len(n) < 2:
        raise ValueError("need at least two points of equal-length labels, accuracy and n_eval")
    if (n <= 0).any() or (m <= 0).any() or not np.isfinite(acc).all():
        raise ValueError("labels and n_eval must be positive and accuracies finite")
    a, b, c, _ = _fit_many(n, acc[None], _weights(acc, m)[None])
    return PowerLaw(float(a[0]), float(b[0]), float(c[0]))


@dataclass(frozen=True)
class Inversion:
    labels: float | None   # None: the curve never reaches the accuracy
    low: float | None
    high: float | None     # None: unbounded (some refits never reach it)
    curve: PowerLaw
    overdispersion: float


def random_labels_needed(labels: Sequence[float], correct: Sequence[int], n_eval: Sequence[int],
                         accuracy_now: float, n_now: int, *, reps: int = 400, seed: int = 0,
                         level: float = 0.95) -> Inversion:
    """Labels random picking needs for `accuracy_now` (measured on n_now images), with a bootstrap interval."""
    n = np.asarray(labels, np.float64)
    m = np.asarray(n_eval, np.float64)
    acc = np.asarray(correct, np.float64) / m
    curve = fit_power_law(n, acc, m)
    w = _weights(acc, m)
    # The scatter of the points around the curve beyond their binomial error (training noise of
    # the shadow models): the bootstrap widens every point's error by it.
    dof = len(n) - 3
    chi2 = float((w * (acc - curve(n)) ** 2).sum())
    phi = max(1.0, chi2 / dof) if dof > 0 else 1.0
    rng = np.random.default_rng(seed)
    sd = np.sqrt(phi / w)
    acc_b = np.clip(acc[None] + rng.standard_normal((reps, len(n))) * sd[None], 0.0, 1.0)
    a, b, c, _ = _fit_many(n, acc_b, _weights(acc_b, np.broadcast_to(m, acc_b.shape)))
    p_now = min(max(accuracy_now, 0.5 / max(n_now, 1)), 1 - 0.5 / max(n_now, 1))
    # The current model is one training too: its accuracy gets the same widening as the points.
    now_b = accuracy_now + rng.standard_normal(reps) * math.sqrt(phi * p_now * (1 - p_now) / max(n_now, 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        need = np.where(now_b >= a, np.inf,
                        np.where(b <= 0, 0.0, np.power(b / np.maximum(a - now_b, 1e-12), 1.0 / c)))
    need = np.sort(need)  # inf sorts last: a quantile that lands on it is unbounded
    lo_q, hi_q = (float(need[min(reps - 1, max(0, int(math.floor(q * reps))))])
                  for q in ((1 - level) / 2, 1 - (1 - level) / 2))
    # The shape beyond the random labels is an assumption: the same draws fitted with a curve that
    # never saturates, acc = α + β·ln n, give the other end of what a learning curve may do. The
    # interval is the envelope of both (the verdict claims a gain only when both shapes agree).
    x = np.log(n)
    wb = _weights(acc_b, np.broadcast_to(m, acc_b.shape))
    sw = wb.sum(1)
    xm = (wb * x[None]).sum(1) / sw
    ym = (wb * acc_b).sum(1) / sw
    beta = (wb * (x[None] - xm[:, None]) * (acc_b - ym[:, None])).sum(1) / np.maximum(
        (wb * (x[None] - xm[:, None]) ** 2).sum(1), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_need = np.where(beta > 0, np.exp(xm + (now_b - ym) / np.where(beta > 0, beta, 1.0)), np.inf)
    log_need = np.sort(np.where(np.isnan(log_need), np.inf, log_need))
    lo_l, hi_l = (float(log_need[min(reps - 1, max(0, int(math.floor(q * reps))))])
                  for q in ((1 - level) / 2, 1 - (1 - level) / 2))
    lo_q, hi_q = min(lo_q, lo_l), max(hi_q, hi_l)
    point = curve.labels_for(accuracy_now)
    fin = lambda v: None if not math.isfinite(v) else float(v)  # noqa: E731
    return Inversion(fin(point), fin(lo_q) if math.isfinite(lo_q) else None, fin(hi_q), curve, phi)


# ----------------------------------------------------------------------------- the verdict

PAYING_OFF, NOT_PAYING_OFF, TOO_EARLY = "paying_off", "not_paying_off", "too_early"


@dataclass(frozen=True)
class AuditRules:
    min_rounds: int = 3          # trained rounds before a verdict
    min_points: int = 3          # distinct random-label sizes measured
    min_random_labels: int = 20  # random labels (the largest shadow set) before a verdict


def audit(points: Sequence[dict], labels_now: int, accuracy_now: dict, *, rounds: int, random_labels: int,
          rules: AuditRules = AuditRules(), reset_at_round: int | None = None, seed: int = 0) -> dict:
    """The audit section of the metrics (docs/design.md, issue 22).

    points: the random curve's measurements, {"labels", "correct", "n"} (several per size are
    pooled); accuracy_now: {"correct", "n", "on"} of the current model on the same kind of
    evidence; labels_now: the labels the current model trained on; rounds: trained rounds."""
    by: dict[int, list[int]] = {}
    for p in points:
        if int(p["n"]) > 0 and int(p["labels"]) > 0:
            c = by.setdefault(int(p["labels"]), [0, 0])
            c[0] += int(p["correct"])
            c[1] += int(p["n"])
    sizes = sorted(by)
    curve = []
    for s in sizes:
        c, m = by[s]
        lo, hi = wilson(c, m)
        curve.append({"labels": s, "accuracy": c / m, "low": lo, "high": hi, "n": m})
    nc, nn = int(accuracy_now.get("correct", 0)), int(accuracy_now.get("n", 0))
    acc = nc / nn if nn else None
    lo, hi = wilson(nc, nn) if nn else (None, None)
    out = {"labels_now": int(labels_now), "random_labels": int(random_labels),
           "accuracy_now": {"value": acc, "low": lo, "high": hi, "on": accuracy_now.get("on"), "n": nn},
           "random_curve": curve, "random_would_need": None, "labels_saved": None, "fit": None,
           "verdict": TOO_EARLY, "advice": "", "reset_at_round": reset_at_round}
    short = []
    if rounds < rules.min_rounds:
        short.append(f"{rounds} of {rules.min_rounds} rounds trained")
    if len(sizes) < rules.min_points:
        short.append(f"{len(sizes)} of {rules.min_points} random-label sizes measured")
    if random_labels < rules.min_random_labels:
        short.append(f"{random_labels} of {rules.min_random_labels} random labels")
    if acc is None:
        short.append("no unbiased accuracy of the current model")
    if short:
        out["advice"] = ("too early to tell whether active learning pays off here: " + "; ".join(short)
                         + ". Keep labeling; the control slice adds random labels every round.")
        return out
    inv = random_labels_needed(sizes, [by[s][0] for s in sizes], [by[s][1] for s in sizes], acc, nn, seed=seed)
    out["fit"] = {"a": inv.curve.a, "b": inv.curve.b, "c": inv.curve.c, "overdispersion": inv.overdispersion}
    out["random_would_need"] = {"labels": _round(inv.labels), "low": _round(inv.low), "high": _round(inv.high)}
    sub = lambda v: None if v is None else _round(v - labels_now)  # noqa: E731
    saved = {"labels": sub(inv.labels), "low": sub(inv.low), "high": sub(inv.high)}
    out["labels_saved"] = saved
    verdict, advice = judge(saved, labels_now)
    out["verdict"], out["advice"] = verdict, advice
    return out


def _round(v: float | None) -> int | None:
    return None if v is None else int(round(v))


def judge(saved: dict, labels_now: int) -> tuple[str, str]:
    """The verdict on labels saved {labels, low, high} (None: unbounded above, or below for low)."""
    low, high, mid = saved.get("low"), saved.get("high"), saved.get("labels")
    span = f"{_fmt(low, '−∞')} to {_fmt(high, '+∞')}"
    if low is not None and low > 0:
        point = f"about {mid:,}" if mid is not None else "more than random would reach"
        return PAYING_OFF, (f"active learning is paying off: random picking would have needed {point} more "
                            f"labels for this accuracy (95 % interval {span} of the {labels_now:,} used). "
                            "Keep the strategy.")
    if high is not None and high < 0:
        return NOT_PAYING_OFF, (f"active learning is behind random here: random picking would have reached this "
                                f"accuracy with fewer labels ({span} saved, i.e. lost). Set `strategy: random` "
                                "for the next rounds; if the accuracy has plateaued (see the stopping signal), stop.")
    return NOT_PAYING_OFF, (f"no gain over random picking can be shown: labels saved {span} (the interval covers "
                            "no gain). Set `strategy: random` (as good here, and every label then also measures "
                            "the random curve), or a smaller batch (each pick then made by a model that knows "
                            "more); stop when the stopping signal says so.")


def _fmt(v, none: str) -> str:
    return none if v is None else f"{v:+,}"

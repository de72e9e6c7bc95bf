"""Class exclusion: give up (for now) on a class that the model cannot learn, so the remaining
classes learn faster; an engineer can bring it back. Two rules, pure math (no I/O):

EvidenceRule (the default): a class is hopeless when the held-out evidence says, with stated
confidence, that it is no better than a blind guess and not getting better. At round r, over
the class's last `patience + 1` evaluated rounds (its window), with k_i correct out of n_i
held-out images in round x_i (counts, not rounded accuracies):

  (a) no better than chance — in every round of the window, the upper end of the two-sided
      Wilson score interval at `confidence` on the accuracy k_i/n_i is at most the chance line
      `chance_margin / K`, K = the number of active classes (a blind guess among them is right
      1/K of the time). The Wilson interval (Wilson 1927) keeps its coverage at k = 0 and small
      n, where the normal interval collapses to a point: 0/10 at 95 % has upper end 0.2775, so
      ten wrong images never exclude a class among ten or fewer. Every round, not only the
      latest: a class that was clearly above chance inside the window has been learned by some
      model, and a later collapse (seen on small models: Shirt 31/60 → 6/60 → 0/60 while the
      model was still unstable) says the model forgot it, not that it cannot be learned. The
      rounds are not pooled: they are usually read on the same validation images (or on a
      holdout that only grows), so pooling would count the same images several times.
  (b) flat — a weighted least-squares line through (x_i, k_i/n_i), weights 1/Var_i with the
      binomial variance Var_i = p~(1 - p~)/n_i, p~ = (k_i + 1)/(n_i + 2) (one success and one
      failure added, so a round at 0/n or n/n still has a variance). Its slope b has the
      standard error SE = (sum w_i (x_i - xw)^2)^(-1/2), xw the weighted mean round, from the
      known variances (numpy.polyfit(..., w=1/sd, cov="unscaled") gives the same). The class is
      flat when the slope is not significantly above `min_rise` per round:
      b - z * SE <= min_rise, z the same one-sided quantile as (a)'s upper end.

  (c) never learned — in no evaluated round since the start (or the re-inclusion) was the lower
      end of its Wilson interval above the chance line. A class some model has demonstrably
      learned is learnable; that the models of the window lost it (seen on 3-epoch models:
      Coat 39/60, then 0/60, 1/60, 0/60) is the models' failure, not the class's.

  Excluded when (a), (b) and (c) hold. A slow learner stays: above chance it fails (a) (Shirt
  at 0.28-0.48 among 11 classes is three times chance), near chance but clearly rising it fails
  (b). A class with little evidence stays: its interval is wide (0/25 at 90 % reaches 0.098).
  Rounds are assumed independent for the slope's SE; read on the same images they are
  positively correlated, so the true SE is smaller and a real rise is, if anything, detected
  less often than the stated confidence says — (a) is the guard that carries the weight.

ThresholdRule (the rule before issue 15, kept to compare): excluded when the last `patience + 1`
accuracies are all below `exclude_below` and the latest is not `min_gain` above the first.
Gains are compared with a tolerance of 1e-9, so a gain of one image in a hundred counts as
0.01 (0.28 -> 0.29 is 0.00999999... in floats and used not to).

Both: no class before a window of `patience + 1` evaluated rounds exists; never fewer than
`min_active` active classes (the worst candidates go first). Re-inclusion, designed
explicitly: when an engineer brings a class back at round r0 (`reincluded_at`), only rounds
>= r0 count, so it cannot be excluded again before a fresh full window after r0 shows it
failing with the engineer's new labels. `decide` never re-includes a class by itself: bringing a
class back is a person's call.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

GAIN_TOLERANCE = 1e-9


def z_value(confidence: float) -> float:
    """The normal quantile of a two-sided interval at `confidence` (0.95 → 1.96); its upper end
    is a one-sided bound at (1 + confidence) / 2."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval on a binomial proportion correct/total."""
    k, n = int(correct), int(total)
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got {k}/{n}")
    z = z_value(confidence)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def binomial_variance(correct: int, total: int) -> float:
    """Var of an accuracy k/n, from p~ = (k + 1)/(n + 2) so that 0/n and n/n have one."""
    p = (int(correct) + 1) / (int(total) + 2)
    return p * (1 - p) / int(total)


def weighted_slope(rounds: Sequence[float], correct: Sequence[int], total: Sequence[int]) -> tuple[float, float]:
    """(slope per round, its standard error) of accuracy k_i/n_i against round x_i, weighted
    least squares with the binomial variances (known, not rescaled by the residuals)."""
    if not len(rounds) == len(correct) == len(total) or len(rounds) < 2:
        raise ValueError("need at least two rounds, each with correct and total")
    x = [float(r) for r in rounds]
    y = [int(k) / int(n) for k, n in zip(correct, total)]
    w = [1.0 / binomial_variance(k, n) for k, n in zip(correct, total)]
    sw = sum(w)
    xw = sum(wi * xi for wi, xi in zip(w, x)) / sw
    yw = sum(wi * yi for wi, yi in zip(w, y)) / sw
    sxx = sum(wi * (xi - xw) ** 2 for wi, xi in zip(w, x))
    if sxx <= 0:
        raise ValueError(f"rounds must differ, got {list(rounds)}")
    slope = sum(wi * (xi - xw) * (yi - yw) for wi, xi, yi in zip(w, x, y)) / sxx
    return slope, 1.0 / math.sqrt(sxx)


@dataclass(frozen=True)
class Window:
    """The class's last evaluated rounds, with their held-out counts."""
    rounds: tuple[int, ...]
    correct: tuple[int, ...]
    total: tuple[int, ...]


def _check_status(current_status: Mapping[str, str]) -> None:
    for cls, status in current_status.items():
        if status not in ("active", "excluded"):
            raise ValueError(f"status of {cls!r} must be 'active' or 'excluded', got {status!r}")


def _decide_each(current_status: Mapping[str, str], judge_one, min_active: int) -> dict[str, tuple[bool, str]]:
    """Both rules' `decide`: an excluded class stays so (only a person brings it back); each
    active class is judged by `judge_one(cls)` → (how bad, reason) or None; then min_active."""
    _check_status(current_status)
    out: dict[str, tuple[bool, str]] = {}
    candidates: list[tuple[float, str, str]] = []
    for cls, status in current_status.items():
        if status == "excluded":
            out[cls] = (True, "stays excluded until an engineer includes it")
            continue
        out[cls] = (False, "")
        verdict = judge_one(cls)
        if verdict is not None:
            candidates.append((verdict[0], cls, verdict[1]))
    n_active = sum(1 for s in current_status.values() if s == "active")
    return _apply_min_active(out, candidates, n_active, min_active)


def _apply_min_active(out: dict, candidates: list[tuple[float, str, str]], n_active: int, min_active: int) -> dict:
    # Worst first; stop while at least `min_active` classes stay in the head.
    for _, cls, reason in sorted(candidates):
        if n_active <= min_active:
            out[cls] = (False, f"would be excluded ({reason}) but only {n_active} classes are active")
            continue
        out[cls] = (True, reason)
        n_active -= 1
    return out


@dataclass(frozen=True)
class EvidenceRule:
    patience: int = 2           # the window: the last patience + 1 evaluated rounds
    confidence: float = 0.9     # two-sided; (a)'s upper end and (b)'s lower end are one-sided 0.95
    chance_margin: float = 1.0  # the chance line is chance_margin / (active classes)
    min_rise: float = 0.0       # accuracy per round a significant rise must exceed to keep the class
    min_active: int = 2

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError("patience must be >= 1 (a slope needs two rounds)")
        z_value(self.confidence)
        if self.chance_margin <= 0:
            raise ValueError("chance_margin must be > 0")

    def decide(self, history: Mapping[str, Sequence[tuple[int, int, int]]], current_status: Mapping[str, str],
               reincluded_at: Mapping[str, int] | None = None) -> dict[str, tuple[bool, str]]:
        """{cls: (excluded, reason)} for every class in `current_status` ("active" | "excluded").

        history[cls]: (round, correct, total) of each evaluated round, oldest first; rounds
        with total 0 must be left out by the caller (no evidence is not a 0)."""
        reincluded_at = reincluded_at or {}
        n_active = sum(1 for s in current_status.values() if s == "active")
        chance = self.chance_margin / max(1, n_active)

        def judge_one(cls: str) -> tuple[float, str] | None:
            since = reincluded_at.get(cls)
            rows = [tuple(int(v) for v in h) for h in history.get(cls, []) if since is None or h[0] >= since]
            if len(rows) < self.patience + 1:
                return None
            if any(wilson_interval(k, n, self.confidence)[0] > chance + GAIN_TOLERANCE for _, k, n in rows):
                return None  # (c): some model learned it
            win = rows[-(self.patience + 1):]
            verdict = self.judge(Window(*map(tuple, zip(*win))), chance, n_active)
            if verdict is None or since is None:
                return verdict
            return verdict[0], verdict[1] + f", since an engineer re-included it at round {since}"

        return _decide_each(current_status, judge_one, self.min_active)

    def judge(self, w: Window, chance: float, n_active: int) -> tuple[float, str] | None:
        """(upper bound, reason) when the window shows a hopeless class, else None."""
        if any(n <= 0 for n in w.total):
            raise ValueError(f"every round of the window needs held-out images, got totals {w.total}")
        k, n = w.correct[-1], w.total[-1]
        upper = max(wilson_interval(ki, ni, self.confidence)[1] for ki, ni in zip(w.correct, w.total))
        if upper > chance + GAIN_TOLERANCE:
            return None
        slope, se = weighted_slope(w.rounds, w.correct, w.total)
        z = z_value(self.confidence)
        if slope - z * se > self.min_rise + GAIN_TOLERANCE:
            return None
        pct = f"{self.confidence * 100:g}%"
        margin = "" if self.chance_margin == 1.0 else f" ({self.chance_margin:g}/{n_active})"
        return upper, (
            f"held-out accuracy {k}/{n} = {k / n:.2f} ("
            + " → ".join(f"{a}/{b}" for a, b in zip(w.correct, w.total))
            + f" over rounds {w.rounds[0]}-{w.rounds[-1]}), {pct} upper bound at most {upper:.3f} <= chance "
            f"{chance:.3f}{margin} among {n_active} active classes; slope {slope:+.4f}/round ± {se:.4f}, "
            f"not significantly above {self.min_rise:g}/round (lower bound {slope - z * se:+.4f})")


@dataclass(frozen=True)
class ExclusionRule:
    """The threshold rule (before issue 15); `ThresholdRule` is the same class."""
    exclude_after: int = 3
    exclude_below: float = 0.5
    patience: int = 2
    min_gain: float = 0.01
    min_active: int = 2  # never exclude below this many active classes: a 1-class head learns nothing

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError("patience must be >= 1 (a window needs two points to show a gain)")
        if self.exclude_after < 0:
            raise ValueError("exclude_after must be >= 0")

    def decide(
        self,
        history: Mapping[str, Sequence[float]],
        round: int,
        current_status: Mapping[str, str],
        reincluded_at: Mapping[str, int] | None = None,
    ) -> dict[str, tuple[bool, str]]:
        """{cls: (excluded, reason)} for every class in `current_status` ("active" | "excluded")."""
        reincluded_at = reincluded_at or {}
        return _decide_each(current_status, lambda cls: self._judge(cls, list(history.get(cls, [])), round,
                                                                    reincluded_at.get(cls)), self.min_active)

    def _judge(self, cls: str, hist: list[float], rnd: int, since: int | None) -> tuple[float, str] | None:
        if rnd < self.exclude_after:
            return None
        hist = hist[: rnd + 1]
        first = 0 if since is None else since
        window_start = len(hist) - (self.patience + 1)
        if window_start < first:  # not enough rounds yet (since the start, or since re-inclusion)
            return None
        window = hist[window_start:]
        if any(math.isnan(a) for a in window):
            raise ValueError(f"validation accuracy history of {cls!r} contains NaN: {window}")
        gain = window[-1] - window[0]
        # The tolerance: accuracies are ratios of counts, and 0.29 - 0.28 is 0.00999... in floats.
        if max(window) < self.exclude_below and gain < self.min_gain - GAIN_TOLERANCE:
            rounds = f"rounds {window_start}-{len(hist) - 1}"
            return window[-1], (
                f"validation accuracy stayed below {self.exclude_below:.2f} over {rounds} "
                f"({' → '.join(f'{a:.3f}' for a in window)}); it gained {gain:+.4f}, "
                f"less than the {self.min_gain:.3f} that keeps a class"
                + (f" since an engineer re-included it at round {since}" if since is not None else "")
            )
        return None


ThresholdRule = ExclusionRule

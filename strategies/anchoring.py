"""Anchoring: does an expert agree with the model's guess more when they can see it?

For one expert, k_s of n_s answers equal the guess where it was shown and k_h of n_h where it
was hidden (a random control share of the images, so both groups are alike but for what the
expert saw). The gap is k_s/n_s − k_h/n_h. It is flagged when it is at least `gap` and
significant: the one-sided two-proportion z test (pooled variance) rejects "no larger when
shown" at `alpha`. Small groups (under `min_n` either side) are never flagged: the figures are
reported and `why` says so. Pure math, stdlib only.
"""
from __future__ import annotations

import math


def _upper_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def anchoring_gap(agree_shown: int, shown: int, agree_hidden: int, hidden: int, *, gap: float = 0.1,
                  alpha: float = 0.05, min_n: int = 10) -> dict:
    """{"rate_shown", "rate_hidden", "gap", "p_value", "flagged", "why"}."""
    for k, n in ((agree_shown, shown), (agree_hidden, hidden)):
        if n < 0 or k < 0 or k > n:
            raise ValueError(f"agreements must be between 0 and the answers: {k} of {n}")
    rs = agree_shown / shown if shown else None
    rh = agree_hidden / hidden if hidden else None
    out = {"rate_shown": rs, "rate_hidden": rh, "gap": None, "p_value": None, "flagged": False}
    if rs is None or rh is None:
        return {**out, "why": "no answers where the guess was " + ("shown" if rs is None else "hidden")}
    d = rs - rh
    pooled = (agree_shown + agree_hidden) / (shown + hidden)
    se = math.sqrt(pooled * (1 - pooled) * (1 / shown + 1 / hidden))
    p = (0.0 if d > 0 else 1.0) if se == 0 else _upper_tail(d / se)
    out.update(gap=d, p_value=p)
    if min(shown, hidden) < min_n:
        return {**out, "why": f"fewer than {min_n} answers on one side: not judged"}
    flagged = d >= gap and p < alpha
    why = (f"agrees {d:+.0%} more often when the guess is shown (p = {p:.3g})" if flagged else
           "no significant gap" if p >= alpha else f"gap under {gap:.0%}")
    return {**out, "flagged": flagged, "why": why}

"""Class exclusion: give up (for now) on a class that stays bad and does not improve, so the
remaining classes learn faster; an engineer can bring it back.

The rule, at round r (history[cls][i] = validation accuracy after round i, i = 0..r):
  a class is excluded when r >= exclude_after and its last `patience + 1` accuracies (a window
  spanning `patience` rounds) are all below `exclude_below` and the latest is not at least
  `min_gain` above the first of the window.

Re-inclusion, designed explicitly: when an engineer brings a class back at round r0 (passed in
`reincluded_at`), only accuracies from rounds >= r0 count. The class therefore cannot be
excluded again before it has a fresh full window after r0 — one that shows it failing again
with the engineer's new labels — and `decide` never reverses an engineer's choice on old data.
`decide` never re-includes a class by itself either: bringing a class back is a person's call.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ExclusionRule:
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
        out: dict[str, tuple[bool, str]] = {}
        candidates: list[tuple[float, str, str]] = []
        for cls, status in current_status.items():
            if status not in ("active", "excluded"):
                raise ValueError(f"status of {cls!r} must be 'active' or 'excluded', got {status!r}")
            if status == "excluded":
                out[cls] = (True, "stays excluded until an engineer includes it")
                continue
            verdict = self._judge(cls, list(history.get(cls, [])), round, reincluded_at.get(cls))
            if verdict is None:
                out[cls] = (False, "")
            else:
                latest, reason = verdict
                candidates.append((latest, cls, reason))
                out[cls] = (False, "")
        n_active = sum(1 for s in current_status.values() if s == "active")
        # Worst first; stop while at least `min_active` classes stay in the head.
        for latest, cls, reason in sorted(candidates):
            if n_active <= self.min_active:
                out[cls] = (False, f"would be excluded ({reason}) but only {n_active} classes are active")
                continue
            out[cls] = (True, reason)
            n_active -= 1
        return out

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
        if max(window) < self.exclude_below and gain < self.min_gain:
            rounds = f"rounds {window_start}-{len(hist) - 1}"
            return window[-1], (
                f"validation accuracy {window[-1]:.2f} stayed below {self.exclude_below:.2f} over {rounds} "
                f"and gained {gain:+.3f} (< {self.min_gain:.3f})"
                + (f" since an engineer re-included it at round {since}" if since is not None else "")
            )
        return None

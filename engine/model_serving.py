"""Which trained model is in use: the one that scores the next round (so makes the guesses the
experts see pre-selected, and the heatmaps) and answers predictions.

Torch-free and store-free: the service feeds it its model versions (service.core.models), and
it answers with a version and the reason, which the round's progress and the API show.

  * a pinned version is in use, whatever came after it, until it is unpinned;
  * otherwise the newest model replaces the one in use, except with `keep_best_model`, where a
    model that is worse on the evidence beyond the noise does not: its accuracy's Wilson upper
    bound (KEEP_BEST_CONFIDENCE, two-sided) lies below the accuracy of the model in use. A model
    with no evidence (nothing held out) is not judged and replaces the one in use, as without the
    setting: a decision is never taken on missing evidence.

Each model's accuracy is the one its own round measured (the validation split, or the held-out
labeled images of that round, which grow with the labels): the figures the metrics show.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

KEEP_BEST_CONFIDENCE = 0.9


@dataclass(frozen=True)
class VersionEvidence:
    version: int
    round: int
    correct: int       # evidence images the model got right (over the classes it was trained on)
    total: int         # evidence images
    pinned: bool = False

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None


@dataclass(frozen=True)
class InUse:
    version: int | None        # None: no model yet
    why: str                   # "pinned" | "latest" | "kept_best" | "none"
    note: str                  # one sentence a person reads

    def as_dict(self) -> dict:
        return {"version": self.version, "why": self.why, "note": self.note}


def worse_beyond_noise(new: VersionEvidence, incumbent: VersionEvidence,
                       confidence: float = KEEP_BEST_CONFIDENCE) -> tuple[bool, str]:
    """(new is worse than incumbent beyond the noise of its interval, why in words)."""
    from strategies.exclusion import wilson_interval

    if not new.total or not incumbent.total:
        return False, f"version {new.version} not compared: no evidence" + ("" if new.total else " for it")
    lo, hi = wilson_interval(new.correct, new.total, confidence)
    acc_in = incumbent.accuracy
    words = (f"version {new.version}: {new.correct}/{new.total} = {new.accuracy:.3f} on its evidence, "
             f"{int(confidence * 100)} % interval [{lo:.3f}, {hi:.3f}]; version {incumbent.version}: "
             f"{incumbent.correct}/{incumbent.total} = {acc_in:.3f}")
    return hi < acc_in, words


def model_in_use(versions: Sequence[VersionEvidence], keep_best: bool,
                 confidence: float = KEEP_BEST_CONFIDENCE) -> InUse:
    """The version in use after all of `versions` (any order; sorted by version here)."""
    ordered = sorted(versions, key=lambda v: v.version)
    pinned = [v for v in ordered if v.pinned]
    if pinned:
        v = pinned[-1]
        return InUse(v.version, "pinned", f"version {v.version} (round {v.round}) is pinned")
    if not ordered:
        return InUse(None, "none", "no model has been trained yet")
    incumbent, why, note = ordered[0], "latest", f"version {ordered[0].version} is the newest model"
    for v in ordered[1:]:
        if keep_best:
            worse, words = worse_beyond_noise(v, incumbent, confidence)
            if worse:
                why, note = "kept_best", f"kept version {incumbent.version}: the newer one is worse beyond the " \
                                         f"noise ({words})"
                continue
        incumbent, why, note = v, "latest", f"version {v.version} is the newest model"
    return InUse(incumbent.version, why, note)

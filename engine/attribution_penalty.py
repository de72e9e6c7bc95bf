"""Which training images a round's attribution penalty acts on (config feedback.penalty, issue 25).

"Right for the right reasons" (Ross, Hughes & Doshi-Velez, IJCAI 2017): where the object's
region of an image is known and an expert said the model looked elsewhere, the loss gains a term
that penalises the model's sensitivity to what lies outside the region. The images are those
the round's counterexamples would cover (engine.step.feedback_copies: the flagged images with a
region, and the swap feedback's while it acts) that the round trains on with an active class;
the term itself is computed in the train job (workers.attribution). numpy only: the API process
plans it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.contracts import ImageRefs, PenaltySpec
from engine.counterexamples import trained_rows


def plan(train: ImageRefs, images: Mapping[int, Sequence[int]], active: Sequence[bool],
         weight: float, at: str = "trained") -> PenaltySpec | None:
    """The round's PenaltySpec (None: off, or no image to act on)."""
    if weight <= 0 or not images:
        return None
    rows = trained_rows(train, images, active)
    if not rows:
        return None
    ids = [int(train.item_ids[k]) for k in rows]
    return PenaltySpec(item_ids=ids, boxes=[[int(v) for v in images[i]] for i in ids], weight=float(weight),
                       at=at)

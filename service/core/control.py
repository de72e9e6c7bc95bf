"""The random control slice's estimates from the store (docs/design.md, "The random control slice").

A round's estimate counts its control queue entries (batch, not reserve, with a guess: a cold
start's random entries guessed nothing) whose item is labeled *now*, with the item's current
label against the entry's `pred` (the guess of the model that chose the batch, before any model
trained on the image): a relabel or a second opinion counts once, as its final answer; a label
Label Studio retracted drops out until the image is labeled again. Skipped and quarantined
control images are left out and counted as `missing`; one still waiting for an expert as
`waiting`. The math is strategies.audit's; the evidence rule that reads these is engine.control.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.config import ControlConfig
from engine.control import window
from service.store import Item, ItemStatus, QueueEntry, Round
from strategies.audit import control_estimate, pool_estimates


def round_estimates(s: Session, project_id: int, class_names: list[str]) -> list[dict]:
    """Every round's control estimate, oldest first (rounds without control entries left out)."""
    rows = s.execute(
        select(Round.number, Round.scored_by_id, Round.model_version_id, QueueEntry.pred, Item.status, Item.label)
        .join(QueueEntry, QueueEntry.round_id == Round.id).join(Item, Item.id == QueueEntry.item_id)
        .where(Round.project_id == project_id, QueueEntry.control.is_(True), QueueEntry.reserve.is_(False),
               QueueEntry.pred.is_not(None))
        .order_by(Round.number, QueueEntry.rank)).all()
    by_round: dict[int, dict] = {}
    for number, scored_by, mv, pred, status, label in rows:
        r = by_round.setdefault(int(number), {"model": scored_by or mv, "pairs": [], "missing": 0, "waiting": 0})
        if status == ItemStatus.LABELED and label is not None:
            r["pairs"].append((pred, label))
        elif status in (ItemStatus.SKIPPED, ItemStatus.QUARANTINED):
            r["missing"] += 1
        else:
            r["waiting"] += 1
    out = []
    for number, r in sorted(by_round.items()):
        e = control_estimate(r["pairs"], class_names, number, r["model"])
        e.update(missing=r["missing"], waiting=r["waiting"])
        out.append(e)
    return out


def summary(estimates: list[dict], config: ControlConfig, class_names: list[str], next_round: int) -> dict | None:
    """GET /metrics → control: {"share", "rounds", "pooled"} (None before any control entry).
    `pooled`: the rounds the evidence of round `next_round` would read (engine.control.window)."""
    if not estimates:
        return None
    w = window(estimates, next_round, config)
    pooled = pool_estimates(w, class_names) if w else None
    if pooled is not None:
        pooled["min_per_class"] = config.min_per_class
    return {"share": config.share, "min_per_round": config.min_per_round, "rounds": estimates, "pooled": pooled}

"""The audit of the lift from the rounds' shadow measurements (issue 22): what `camloop simulate`
puts in each round's record and the service in metrics["audit"].

Each trained round's metrics may hold "shadow" (workers.shadow): points of the project's random
learning curve (labels, correct, n) and the round's own model on the same evidence. The audit
pools the points of every round since the last reset (they all measure the one random curve; a
size measured twice is pooled) and asks strategies.audit for the labels random picking would
have needed for the current model's accuracy, with its interval and the verdict.
"""
from __future__ import annotations

from collections.abc import Sequence

from engine.config import ProjectConfig
from strategies.audit import AuditRules, audit


def round_audit(config: ProjectConfig, shadows: Sequence[dict | None], *, rounds: int, labels_now: int,
                random_labels: int, reset_at_round: int | None = None) -> dict | None:
    """The audit after the latest of `shadows` (every trained round's metrics["shadow"] since the
    reset, oldest first; None where a round measured nothing). None when the audit is off or the
    latest round measured nothing (no random labels, or none held out to evaluate on)."""
    if not config.audit.enabled or not shadows or not shadows[-1] or not shadows[-1].get("current"):
        return None
    last = shadows[-1]
    points = [p for s in shadows if s and s.get("on") == last["on"] for p in s.get("points", [])]
    rules = AuditRules(config.audit.min_rounds, config.audit.min_points, config.audit.min_random_labels)
    now = {**last["current"], "on": last["on"]}
    return audit(points, labels_now, now, rounds=rounds, random_labels=random_labels, rules=rules,
                 reset_at_round=reset_at_round, seed=config.seed)

"""The audit of the lift from the rounds' shadow measurements (issue 22): what `camloop simulate`
puts in each round's record and the service in metrics["audit"].

Each trained round's metrics may hold "shadow" (workers.shadow): points of the project's random
learning curve (labels, correct, n) and the round's own model on the same evidence. The audit
pools the points of every round since the last reset (they all measure the one random curve; a
size measured twice is pooled) and asks strategies.audit for the labels random picking would
have needed for the current model's accuracy, with its interval and the verdict.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from engine.config import ProjectConfig
from strategies.audit import AuditRules, audit


def round_audit(config: ProjectConfig, shadows: Sequence[dict | None], *, rounds: int, labels_now: int,
                random_labels: int, reset_at_round: int | None = None,
                round_numbers: Sequence[int] | None = None) -> dict | None:
    """The audit after the latest of `shadows` (every trained round's metrics["shadow"] of the
    project, oldest first; None where a round measured nothing; `round_numbers` their rounds, when
    not 1, 2, …). None when the audit is off or the
    latest round measured nothing (no random labels, or none held out to evaluate on)."""
    if not config.audit.enabled or not shadows or not shadows[-1] or not shadows[-1].get("current"):
        return None
    last = shadows[-1]
    # A change of the network, its training or the classes it answers (the shadow's "key") makes
    # the earlier points another curve: the audit starts again from the first round of the latest
    # key and says so. A change of strategy or budget does not: random labels stay random, and
    # labels and accuracy are the project's cumulative facts.
    start = 0
    for i in range(len(shadows) - 1, -1, -1):
        s = shadows[i]
        if s and s.get("key") != last.get("key"):
            start = i + 1
            break
    if start and reset_at_round is None:
        reset_at_round = start + 1 if round_numbers is None else round_numbers[start]
    kept = shadows[start:]
    points = [p for s in kept if s and s.get("on") == last["on"] for p in s.get("points", [])]
    rules = AuditRules(config.audit.min_rounds, config.audit.min_points, config.audit.min_random_labels)
    now = {**last["current"], "on": last["on"]}
    return audit(points, labels_now, now, rounds=len(kept) if start else rounds, random_labels=random_labels,
                 rules=rules, reset_at_round=reset_at_round, seed=config.seed)


def curve_key(manifest) -> str:
    """What a point of the random curve depends on besides the labels (a TrainManifest's network,
    how it trains, the classes it answers, what it is evaluated on; not the seed or the batch,
    which follow the round and the labels). Points of another key are another curve."""
    st = manifest.settings.model_dump()
    key = {"net": {k: v for k, v in manifest.net.model_dump().items() if k != "class_names"},
           "settings": {k: v for k, v in st.items() if k not in ("seed", "batch_size")},
           "active": list(manifest.active), "evaluated_on": manifest.evidence_source}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def measured_sizes(shadows: Sequence[dict | None], key: str) -> list[int]:
    """The random-label set sizes earlier rounds measured on the curve of `key`."""
    return sorted({int(p["labels"]) for s in shadows if s and s.get("key") == key for p in s.get("points", [])})

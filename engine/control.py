"""The control slice as evidence: what the exclusion rule, the class budget and the metrics read
when no validation split is registered (docs/design.md, "The random control slice").

A round's control labels are the batch images drawn uniformly (engine.selection.control_slice),
each compared with the guess of the model that chose the batch (strategies.audit). The evidence
of round r's model, for its exclusion decision and its batch's class budget, is, per class:

- the control labels of the `control.rounds` latest rounds before r, pooled (each against the
  guess of the model that chose it), when the class has at least `control.min_per_class` of
  them: unbiased for the pool still unlabeled, but of the models before r (it lags a round and,
  while the models improve, leans low);
- else round r's held-out labeled images (biased: the strategy picked them because they were
  hard, by an amount nobody knows).

A registered validation split is never replaced: it is unbiased and of model r itself. Pure:
numpy-free, no I/O; the service and `camloop simulate` both pass their rounds' estimates.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.config import ControlConfig
from engine.decisions import Evidence
from strategies.audit import class_counts, pool_estimates

CONTROL, HOLDOUT, MIXED = "control", "holdout", "control+holdout"


def window(estimates: Sequence[Mapping], number: int, config: ControlConfig) -> list[Mapping]:
    """The estimates pooled for round `number`'s evidence: the `config.rounds` latest rounds
    before it that have control labels."""
    before = sorted((e for e in estimates if e.get("round") is not None and int(e["round"]) < int(number)
                     and int(e.get("n") or 0) > 0), key=lambda e: int(e["round"]))
    return before[-int(config.rounds):]


def with_control(evidence: Evidence | None, estimates: Sequence[Mapping], number: int, config: ControlConfig,
                 class_names: Sequence[str]) -> Evidence | None:
    """Round `number`'s evidence with the pooled control labels read first (module doc).

    Only held-out labeled evidence (or none yet) is replaced; a validation split stands. The
    answer's `source` says which: "control", "holdout", "control+holdout" (per class in
    `control_classes`)."""
    if evidence is not None and evidence.source not in (HOLDOUT, "none"):
        return evidence
    pooled = window(estimates, number, config)
    if not pooled:
        return evidence
    c_correct, c_total = class_counts(pooled, class_names)
    names = list(class_names)
    base_correct = dict(evidence.correct) if evidence is not None else {}
    base_total = dict(evidence.total) if evidence is not None else {}
    use = [n for n in names if c_total.get(n, 0) >= config.min_per_class]
    if not use:
        return evidence
    correct = {n: (c_correct[n] if n in use else int(base_correct.get(n, 0))) for n in names}
    total = {n: (c_total[n] if n in use else int(base_total.get(n, 0))) for n in names}
    others = [n for n in names if n not in use and total[n] > 0]
    return Evidence(int(number) if evidence is None else evidence.round, correct, total,
                    CONTROL if not others else MIXED, tuple(use), tuple(int(e["round"]) for e in pooled))


def history_with_control(history: Sequence[Evidence], estimates: Sequence[Mapping], config: ControlConfig,
                         class_names: Sequence[str]) -> list[Evidence]:
    """Every evaluated round's evidence as with_control makes it (each round from the control
    labels before it)."""
    return [with_control(e, estimates, e.round, config, class_names) for e in history]


def pooled(estimates: Sequence[Mapping], number: int, config: ControlConfig, class_names: Sequence[str]) -> dict | None:
    """The pooled estimate the evidence of round `number` reads (None: no control labels yet)."""
    w = window(estimates, number, config)
    return pool_estimates(w, class_names) if w else None

"""Where other parts plug into the round engine (the Label Studio bridge does), without the
engine importing them. Hooks run after the transition is committed; their failures are logged,
never fatal to the round."""
from __future__ import annotations

import logging
from typing import Callable

from service.settings import Settings

log = logging.getLogger("camloop.rounds")

Hook = Callable[[Settings, int, int], None]            # (settings, project id, round number)
TransitionHook = Callable[[Settings, int, int, str], None]  # … and the state it entered

_labeling: list[Hook] = []
_transition: list[TransitionHook] = []
# (session, project) → {guessed class: (wrong-region votes, votes)}: the experts' evidence that
# the model looks at the wrong region when it guesses that class (the Label Studio bridge's ledger).
WrongRegionSource = Callable[[object, object], dict[str, tuple[int, int]]]
_wrong_region: list[WrongRegionSource] = []


def on_labeling(fn: Hook) -> Hook:
    """fn(settings, project_id, round_number), once when a round reaches `labeling` (its queue
    entries are committed). The Label Studio bridge pushes the batch here."""
    if fn not in _labeling:
        _labeling.append(fn)
    return fn


def on_transition(fn: TransitionHook) -> TransitionHook:
    """fn(settings, project_id, round_number, new_state) after every transition this process won
    (what experts are told while they wait: training, scoring, the next batch)."""
    if fn not in _transition:
        _transition.append(fn)
    return fn


def run(settings: Settings, pid: int, number: int, entered: list[str]) -> None:
    for state in entered:
        for fn in list(_transition):
            _call(fn, settings, pid, number, state)
        if state == "labeling":
            for fn in list(_labeling):
                _call(fn, settings, pid, number)


def _call(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 — a bridge outage must not stop the loop
        log.exception("round hook %r failed for project %s round %s", fn, args[1], args[2])


def wrong_region_source(fn: WrongRegionSource) -> WrongRegionSource:
    """fn(session, project) → {guessed class: (flagged, reviewed)}: read when a round shares its
    budget between classes (engine.decisions.class_quota), so a class whose guesses the
    experts often flag gets more of the batch."""
    if fn not in _wrong_region:
        _wrong_region.append(fn)
    return fn


def wrong_region_counts(s, project, class_names: list[str]):
    """(flagged, reviewed) per class in head order, summed over the sources; None without votes.
    A source that fails is logged and left out (inside a savepoint: the round's transaction stays usable)."""
    import numpy as np

    index = {n: i for i, n in enumerate(class_names)}
    flagged, reviewed = np.zeros(len(class_names)), np.zeros(len(class_names))
    for fn in list(_wrong_region):
        try:
            with s.begin_nested():
                counts = fn(s, project) or {}
        except Exception:  # noqa: BLE001 — the votes are extra evidence; the round goes on without them
            log.exception("wrong-region source %r failed for project %s", fn, project.id)
            continue
        for name, (f, r) in counts.items():
            if name in index:
                flagged[index[name]] += int(f)
                reviewed[index[name]] += int(r)
    return (flagged, reviewed) if reviewed.sum() > 0 else None

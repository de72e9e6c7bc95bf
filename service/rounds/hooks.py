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

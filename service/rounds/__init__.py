"""The round engine on the service side.

    state.py       the states, the allowed transitions (one table), compare-and-set
    handlers.py    one handler per state: the store's facts in, engine's decisions out
    inputs.py      what the engine needs from the store, as the engine's types
    jobs.py        the jobs of a round: deterministic RQ ids, (re-)enqueueing, state
    lifecycle.py   start (idempotent), retry, close
    reconciler.py  advance a round as far as the facts allow; the background loop; the requests' nudge
    progress.py    what a round's timing says about the next one (the experts' "next batch in about …")
    freeze.py      the project's freeze report: a worker job built like a round's
    hooks.py       what the round tells the plug-ins (service.plugins) and asks of them
"""
from service.rounds.lifecycle import close, get_round, retry_round, start_round  # noqa: F401
from service.rounds.reconciler import Reconciler, advance, advance_project, nudge, reconcile_all  # noqa: F401
from service.rounds.state import RoundState  # noqa: F401

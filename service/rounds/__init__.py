"""The round engine on the service side.

    state.py       the states, the allowed transitions (one table), compare-and-set
    handlers.py    one handler per state: the store's facts in, engine's decisions out
    inputs.py      what the engine needs from the store, as the engine's types
    jobs.py        the jobs of a round: deterministic RQ ids, (re-)enqueueing, state
    lifecycle.py   start (idempotent), retry, close
    reconciler.py  advance a round as far as the facts allow; the background loop
    hooks.py       where the Label Studio bridge plugs in
"""
from service.rounds.hooks import on_labeling, on_transition  # noqa: F401
from service.rounds.lifecycle import close, get_round, retry_round, start_round  # noqa: F401
from service.rounds.reconciler import Reconciler, advance, advance_project, reconcile_all  # noqa: F401
from service.rounds.state import RoundState  # noqa: F401

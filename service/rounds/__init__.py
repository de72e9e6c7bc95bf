"""The round engine on the service side: state machine, jobs, manifests, selection, reconciler."""
from service.rounds.machine import *  # noqa: F401,F403
from service.rounds.machine import (_Npz, _close, _ingest_state, _labeling_hooks, _select,  # noqa: F401
                                    advance, advance_project, on_labeling, reconcile_all, start_round)

"""What the round engine tells the plug-ins (service.plugins) and asks of them: the states a round
entered (the reconciler, after its transaction), the experts' wrong-region votes (the class
budget of a selection), the images they flagged with their regions (the counterexamples of
a round's training) and the labels several of them agreed on (relabel.prune keeps those). The
engine never names a plug-in."""
from __future__ import annotations

from service.plugins import round_entered as run  # noqa: F401  (reconciler: after a transition)
from service.plugins import wrong_region_votes as wrong_region_counts  # noqa: F401  (handlers: select_batch)
from service.plugins import flagged_regions  # noqa: F401  (handlers: on_created, the counterexamples)
from service.plugins import confirmed_labels  # noqa: F401  (inputs: labels relabel.prune keeps)

"""engine.records: a round's progress as a model (what the handlers build and branch on)."""
from __future__ import annotations

import pytest

from engine.records import RoundProgress


def test_progress_keeps_only_the_keys_set_and_what_it_does_not_know():
    p = RoundProgress.of({"stage": "training", "n_train": 90, "written_by_a_later_version": [1, 2]})
    assert p.cold_start is None and p.n_train == 90
    q = p.but(stage="scoring", shards=3, shards_done=0, class_quota={"a": 2})
    assert q.dump() == {"stage": "scoring", "n_train": 90, "shards": 3, "shards_done": 0, "class_quota": {"a": 2},
                        "written_by_a_later_version": [1, 2]}
    assert p.dump() == {"stage": "training", "n_train": 90, "written_by_a_later_version": [1, 2]}  # unchanged
    assert RoundProgress.of(None).dump() == {}


def test_a_misspelt_or_mistyped_key_never_reaches_the_store():
    with pytest.raises(KeyError, match="cold_strat"):
        RoundProgress().but(cold_strat=True)
    with pytest.raises(ValueError):
        RoundProgress().but(shards="many")

"""The load test, small: annotators posting labels (with retries and relabels) while a
dashboard polls GET /metrics with a read-only key and a round trains on a real worker; then
the store is checked against what every client was told. Zero labels lost, zero counted twice,
no 5xx. No timing assertions: latency figures come from bench/load_annotators.py (docs/reliability.md).
"""
from __future__ import annotations


import pytest

from tests.bench_module import load_bench

pytestmark = pytest.mark.slow



def _bench():
    return load_bench("load_annotators")


@pytest.mark.parametrize("db", ["postgresql", "sqlite"])
def test_annotators_dashboard_and_training_no_label_lost_or_counted_twice(db, tmp_path):
    out = _bench().run(annotators=12, dashboard_rps=20, seconds=8, db=db, seed_labels=300, epochs=3,
                       think=(0.2, 0.8), root=tmp_path / "stack")
    check = out["check"]
    assert out["round"]["state_at_start"] == "training" and out["round"]["error"] is None, out["round"]
    assert out["labels_endpoint"]["requests"] >= 12 and out["metrics_endpoint"]["requests"] >= 20
    for ep in ("labels_endpoint", "metrics_endpoint"):
        assert not [s for s in out[ep]["statuses"] if s.startswith("5")], out[ep]["statuses"]
    assert out["server_log_500s"] == 0
    assert check["acknowledged_client_ids"] > 0
    assert check["lost"] == 0 and check["double_counted"] == 0, check
    assert check["stored_but_never_acknowledged"] == 0 and check["stored_with_other_item_or_class"] == 0, check
    assert check["stored_api_labels"] == check["acknowledged_client_ids"], check
    assert check["immediate_duplicate_deliveries"] > 0 and check["duplicates_counted_as_new"] == 0, check
    assert check["metrics_labeled"] == check["pool_items_labeled"] == check["metrics_per_class_sum"], check
    assert check["items_with_labels_not_marked_labeled"] == 0 and check["items_whose_label_is_none_of_theirs"] == 0
    # Issue 19, item 11: the item row is locked before its label row is inserted, so "latest wins"
    # follows the label rows' order, not the order the transactions happened to commit in.
    assert check["items_whose_label_is_not_their_newest_row"] == 0, check


def test_slow_seconds_names_the_seconds_where_the_tail_lies():
    ep = _bench().Endpoint()
    # second 0: two slow; second 3: one slow of 90 ms; second 5: fast only
    for due, lat in [(0.1, 0.05), (0.7, 0.03), (0.9, 0.001), (3.2, 0.09), (3.5, 0.002), (5.0, 0.004)]:
        ep.record("200", lat, True, due)
    assert ep.slow_seconds() == [{"second": 0, "over_20ms": 2, "max_ms": 50.0},
                                 {"second": 3, "over_20ms": 1, "max_ms": 90.0}]
    assert ep.summary(6.0)["slow_seconds"] == ep.slow_seconds()

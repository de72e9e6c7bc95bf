"""bench/gatekeeper_leak.py: the share of a batch from the excluded classes, on a hand-made run."""
from __future__ import annotations


import pytest

from tests.bench_module import load_bench



def _bench():
    return load_bench("gatekeeper_leak")


def _record(number, labeled, status, selected=None, kept=0):
    rec = {"round": number, "labeled": sum(labeled.values()), "kept_out_as_excluded": kept,
           "per_class": {n: {"labeled": k, "status": status.get(n, "active")} for n, k in labeled.items()}}
    if selected is not None:
        rec["selected"] = selected
    return rec


def _run(variant="excl-threshold"):
    names = ["A", "B", "Other"]
    # Round 2 excludes "Other" (status "excluded" from round 3's record); each batch is 10.
    rounds = [_record(1, {"A": 4, "B": 4, "Other": 2}, {}, ["pool/%d" % i for i in range(10)]),
              _record(2, {"A": 8, "B": 7, "Other": 5}, {}, ["pool/%d" % i for i in range(10, 20)], kept=3),
              _record(3, {"A": 14, "B": 10, "Other": 6}, {"Other": "excluded"}, ["pool/%d" % i for i in range(20, 30)],
                      kept=3),
              _record(4, {"A": 18, "B": 14, "Other": 8}, {"Other": "excluded"})]
    return {"config": {"classes": names, "seed": 0}, "rounds": rounds, "variant": variant,
            "exclusions": [{"class": "Other", "round": 2}]}


def test_batches_come_from_label_counts_and_rows_start_at_the_exclusion():
    m = _bench()
    run = _run()
    assert m.batch_per_class(run) == [{"A": 4, "B": 3, "Other": 3}, {"A": 6, "B": 3, "Other": 1},
                                      {"A": 4, "B": 4, "Other": 2}]
    assert m.excluded_at_selection(run) == [[], ["Other"], ["Other"]]
    counts = {"A": 40, "B": 40, "Other": 20}
    off = _run("excl-off")
    rows = m.leak_rows(run, counts, off)
    assert [r["round"] for r in rows] == [2, 3]
    r2, r3 = rows
    assert (r2["from_excluded"], r2["batch"], r2["share"]) == (1, 10, 0.1)
    assert r2["pool_share"] == pytest.approx(15 / 80, abs=1e-4)   # (20 − 5) of (100 − 20) unlabeled
    assert r2["unlabeled_of_excluded"] == 15 and r2["kept_out_as_excluded"] == 3
    assert r2["share_excl_off"] == 0.1                              # the same run stands in for excl-off here
    assert (r3["from_excluded"], r3["share"]) == (2, 0.2)
    assert r3["pool_share"] == pytest.approx(14 / 70, abs=1e-4)
    assert r3["per_class"]["Other"]["batch"] == 2


def test_a_batch_that_does_not_match_its_selected_names_is_refused():
    m = _bench()
    run = _run()
    run["rounds"][1]["selected"] = run["rounds"][1]["selected"][:9]
    with pytest.raises(ValueError):
        m.leak_rows(run, {"A": 40, "B": 40, "Other": 20})


def test_hopeless_pool_counts_follow_the_protocol():
    m = _bench()
    names = [f"c{i}" for i in range(10)] + ["Other"]
    counts = m.hopeless_pool_counts(20000, names)
    assert counts["c0"] == 1818 and counts["Other"] == 1820 and sum(counts.values()) == 20000

"""relabel.prune: the round's model trains without cleanlab's unconfirmed suspects (confident
learning's pruning); the labels stay labels, and two experts who agreed are never overruled."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine.relabel import confirmed
from tests.test_label_issues import _noisy
from workers.label_issues import find_issues, pruned_keep


def test_a_label_is_confirmed_when_two_experts_gave_it_and_it_wins_outright():
    assert confirmed(["a", "a"]) and confirmed([3, 1, 3])
    assert not confirmed(["a"]) and not confirmed(["a", "b"]) and not confirmed(["a", "a", "b", "b"])
    assert not confirmed([])


def test_pruning_leaves_out_the_suspects_except_confirmed_labels_and_labels_of_excluded_classes():
    given, p, wrong = _noisy(n=300, c=4, seed=3)
    ids = np.arange(1000, 1000 + len(given))
    suspects = find_issues(given, p)[0]
    assert suspects[wrong].mean() > 0.8  # the fixture's flips are findable
    confirmed_ids = ids[suspects][:5].tolist()
    m = SimpleNamespace(train=SimpleNamespace(item_ids=ids.tolist()), relabel_confirmed=confirmed_ids,
                        relabel_prune_max=1.0)
    keep = pruned_keep(m, given, p, [True] * 4)
    assert not keep[suspects & ~np.isin(ids, confirmed_ids)].any()
    assert keep[np.isin(ids, confirmed_ids)].all() and keep[~suspects].all()
    # The cap: at most prune_max of the labels, the least trustworthy (lowest quality) first.
    quality = find_issues(given, p)[1]
    capped = pruned_keep(SimpleNamespace(**{**vars(m), "relabel_prune_max": 0.05}), given, p, [True] * 4)
    assert (~capped).sum() == int(0.05 * len(given)) < (~keep).sum()
    assert quality[~capped].max() <= quality[~keep & capped].min()
    # A class excluded since: its labels do not train anyway and are not judged here.
    keep_x = pruned_keep(m, given, p, [True, True, True, False])
    assert keep_x[given == 3].all()


def test_a_simulated_round_with_pruning_trains_on_fewer_labels_and_keeps_them_counted(tmp_path):
    """`camloop simulate` with relabel.prune on noisy digits: each round's model trains without
    the suspects (metrics train.pruned), which are mostly wrong labels; every label still counts
    (labeled), the label-issue file still checks all of them, the last, train-only round prunes
    too (its folds are kept for it), and no round prunes more than prune_max of its labels."""
    from engine.config import SimulationConfig
    from workers.simulate import run_simulation

    cfg = SimulationConfig(dataset="digits", initial=150, budget=40, rounds=2, epochs=8, mc_samples=2, threads=1,
                           oracle_noise=0.2, noise_kind="uniform",
                           relabel={"enabled": True, "share": 0.25, "prune": True})
    out = run_simulation(cfg, work_dir=tmp_path)
    json.dumps(out)
    rounds = out["rounds"]
    assert all("pruned" in r for r in rounds) and "label_issues" in rounds[-1]
    pruned = sum(r["pruned"]["labels"] for r in rounds)
    wrong = sum(r["pruned"]["wrong"] for r in rounds)
    assert pruned > 0 and wrong / pruned > 0.5, rounds
    for r in rounds:
        assert r["label_issues"]["checked"] >= r["labeled"] - r["pruned"]["labels"]
        assert r["pruned"]["labels"] <= 0.04 * r["labeled"]


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_confirmed_labels_are_those_two_experts_gave_and_the_item_holds_now(api):
    from service.rounds import inputs
    from service.store import Project
    from service.store.db import session_scope
    from tests.test_api import new_project, register

    c, settings = api
    pid = new_project(c, name=f"confirmed-{time.monotonic_ns()}")
    register(c, settings, pid, pool=6, val=2)
    items = [x["id"] for x in c.get(f"/api/v1/projects/{pid}/items", params={"split": "pool"}).json()["items"]]
    url = f"/api/v1/projects/{pid}/labels"
    answers = [(items[0], "3", "ann"), (items[0], "3", "bob"),     # two experts agree: confirmed
               (items[1], "4", "ann"), (items[1], "4", "ann2"), (items[1], "5", "bob"),  # latest wins: 5, one expert
               (items[2], "6", "ann"), (items[2], "6", "ann"),     # the same expert twice: not two experts
               (items[3], "7", "ann")]                             # one answer
    for k, (item, cls, who) in enumerate(answers):
        r = c.post(url, json={"labels": [{"item_id": item, "class": cls, "client_id": f"c{k}", "who": who}]})
        assert r.status_code in (200, 201), r.text
    with session_scope(settings) as s:
        project = s.get(Project, pid)
        assert inputs.confirmed_label_ids(s, project) == [items[0]]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_service_round_with_pruning_keeps_labels_two_experts_gave(api):
    """Through the service: 150 registered labels of digits, a fifth of them wrong; ten wrong ones
    also answered the same by a second expert (POST labels, another `who`): confirmed. The round's
    train job leaves suspects out (metrics train.pruned), never a confirmed label, and every label
    still counts."""
    from service.core import paths
    from service.store import ModelVersion
    from service.store.db import session_scope
    from engine.contracts import TrainManifest, read_manifest
    from tests.conftest import round_reaches, write_digits
    from sqlalchemy import select

    c, settings = api
    cfg = {"epochs": 6, "budget": 20, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False,
           "first_batch": "random", "stopping": {"stop_set_size": 0}, "control": {"share": 0.0},
           "audit": {"enabled": False}, "relabel": {"enabled": True, "prune": True, "prune_max": 0.2}}
    r = c.post("/api/v1/projects", json={"name": f"prune-{time.monotonic_ns()}",
                                         "classes": [str(i) for i in range(10)], "config": cfg})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    pool = write_digits(settings.data_dir, 250, "pool", seed=4)
    rng = np.random.default_rng(0)
    labeled = pool[:150]
    wrong = set(rng.choice(150, size=30, replace=False).tolist())
    given = {uri: (str((int(cls) + 1 + int(rng.integers(9))) % 10) if k in wrong else cls)
             for k, (uri, cls) in enumerate(labeled)}
    items = [{"uri": uri, "split": "pool", "label": given.get(uri)} for uri, _ in pool]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"items": items}).status_code == 202
    ids = {x["uri"]: x["id"] for x in c.get(f"/api/v1/projects/{pid}/items",
                                             params={"split": "pool", "limit": 1000}).json()["items"]}
    twice = [labeled[k][0] for k in sorted(wrong)[:10]]
    r = c.post(f"/api/v1/projects/{pid}/labels", json={"labels": [
        {"item_id": ids[u], "class": given[u], "client_id": f"second-{ids[u]}", "who": "bob"} for u in twice]})
    assert r.status_code == 201, r.text

    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    round_reaches(c, settings, pid, 1, "labeling")
    m = read_manifest(paths.round_files(settings, pid, 1).train_manifest, TrainManifest)
    assert m.relabel_prune and sorted(m.relabel_confirmed) == sorted(ids[u] for u in twice)
    with session_scope(settings) as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.project_id == pid)).one()
        train = mv.metrics["train"]
    out = set(train["pruned_item_ids"])
    assert 0 < train["pruned"] == len(out) <= 0.2 * len(m.train)
    assert not out & set(m.relabel_confirmed)
    wrong_ids = {ids[labeled[k][0]] for k in wrong}
    assert len(out & wrong_ids) > len(out) / 2, (len(out & wrong_ids), len(out))
    metrics = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert metrics["labeled"] == 150  # pruned labels are labels
    # Nor is a confirmed label a suspect to ask about again, wrong as these ten are.
    from engine.relabel import read_issues

    issues = read_issues(paths.round_files(settings, pid, 1).label_issues)
    assert not issues["issue"][np.isin(issues["item_ids"], m.relabel_confirmed)].any()
    assert metrics["label_issues"]["confirmed"] == 10
    assert metrics["label_issues"]["pruned"] == train["pruned"]
    assert set(metrics["label_issues"]["pruned_item_ids"]) == out


def test_a_label_two_experts_agreed_on_is_never_a_suspect_asked_again(tmp_path):
    """The model keeps doubting hard labels however often experts confirm them: a label two
    experts gave (TrainManifest.relabel_confirmed) is not an issue in the round's file, so the
    picks go to other suspects; its probabilities and quality are still written."""
    from engine.relabel import read_issues, second_opinion_picks
    from workers.label_issues import write_label_issues

    given, p, wrong = _noisy(n=300, c=4, seed=3)
    ids = np.arange(1000, 1000 + len(given))
    suspects, quality = find_issues(given, p)
    flagged = np.flatnonzero(suspects)
    most = ids[flagged[np.argsort(quality[flagged], kind="stable")]][:10]  # cleanlab's ten most suspicious
    files = SimpleNamespace(label_issues=tmp_path / "issues.npz")
    from engine.datasets import Dataset

    train = Dataset(np.zeros((len(given), 2, 2, 1), np.uint8), given, list("abcd"))

    def write(confirmed_ids):
        m = SimpleNamespace(train=SimpleNamespace(item_ids=ids.tolist()), relabel_folds=3, evidence_source="val",
                            relabel_confirmed=list(confirmed_ids))
        summary = write_label_issues(m, files, train, None, None, [True] * 4, {}, None, None, None, None, None,
                                     "cpu", fold_probs=p)
        return summary, read_issues(files.label_issues)

    before, issues = write([])
    assert [s.item_id for s in second_opinion_picks(issues, 10)] == most.tolist()
    after, issues = write(most[:4])
    picks = [s.item_id for s in second_opinion_picks(issues, 10)]
    assert not set(picks) & set(most[:4].tolist()) and len(picks) == 10
    assert picks[:6] == most[4:].tolist()  # the next suspects take their place
    assert after["confirmed"] == 4 and after["issues"] == before["issues"] - 4
    assert np.allclose(issues["quality"], quality)

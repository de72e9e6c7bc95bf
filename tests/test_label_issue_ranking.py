"""config relabel.ranking (issue 23): the order of suspicion from out-of-fold self-confidence alone,
or its mean with cleanlab Datalab's k-nearest-neighbour label score on the round's model's features."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from engine.config import ProjectConfig
from engine.datasets import Dataset
from engine.relabel import read_issues, resolved_ranking, second_opinion_picks
from workers.label_issues import ranked_issues, write_label_issues


def test_an_unknown_ranking_is_a_config_error_naming_the_value():
    assert ProjectConfig(relabel={"enabled": True, "ranking": "self_confidence+knn"}).relabel.ranking == \
        "self_confidence+knn"
    assert ProjectConfig().relabel.ranking == "auto"  # the default: by the model (docs/benchmarks.md)
    assert ProjectConfig(relabel={"enabled": True, "ranking": "self_confidence"}).relabel.ranking == "self_confidence"
    with pytest.raises(ValidationError) as err:
        ProjectConfig(relabel={"enabled": True, "ranking": "knn-only"})
    assert "relabel.ranking" in str(err.value) and "knn-only" in str(err.value)
    with pytest.raises(ValueError, match="knn-only"):
        ranked_issues(np.zeros(4, np.int64), np.full((4, 2), 0.5), [True, True], "knn-only", np.zeros((4, 2)))


def _planted(seed=0, n_per=20, c=4):
    """Images in one tight cluster per true class; one (index 0) labeled with another class, and
    out-of-fold probabilities that half-believe that wrong label, as a model that confuses the
    two classes does (a confusable flip): no more suspicious to self-confidence than many right
    labels of hard images."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(c), n_per)
    feats = np.eye(c)[truth] * 5 + rng.normal(scale=0.3, size=(len(truth), c))
    given = truth.copy()
    given[0] = 1  # truth 0, labeled 1
    p = np.full((len(truth), c), 0.0)
    own = rng.uniform(0.35, 0.95, size=len(truth))  # hard and easy right labels
    p[np.arange(len(truth)), given] = own
    p[0, given[0]] = 0.5
    rest = (1 - p.sum(1)) / (c - 1)
    p += (p == 0) * rest[:, None]
    return given, p, feats


def test_auto_ranks_by_self_confidence_on_a_frozen_trunk_and_adds_the_knn_score_otherwise():
    """The benchmark's finding (docs/benchmarks.md, issue 23): the kNN score helped the small CNN and
    hurt the frozen pretrained trunk; an explicit choice is kept either way."""
    assert resolved_ranking("auto", 0) == "self_confidence+knn"
    assert resolved_ranking("auto", 7) == "self_confidence"
    assert resolved_ranking("self_confidence+knn", 7) == "self_confidence+knn"
    assert resolved_ranking("self_confidence", 0) == "self_confidence"


def test_the_combined_ranking_puts_a_label_its_neighbours_contradict_above_the_right_ones():
    given, p, feats = _planted()
    sc = ranked_issues(given, p, [True] * 4, "self_confidence")
    both = ranked_issues(given, p, [True] * 4, "self_confidence+knn", feats, knn_k=10)
    assert np.argsort(sc["quality"], kind="stable")[0] != 0  # self-confidence alone: hard right labels first
    assert np.argmin(both["quality"]) == 0 and both["issue"][0] and both["knn_issue"][0]
    assert both["knn_score"][0] < 0.2 and (both["knn_score"][1:] > 0.8).all()
    assert np.allclose(both["self_confidence"], sc["quality"])
    assert np.allclose(both["quality"], (sc["quality"] + both["knn_score"]) / 2)


def test_the_round_file_orders_the_second_opinions_by_the_combined_ranking(tmp_path):
    given, p, feats = _planted(seed=1)
    ids = np.arange(500, 500 + len(given))
    files = SimpleNamespace(label_issues=tmp_path / "issues.npz")
    train = Dataset(np.zeros((len(given), 2, 2, 1), np.uint8), given, list("abcd"))
    m = SimpleNamespace(train=SimpleNamespace(item_ids=ids.tolist()), relabel_folds=3, evidence_source="val",
                        relabel_confirmed=[], relabel_ranking="self_confidence+knn", relabel_knn_k=10)
    seen = []

    def embed(images, digests):
        seen.append(len(images))
        return feats

    summary = write_label_issues(m, files, train, None, None, [True] * 4, {}, None, None, None, None, None, "cpu",
                                 fold_probs=p, embed=embed)
    issues = read_issues(files.label_issues)
    assert seen == [len(given)] and summary["ranking"] == "self_confidence+knn" and summary["knn_issues"] >= 1
    assert second_opinion_picks(issues, 3)[0].item_id == 500
    assert {"self_confidence", "knn_score", "knn_issue"} <= set(issues)
    # Confirmed by two experts: not asked again, whatever its neighbours say.
    m.relabel_confirmed = [500]
    write_label_issues(m, files, train, None, None, [True] * 4, {}, None, None, None, None, None, "cpu",
                       fold_probs=p, embed=embed)
    assert 500 not in [s.item_id for s in second_opinion_picks(read_issues(files.label_issues), 10)]


def test_a_simulated_round_ranks_with_the_models_features(tmp_path, monkeypatch):
    """The train job embeds the labeled images with the round's model (its head's input) and the
    label-issue file carries the kNN score beside self-confidence."""
    from engine.config import SimulationConfig
    from engine.contracts import RoundFiles, TrainManifest, read_manifest
    from workers import jobs
    from workers.simulate import run_simulation

    written = []
    train_round = jobs.train_round

    def kept(path):  # the run's folder goes with it: read each round's file as it is written
        out = train_round(path)
        f = RoundFiles(read_manifest(path, TrainManifest).out_dir).label_issues
        if f.is_file():
            written.append(read_issues(f))
        return out

    monkeypatch.setattr(jobs, "train_round", kept)
    cfg = SimulationConfig(dataset="digits", initial=100, budget=40, rounds=1, epochs=1, mc_samples=2, threads=1,
                           oracle_noise=0.2, noise_kind="uniform",
                           relabel={"enabled": True, "share": 0.25, "knn_k": 5})  # ranking auto: no frozen blocks
    out = run_simulation(cfg, work_dir=tmp_path)
    first = out["rounds"][0]["label_issues"]
    assert first["ranking"] == "self_confidence+knn" and first["checked"] == 100 and "knn_seconds" in first
    issues = written[0]
    assert issues["knn_score"].shape == (100,) and np.allclose(
        issues["quality"], (issues["self_confidence"] + issues["knn_score"]) / 2)

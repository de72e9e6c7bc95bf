"""Semi-supervised rounds (issue 24): the propagation math against scikit-learn on the same
graph, the pseudo-label filter, the config section, and pseudo-labels that are never labels —
not in the training split, the label counts, the evidence, the audit's random labels."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.neighbors import NearestNeighbors
from sklearn.semi_supervised import LabelSpreading

from engine import contracts as c
from engine import step
from engine.config import ProjectConfig, SimulationConfig
from engine.semi import knn_graph, label_spreading, pick, propagate, semi_spec

NAMES = ["a", "b", "c", "d"]


def _blobs(seed=0, per=40, dim=6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (3, dim))
    x = np.concatenate([rng.normal(0, 1, (per, dim)) + m for m in centres]).astype(np.float32)
    return x, np.repeat(np.arange(3), per)


# ----------------------------------------------------------------------------- the math

def test_knn_graph_is_scikit_learns_cosine_graph_made_symmetric():
    x, _ = _blobs()
    ours = knn_graph(x, 5, chunk=17)  # chunks that do not divide the rows
    nn = NearestNeighbors(n_neighbors=5, metric="cosine").fit(x).kneighbors_graph(mode="connectivity")
    theirs = ((nn + nn.T) > 0).astype(float)
    assert ours.shape == (120, 120) and ours.diagonal().sum() == 0
    assert abs(ours - theirs).sum() == 0
    assert (ours.sum(axis=1) >= 5).all()


def test_label_spreading_is_scikit_learns_on_the_same_graph():
    x, y = _blobs(1)
    w = knn_graph(x, 6)
    seeds = -np.ones(len(y), np.int64)
    for cls in range(3):
        seeds[np.flatnonzero(y == cls)[:2]] = cls
    for alpha in (0.2, 0.7):
        ours = label_spreading(w, seeds, 3, alpha=alpha, max_iter=2000, tol=1e-13)
        ref = LabelSpreading(kernel=lambda a, b: w.toarray(), alpha=alpha, max_iter=2000, tol=1e-13).fit(x, seeds)
        np.testing.assert_allclose(ours, ref.label_distributions_, atol=1e-8)
        assert (ours.argmax(1) == y).mean() > 0.95  # and it works: the blobs take their seeds' class


def test_unreachable_images_get_no_distribution_and_excluded_classes_do_not_spread():
    x, y = _blobs(2)
    far = np.full((3, x.shape[1]), 0.0, np.float32)
    far[:, 0] = -1e3  # a separate clump, no labels in it
    lab = np.concatenate([np.flatnonzero(y == cls)[:3] for cls in range(3)])
    pool = np.setdiff1d(np.arange(len(y)), lab)
    d = propagate(x[lab], y[lab], np.concatenate([x[pool], far + np.arange(3)[:, None] * 1e-3]), 3, neighbours=2)
    assert np.allclose(d[-3:], 0.0)  # no path to a label: nothing guessed
    assert (d[:-3].argmax(1) == y[pool]).mean() > 0.95
    off = propagate(x[lab], y[lab], x[pool], 3, neighbours=5, active=np.array([True, False, True]))
    assert np.allclose(off[:, 1], 0.0)


def test_pick_keeps_confident_guesses_capped_per_class_most_confident_first():
    dist = np.array([[0.95, 0.05, 0.0],   # 0: a, sure
                     [0.80, 0.20, 0.0],   # 1: a, below the threshold
                     [0.97, 0.03, 0.0],   # 2: a, surest
                     [0.91, 0.09, 0.0],   # 3: a, sure but over a's cap
                     [0.0, 0.05, 0.95],   # 4: c, but c is not active
                     [0.1, 0.9, 0.0],     # 5: b, exactly the threshold
                     [0.0, 0.0, 0.0]])    # 6: unreachable
    rows, cls, conf = pick(dist, np.array([1, 4, 3]), 0.9, 2.0, active=np.array([True, True, False]))
    assert rows.tolist() == [0, 2, 5] and cls.tolist() == [0, 0, 1]
    np.testing.assert_allclose(conf, [0.95, 0.97, 0.9])
    assert pick(dist, np.array([1, 4, 3]), 0.9, 0.0)[0].size == 0  # max_ratio 0: none
    assert pick(np.zeros((0, 3)), np.zeros(3), 0.5, 1.0)[0].size == 0


# ----------------------------------------------------------------------------- the config

def test_semi_config_defaults_off_and_refuses_what_cannot_run():
    assert ProjectConfig().semi.method == "none"
    cfg = ProjectConfig.model_validate({"semi": {"method": "self-training", "threshold": 0.8}})
    assert cfg.semi.threshold == 0.8 and cfg.semi.weight == 0.5
    with pytest.raises(ValidationError, match="trunk"):
        ProjectConfig.model_validate({"semi": {"method": "propagation"}})  # small-cnn: no cached trunk
    for bad in ({"method": "fixmatch"}, {"threshold": 1.5}, {"weight": 0}, {"threshold": "0.9"},
                {"neighbours": 0}, {"alpha": 1.0}, {"pseudo": True}):
        with pytest.raises(ValidationError):
            ProjectConfig.model_validate({"semi": bad})


# ----------------------------------------------------------------------------- never labels

def _refs(ids, labels=None, path="pool.npy"):
    ids = list(ids)
    return c.ImageRefs.build(ids, [path] * len(ids), range(len(ids)), labels)


def test_semi_spec_blanks_labels_and_samples_the_pool():
    cfg = ProjectConfig.model_validate({"semi": {"method": "self-training", "max_pool": 7}, "seed": 4})
    truth = _refs(range(100, 130), [k % 4 for k in range(30)])
    spec = semi_spec(cfg, truth, 2)
    assert len(spec.pool) == 7 and set(spec.pool.labels) == {-1}
    assert set(spec.pool.item_ids) <= set(truth.item_ids)
    assert semi_spec(cfg, truth, 3).pool.item_ids == spec.pool.item_ids  # seeded by the project, not the round
    assert semi_spec(ProjectConfig(), truth, 2) is None
    assert semi_spec(cfg, c.ImageRefs(), 2) is None


def test_a_semi_round_plans_the_same_labels_split_and_shadow(tmp_path):
    labeled = _refs(range(40), [k % 4 for k in range(40)])
    off = ProjectConfig.model_validate({"seed": 2})
    on = ProjectConfig.model_validate({"seed": 2, "semi": {"method": "self-training"}})

    def plan(cfg):
        return step.training(cfg, 1, step.TrainingFacts(
            number=2, class_names=NAMES, active=[True] * 4, labeled=labeled, val=c.ImageRefs(),
            test=c.ImageRefs(), previous_train_ids=list(range(20)), files=c.RoundFiles(tmp_path),
            random_ids=list(range(0, 40, 2)), unlabeled=_refs(range(100, 160), [1] * 60)))

    a, b = plan(off), plan(on)
    assert a.manifest.semi is None and b.manifest.semi is not None
    # Everything labels decide is the same: the training split, the evidence, what is new, the shadow.
    assert b.split.train == a.split.train and b.split.evidence == a.split.evidence
    assert b.manifest.model_dump(exclude={"semi"}) == a.manifest.model_dump(exclude={"semi"})
    assert b.manifest.shadow is not None and b.manifest.shadow.train == a.manifest.shadow.train
    assert set(b.manifest.semi.pool.labels) == {-1} and not set(b.manifest.semi.pool.item_ids) & set(range(40))


def _round_facts(out):
    """What a round's labels decide, from the simulate JSON: counts, evidence, audit, control."""
    whole = {r["labeled"] for r in out["rounds"]}  # a round's whole training set: its own model may be the point
    return [{"labeled": r["labeled"], "per_class": {n: v["labeled"] for n, v in r["per_class"].items()},
             "evidence_support": {n: v[1] for n, v in r["evidence"].items()},
             "random_labels": (r.get("audit") or {}).get("random_labels"),
             # The shadow models' points: their sizes, and the accuracy of each trained on a part
             # of the random labels (trained on them alone: the same models). The point of all of
             # them is the round's own model in a supervised round that trained on exactly those.
             "random_curve": [(p["labels"], p["n"]) + ((p["accuracy"],) if p["labels"] not in whole else ())
                              for p in ((r.get("audit") or {}).get("random_curve") or [])]}
            for r in out["rounds"]]


def test_simulated_self_training_rounds_count_only_labels():
    base = dict(dataset="digits", strategy="random", initial=100, budget=40, rounds=1, epochs=3, pool_limit=500,
                threads=1, seed=1)
    off = SimulationConfig(**base)
    on = SimulationConfig(**base, semi={"method": "self-training", "threshold": 0.2})
    from workers.simulate import run_simulation

    a, b = run_simulation(off), run_simulation(on)
    # A random strategy picks the same images whatever the model: so every label count, the
    # evidence and the audit's random labels and shadow models are the same with pseudo-labels as
    # without (the shadow of all the random labels is not the round's model when that one also
    # learnt from pseudo-labels: workers.shadow trains it).
    assert _round_facts(b) == _round_facts(a)
    assert any(r["audit"] and r["audit"]["random_curve"] for r in b["rounds"])  # the audit did measure
    assert [r["labeled"] for r in b["rounds"]] == [100, 140]
    assert all("semi" not in r for r in a["rounds"])
    semi = [r["semi"] for r in b["rounds"]]
    assert all(s["pseudo"] > 0 and s["method"] == "self-training" for s in semi)
    assert all(sum(s["per_class"].values()) == s["pseudo"] for s in semi)
    assert all(0.0 <= s["precision"] <= 1.0 for s in semi)
    # Capped by the labels (max_ratio 1): never more pseudo-labels than labels that trained.
    assert all(s["pseudo"] <= r["labeled"] for s, r in zip(semi, b["rounds"]))

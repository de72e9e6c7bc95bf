"""Issue 21: every trained model is a version — listed with what it was trained on and how good it
measured (and where), downloadable as a checkpoint, TorchScript or ONNX with a model card, pinned
so that it scores the next round, and kept (keep_best_model) when a newer one is worse beyond the
noise. Over the real service (TestClient, real Redis, SQLite and PostgreSQL), jobs run by a real
rq worker in this process; the ONNX file is checked with onnxruntime against torch.
"""
from __future__ import annotations

import pytest

import io

import torch
from sqlalchemy import select

from engine import contracts
from engine.model_serving import VersionEvidence, model_in_use, worse_beyond_noise
from service.store import ModelVersion, Round
from service.store.db import session_scope
from tests.conftest import run_jobs
from tests.takeaway import CLASSES, new_project, register, run_round


def _download(c, pid, v, fmt):
    """The file, converting it in the worker first when the API answers 202."""
    for _ in range(3):
        r = c.get(f"/api/v1/projects/{pid}/models/{v}/download", params={"format": fmt})
        if r.status_code != 202:
            return r
        assert r.headers["Retry-After"] and r.json()["state"] in ("queued", "started")
        run_jobs(c.app.state.settings, ("score",))
    return r


def test_versions_cards_downloads_and_a_pin_that_scores_the_next_round(api):
    c, settings = api
    pid = new_project(c)
    truth = register(c, settings, pid, pool=80, val=30)
    assert c.get(f"/api/v1/projects/{pid}/models").json()["versions"] == []
    assert c.get(f"/api/v1/projects/{pid}/models/latest").status_code == 404
    run_round(c, settings, pid, 1, truth)            # cold start: no model
    r2 = run_round(c, settings, pid, 2, truth)       # trains version 1, which scores round 2
    r3 = run_round(c, settings, pid, 3, truth)       # version 2 scores round 3
    assert r2["progress"]["scored_by"]["version"] == 1 and r3["progress"]["scored_by"]["version"] == 2
    assert r3["progress"]["scored_by"]["why"] == "latest" and r3["progress"]["strategy"] == "hybrid"

    listed = c.get(f"/api/v1/projects/{pid}/models").json()
    assert [v["version"] for v in listed["versions"]] == [1, 2] and [v["round"] for v in listed["versions"]] == [2, 3]
    assert listed["in_use"]["version"] == 2 and listed["in_use"]["why"] == "latest"
    v1 = listed["versions"][0]
    assert v1["scored_rounds"] == [2] and not v1["pinned"] and not v1["in_use"]
    # What it was trained on, per class, and its figures with where they were measured.
    assert sum(v1["labels_per_class"]["train"].values()) == 20
    assert v1["metrics"]["evidence"]["measured_on"] == "val" and v1["metrics"]["evidence"]["images"] == 30
    assert 0.0 <= v1["metrics"]["evidence"]["accuracy"] <= 1.0
    assert v1["formats"]["state_dict"] == "ready" and v1["formats"]["onnx"].startswith("not converted")

    card = c.get(f"/api/v1/projects/{pid}/models/1/card").json()
    assert card["classes"] == CLASSES and card["input"]["size"] == 28 and card["input"]["channels"] == 1
    assert card["normalisation"]["mean"] == [0.5] and card["normalisation"]["std"] == [0.25]
    assert card["architecture"] == "small-cnn" and card["camloop_version"]
    assert card["config"]["training"]["epochs"] == 1 and card["metrics"]["evidence"]["measured_on"] == "val"
    md = c.get(f"/api/v1/projects/{pid}/models/1/card.md")
    assert md.status_code == 200 and "# Model card" in md.text and "| 0 | 0 | active |" in md.text

    # The checkpoint at once; ONNX after the worker converted it (202 until then).
    sd = c.get(f"/api/v1/projects/{pid}/models/1/download", params={"format": "state_dict"})
    assert sd.status_code == 200 and sd.headers["X-Camloop-Model-Version"] == "1"
    state = torch.load(io.BytesIO(sd.content), weights_only=True)
    assert "head.weight" in state["state_dict"] and state["meta"]["class_names"] == CLASSES
    onnx = _download(c, pid, 1, "onnx")
    assert onnx.status_code == 200, onnx.text
    assert c.get(f"/api/v1/projects/{pid}/models/1").json()["formats"]["onnx"] == "ready"
    ts = _download(c, pid, 1, "torchscript")
    assert ts.status_code == 200 and len(ts.content) > 1000

    # Pin version 1: it scores round 4 although round 4 trains version 3.
    r = c.patch(f"/api/v1/projects/{pid}/models/1", json={"pinned": True})
    assert r.status_code == 200 and r.json()["pinned"] and r.json()["in_use"], r.text
    r4 = run_round(c, settings, pid, 4, truth, label=False)
    assert r4["progress"]["scored_by"] == {"version": 1, "why": "pinned", "round": 2,
                                           "note": "version 1 (round 2) is pinned"}
    manifest = score_manifest(settings, pid, 4)
    with session_scope(settings) as s:
        v1_row = s.scalar(select(ModelVersion).where(ModelVersion.project_id == pid, ModelVersion.version == 1))
        v3_row = s.scalar(select(ModelVersion).where(ModelVersion.project_id == pid, ModelVersion.version == 3))
        rnd4 = s.scalar(select(Round).where(Round.project_id == pid, Round.number == 4))
        assert manifest.checkpoint == v1_row.checkpoint_path != v3_row.checkpoint_path
        assert rnd4.scored_by_id == v1_row.id and rnd4.model_version_id == v3_row.id
    # Only one pin at a time; unpinning hands back to the newest model.
    assert c.patch(f"/api/v1/projects/{pid}/models/2", json={"pinned": True}).json()["pinned"]
    assert [v["pinned"] for v in c.get(f"/api/v1/projects/{pid}/models").json()["versions"]] == [False, True, False]
    assert c.patch(f"/api/v1/projects/{pid}/models/2", json={"pinned": False}).status_code == 200
    assert c.get(f"/api/v1/projects/{pid}/models").json()["in_use"] == {
        "version": 3, "why": "latest", "note": "version 3 is the newest model"}


def score_manifest(settings, pid, n) -> contracts.ScoreManifest:
    return contracts.read_manifest(settings.artifacts_path / f"p{pid}" / f"r{n:04d}" / "score.json",
                                   contracts.ScoreManifest)


def test_bad_model_requests(api):
    c, settings = api
    pid = new_project(c)
    other = new_project(c, name="other")
    truth = register(c, settings, pid, pool=60, val=20)
    run_round(c, settings, pid, 1, truth)
    # Round 2 is training: its version is "still being trained" (409), no earlier one to fall back on.
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    r = c.get(f"/api/v1/projects/{pid}/models/1")
    assert r.status_code == 409 and "still being trained by round 2" in r.json()["detail"]
    r = c.get(f"/api/v1/projects/{pid}/models/latest/download", params={"format": "onnx"})
    assert r.status_code == 404 and "round 2 is training the first" in r.json()["detail"]
    from tests.conftest import round_reaches
    round_reaches(c, settings, pid, 2, "labeling")
    assert c.get(f"/api/v1/projects/{pid}/models/1").status_code == 200
    # Another project's version: 404, never the other project's model.
    assert c.get(f"/api/v1/projects/{other}/models/1").status_code == 404
    assert c.get(f"/api/v1/projects/{other}/models/1/download", params={"format": "state_dict"}).status_code == 404
    assert c.patch(f"/api/v1/projects/{other}/models/1", json={"pinned": True}).status_code == 404
    assert c.get(f"/api/v1/projects/{pid}/models/7").status_code == 404
    # An unknown format lists the formats.
    r = c.get(f"/api/v1/projects/{pid}/models/1/download", params={"format": "pickle"})
    assert r.status_code == 422 and all(f in r.text for f in ("state_dict", "torchscript", "onnx"))
    assert c.get(f"/api/v1/projects/{pid}/models/v1").status_code == 422
    assert c.patch(f"/api/v1/projects/{pid}/models/1", json={"pinned": "yes"}).status_code == 422
    # A download of a version whose ONNX is being written: 202 (retry), and `latest` answers with
    # the newest version whose file is ready — the previous one.
    first = c.get(f"/api/v1/projects/{pid}/models/1/download", params={"format": "onnx"})
    assert first.status_code == 202 and first.json()["state"] == "queued"
    run_jobs(settings, ("score",))
    assert c.get(f"/api/v1/projects/{pid}/models/1/download", params={"format": "onnx"}).status_code == 200
    from tests.conftest import label_queue
    label_queue(c, pid, truth)
    round_reaches(c, settings, pid, 2, "closed")
    run_round(c, settings, pid, 3, truth, label=False)   # version 2, not converted yet
    r = c.get(f"/api/v1/projects/{pid}/models/latest/download", params={"format": "onnx"})
    assert r.status_code == 200 and r.headers["X-Camloop-Model-Version"] == "1"
    assert "version 2 is still being converted" in r.headers["X-Camloop-Note"]


def test_keep_best_model_keeps_a_better_version_beyond_the_noise():
    v = lambda n, k, t, pinned=False: VersionEvidence(n, n + 1, k, t, pinned)  # noqa: E731
    # 60/100 against 80/100: the newer one's 90 % upper bound (≈0.68) is below 0.80 → kept.
    worse, why = worse_beyond_noise(v(2, 60, 100), v(1, 80, 100))
    assert worse and "[0." in why
    assert model_in_use([v(1, 80, 100), v(2, 60, 100)], keep_best=True).version == 1
    assert model_in_use([v(1, 80, 100), v(2, 60, 100)], keep_best=True).why == "kept_best"
    assert model_in_use([v(1, 80, 100), v(2, 60, 100)], keep_best=False).version == 2
    # Within the noise (76/100 vs 80/100; 7/10 vs 8/10): the newer one replaces it.
    assert model_in_use([v(1, 80, 100), v(2, 76, 100)], keep_best=True).version == 2
    assert model_in_use([v(1, 8, 10), v(2, 7, 10)], keep_best=True).version == 2
    # No evidence for the newer one: not judged, it replaces (never decided on missing evidence).
    assert model_in_use([v(1, 80, 100), v(2, 0, 0)], keep_best=True).version == 2
    # The kept one is compared with each newer model in turn; a pin wins over everything.
    assert model_in_use([v(1, 80, 100), v(2, 60, 100), v(3, 79, 100)], keep_best=True).version == 3
    assert model_in_use([v(1, 80, 100), v(2, 60, 100), v(3, 90, 100, True)], keep_best=True).version == 3
    assert model_in_use([v(1, 10, 100, True), v(2, 90, 100)], keep_best=True).why == "pinned"
    assert model_in_use([], keep_best=True).version is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the store does not matter here: one is enough
def test_keep_best_model_over_the_service_scores_with_the_better_version(api):
    c, settings = api
    pid = new_project(c, keep_best_model=True)
    truth = register(c, settings, pid, pool=60, val=20)
    run_round(c, settings, pid, 1, truth)
    run_round(c, settings, pid, 2, truth)
    # Version 1 measured 19/20 on the evidence (as if); round 3's model will measure what it measures.
    with session_scope(settings) as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.project_id == pid, ModelVersion.version == 1))
        ev = dict(mv.metrics["evidence"])
        ev["per_class"] = {n: {"support": 2, "correct": 2, "accuracy": 1.0} for n in CLASSES}
        mv.metrics = {**mv.metrics, "evidence": ev}
    r3 = run_round(c, settings, pid, 3, truth, label=False)
    assert r3["progress"]["scored_by"]["version"] == 1 and r3["progress"]["scored_by"]["why"] == "kept_best"
    assert "worse beyond the noise" in r3["progress"]["scored_by"]["note"]
    assert score_manifest(settings, pid, 3).checkpoint.endswith("r0002/model.pt")

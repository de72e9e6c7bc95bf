"""The store on real SQLite and PostgreSQL: migrations, constraints, the model matches the schema."""
from __future__ import annotations

import uuid

import numpy as np

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from service.store.db import get_engine, session_scope
from service.store.migrate import upgrade_head
from service.store import Item, Label, Project, Round
from tests.conftest import make_settings


@pytest.fixture
def store(tmp_path, db_url):
    s = make_settings(tmp_path, db_url, "unused")
    upgrade_head(s)
    upgrade_head(s)  # idempotent: the server runs it at every start
    return s


def _project(s, name):
    # The PostgreSQL database is shared by the session's tests: names must not collide.
    p = Project(name=f"{name}-{uuid.uuid4().hex[:8]}", class_names=["a", "b"], config={})
    s.add(p)
    s.flush()
    return p


def test_migration_creates_every_table_and_matches_the_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.store import Base

    eng = get_engine(store)
    names = set(inspect(eng).get_table_names())
    assert {"projects", "classes", "items", "labels", "rounds", "model_versions", "jobs", "queue_entries",
            "alembic_version"} <= names
    from service.labelstudio import guess, ledger, second_opinion  # noqa: F401 — their tables join ledger.metadata

    assert {"labelstudio_annotations", "labelstudio_projects"} <= names  # revision 0002
    assert {"guess_shown", "second_opinions"} <= names  # revision 0007
    with eng.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"target_metadata": [Base.metadata, ledger.metadata]})
        diff = compare_metadata(ctx, [Base.metadata, ledger.metadata])
    assert diff == []


def test_content_hash_is_unique_per_project_not_globally(store):
    with session_scope(store) as s:
        p1, p2 = _project(s, "p1"), _project(s, "p2")
        s.add_all([Item(project_id=p1.id, uri="a.png", sha256="x" * 64), Item(project_id=p2.id, uri="a.png", sha256="x" * 64)])
    with pytest.raises(IntegrityError):
        with session_scope(store) as s:
            s.add(Item(project_id=p1.id, uri="b.png", sha256="x" * 64))


def test_a_label_delivery_id_is_stored_once(store):
    with session_scope(store) as s:
        p = _project(s, "p")
        it = Item(project_id=p.id, uri="a.png", sha256="y" * 64)
        s.add(it)
        s.flush()
        s.add(Label(project_id=p.id, item_id=it.id, class_name="a", who="w", source="api", external_id="e1"))
        pid, iid = p.id, it.id
    with pytest.raises(IntegrityError):
        with session_scope(store) as s:
            s.add(Label(project_id=pid, item_id=iid, class_name="b", who="w", source="api", external_id="e1"))
    with session_scope(store) as s:  # the same id from another source is another delivery
        s.add(Label(project_id=pid, item_id=iid, class_name="a", who="w", source="label-studio", external_id="e1"))
        assert len(list(s.scalars(select(Label).where(Label.item_id == iid)))) == 2


def test_round_numbers_are_unique_per_project(store):
    with session_scope(store) as s:
        p = _project(s, "p")
        s.add(Round(project_id=p.id, number=1))
        pid = p.id
    with pytest.raises(IntegrityError):
        with session_scope(store) as s:
            s.add(Round(project_id=pid, number=1))


def test_json_columns_round_trip(store):
    with session_scope(store) as s:
        p = Project(name=f"cfg-{uuid.uuid4().hex[:8]}", class_names=["x", "y", "z"], config={"budget": 5, "exclusion": {"patience": 2}})
        s.add(p)
        s.flush()
        pid = p.id
    with session_scope(store) as s:
        p = s.get(Project, pid)
        assert p.class_names == ["x", "y", "z"] and p.config["exclusion"]["patience"] == 2


# ------------------------------------------------------------------ bulk paths (issue 3)

def _labeled_project(s, n_items=12):
    from service.store import ProjectClass

    p = Project(name=f"lab-{uuid.uuid4().hex[:8]}", class_names=["a", "b", "c"], config={})
    s.add(p)
    s.flush()
    s.add_all([ProjectClass(project_id=p.id, index=k, name=n) for k, n in enumerate(p.class_names)])
    its = [Item(project_id=p.id, uri=f"{k}.png", sha256=f"{p.id}-{k}") for k in range(n_items)]
    s.add_all(its)
    s.flush()
    return p, [it.id for it in its]


def _label_scenario(s, p, ids):
    """Rounds 1..3; round 2's queue holds items 0..3 (and round 1's items 0..1); item 5 quarantined."""
    from service.store import ModelVersion, QueueEntry

    rounds = []
    for n in (1, 2, 3):
        mv = ModelVersion(project_id=p.id, round=n, checkpoint_path=f"m{n}.pt", metrics={})
        s.add(mv)
        s.flush()
        r = Round(project_id=p.id, number=n, state="closed" if n < 3 else "training", model_version_id=mv.id)
        s.add(r)
        s.flush()
        rounds.append(r)
    s.add_all([QueueEntry(round_id=rounds[0].id, item_id=ids[k], rank=k, scores={}) for k in (0, 1)])
    s.add_all([QueueEntry(round_id=rounds[1].id, item_id=ids[k], rank=k, scores={}) for k in (0, 1, 2, 3)])
    it = s.get(Item, ids[5])
    it.status, it.reason = "quarantined", "truncated file"
    s.flush()


def _outcome(s, pid, res):
    from service.store import ModelVersion

    mv_round = dict(s.execute(select(ModelVersion.id, ModelVersion.round).where(ModelVersion.project_id == pid)).all())
    labs = [(lab.item_id, lab.class_name, lab.round, mv_round.get(lab.model_version_id), lab.external_id, created)
            for lab, created in res]
    items = [(it.label, it.status) for it in s.scalars(select(Item).where(Item.project_id == pid).order_by(Item.id))]
    rows = sorted((lab.item_id, lab.class_name, lab.round, lab.external_id)
                  for lab in s.scalars(select(Label).where(Label.project_id == pid)))
    return labs, items, rows


def test_record_labels_in_one_batch_equals_recording_them_one_by_one(store):
    """Queued items answer their latest queue's round, others the latest round; repeats are not
    created twice (also inside one batch); a relabel in the same batch wins (latest wins)."""
    from service.core import labels

    def batch(ids):
        return [(ids[0], "a", "w", "e0"), (ids[2], "b", "w", "e2"), (ids[0], "a", "w", "e0"),
                (ids[6], "c", "w", "e6"), (ids[6], "a", "w", "e6-relabel"), (ids[3], "b", "x", "e3"),
                (ids[9], "c", "w", "e9")]

    outcomes = []
    for mode in ("loop", "batch"):
        with session_scope(store) as s:
            p, ids = _labeled_project(s)
            _label_scenario(s, p, ids)
            pid = p.id
        with session_scope(store) as s:  # one earlier delivery: e2 again is a repeat
            p = s.get(Project, pid)
            labels.record_label(s, p, ids[2], "b", "w", "api", "e2")
        with session_scope(store) as s:
            p = s.get(Project, pid)
            if mode == "loop":
                res = [labels.record_label(s, p, i, c, w, "api", e) for i, c, w, e in batch(ids)]
            else:
                res = labels.record_labels(s, p, batch(ids), "api")
            labs, items, rows = _outcome(s, pid, res)
            outcomes.append((labs, items, rows, ids))
    (l1, i1, r1, ids1), (l2, i2, r2, ids2) = outcomes
    norm = lambda labs, ids: [(ids.index(i), *rest) for i, *rest in labs]  # noqa: E731
    assert norm(l1, ids1) == norm(l2, ids2)
    assert i1 == i2
    assert [(ids1.index(i), *r) for i, *r in r1] == [(ids2.index(i), *r) for i, *r in r2]
    # The facts themselves, not only the equality of the two paths:
    created = [c for *_, c in l2]
    assert created == [True, False, False, True, True, True, True]
    assert [lab[2] for lab in l2] == [2, 2, 2, 3, 3, 2, 3]  # queued → its queue's round; else the latest
    assert i2[6] == ("a", "labeled") and i2[0] == ("a", "labeled") and i2[1] == (None, "unlabeled")


@pytest.mark.parametrize("bad, error", [((5, "a", "e5"), "Conflict"), ((1, "zzz", "e1"), "Unprocessable"),
                                        ((0, "b", "e0"), "Conflict")])
def test_record_labels_refuses_like_record_label_and_writes_nothing(store, bad, error):
    from service import errors
    from service.core import labels

    with session_scope(store) as s:
        p, ids = _labeled_project(s)
        _label_scenario(s, p, ids)
        pid = p.id
    with session_scope(store) as s:
        labels.record_label(s, s.get(Project, pid), ids[0], "a", "w", "api", "e0")
    k, cls, ext = bad
    with pytest.raises(getattr(errors, error)):
        with session_scope(store) as s:
            labels.record_labels(s, s.get(Project, pid), [(ids[7], "a", "w", "e7"), (ids[k], cls, "w", ext)], "api")
    with session_scope(store) as s:
        assert s.get(Item, ids[7]).status == "unlabeled"
        assert s.scalar(select(Label).where(Label.external_id == "e7", Label.project_id == pid)) is None


def test_record_labels_falls_back_when_a_concurrent_delivery_wins_the_insert(store):
    """Another session commits the same delivery id between the batch's lookups and its INSERT:
    the batch's savepoint rolls back and the labels are recorded one by one (a repeat, not an error)."""
    from sqlalchemy import event

    from service.core import labels
    from service.store.db import session_factory

    with session_scope(store) as s:
        p, ids = _labeled_project(s)
        pid = p.id
    fired = []

    with session_scope(store) as s:
        def race(session, _ctx, _instances):
            if not fired:
                fired.append(1)
                other = session_factory(store)()
                other.add(Label(project_id=pid, item_id=ids[1], class_name="b", who="other", source="api",
                                external_id="e1"))
                other.commit()
                other.close()

        event.listen(s, "before_flush", race)
        res = labels.record_labels(s, s.get(Project, pid), [(ids[0], "a", "w", "e0"), (ids[1], "b", "w", "e1")],
                                   "api")
        assert fired
        assert [(lab.external_id, created) for lab, created in res] == [("e0", True), ("e1", False)]
        assert res[1][0].who == "other"
    with session_scope(store) as s:
        got = sorted((lab.external_id, lab.who) for lab in s.scalars(select(Label).where(Label.project_id == pid)))
        assert got == [("e0", "w"), ("e1", "other")]
        assert s.get(Item, ids[0]).status == "labeled"


def test_register_bulk_inserts_items_labels_shards_and_ingest_manifests(tmp_path, db_url):
    """items.register: ids in manifest order, cache shards of INGEST_CHUNK images, registration
    labels for labeled pool images only, duplicates by content skipped; a second registration
    numbers its shards after the first's; apply_ingest_result fills indices and quarantines."""
    import json

    from PIL import Image

    from service.core import items as items_svc
    from service.core import paths, projects

    settings = make_settings(tmp_path, db_url, "unused")
    upgrade_head(settings)
    (tmp_path / "imgs").mkdir()
    for k in range(7):
        Image.fromarray(np.full((4, 4), k, np.uint8), mode="L").save(tmp_path / "imgs" / f"{k}.png")
    Image.fromarray(np.full((4, 4), 0, np.uint8), mode="L").save(tmp_path / "imgs" / "dup.png")
    old = items_svc.INGEST_CHUNK
    items_svc.INGEST_CHUNK = 3
    try:
        with session_scope(settings) as s:
            p = projects.create_project(s, f"reg-{uuid.uuid4().hex[:8]}", ["a", "b"], {})
            pid = p.id
            entries = items_svc.expand_request(settings, None, [
                {"uri": "imgs/0.png", "label": "a"}, {"uri": "imgs/1.png"}, {"uri": "imgs/2.png", "label": "b"},
                {"uri": "imgs/3.png", "split": "val", "label": "a"}, {"uri": "imgs/dup.png"}, {"uri": "imgs/4.png"}],
                "pool")
            out = items_svc.register(s, settings, p, entries, "tester")
        assert out["registered"] == 5 and out["duplicates"] == 1 and len(out["ingest_jobs"]) == 2
        with session_scope(settings) as s:
            its = list(s.scalars(select(Item).where(Item.project_id == pid).order_by(Item.id)))
            assert [it.uri for it in its] == ["imgs/0.png", "imgs/1.png", "imgs/2.png", "imgs/3.png", "imgs/4.png"]
            assert [it.cache_shard for it in its] == [0, 0, 0, 1, 1]
            assert [(it.status, it.label, it.split) for it in its] == [
                ("labeled", "a", "pool"), ("unlabeled", None, "pool"), ("labeled", "b", "pool"),
                ("labeled", "a", "val"), ("unlabeled", None, "pool")]
            labs = sorted((lab.item_id, lab.class_name, lab.source, lab.who)
                          for lab in s.scalars(select(Label).where(Label.project_id == pid)))
            assert labs == [(its[0].id, "a", "registration", "tester"), (its[2].id, "b", "registration", "tester")]
            man = json.loads(paths.ingest_manifest(settings, pid, 1).read_text())
            assert man["items"] == [[its[3].id, "imgs/3.png"], [its[4].id, "imgs/4.png"]]
            assert man["out"] == str(paths.cache_file(settings, pid, 1))
        with session_scope(settings) as s:  # a later registration: shards after the first's
            entries = items_svc.expand_request(settings, None, [{"uri": "imgs/5.png"}, {"uri": "imgs/1.png"}], "pool")
            out2 = items_svc.register(s, settings, s.get(Project, pid), entries, "tester")
            assert out2["registered"] == 1 and out2["duplicates"] == 1
            assert out2["ingest_jobs"][0].endswith("-ingest-2")
    finally:
        items_svc.INGEST_CHUNK = old

    from service.store import Job

    with session_scope(settings) as s:
        job = s.scalar(select(Job).where(Job.project_id == pid, Job.kind == "ingest", Job.shard == 0))
        res = tmp_path / "res0.json"
        res.write_text(json.dumps({"shard": 0, "ok": [[its[0].id, 0], [its[2].id, 1]], "bad": [[its[1].id, "truncated"]]}))
        job.result = {"result": str(res)}
        held = s.get(Item, its[0].id)  # an object this session already holds is refreshed too
        assert held.cache_index is None
        items_svc.apply_ingest_result(s, job)
        assert (held.cache_shard, held.cache_index) == (0, 0)
    with session_scope(settings) as s:
        got = [(it.cache_index, it.status, it.reason) for it in
               s.scalars(select(Item).where(Item.id.in_([its[0].id, its[1].id, its[2].id])).order_by(Item.id))]
        assert got == [(0, "labeled", None), (None, "quarantined", "truncated"), (1, "labeled", None)]


# ------------------------------------------------------------------ selection at pool scale (issue 3)

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_reading_only_candidate_embeddings_equals_select_on_the_whole_pool(seed):
    """select_rows hands strategies.select only the rows it can reach (and loads only their
    embeddings); the batch must be the one select picks with every row and every embedding."""
    from engine.selection import select_rows
    from strategies.budget import allocate_budget, class_need
    from strategies.registry import get_strategy
    from strategies.selection import select

    rng = np.random.default_rng(seed)
    n, c, budget = 20_000, 6, 150
    spec = get_strategy("hybrid")
    columns = {k: rng.random(n) for k in spec.weights}
    pred = rng.choice(c, n, p=[0.4, 0.3, 0.2, 0.0985, 0.0015, 0.0])  # class 4 too small for its quota, 5 empty
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    excluded = np.zeros(c, bool)
    excluded[2] = seed == 1  # an excluded class, in one of the runs
    active = ~excluded
    # Images a gatekeeper recognised as an excluded class, in one of the runs.
    gated = (rng.random(n) < 0.1) if seed == 2 else None
    quota = allocate_budget(budget, class_need(rng.random(c), rng.random(c), active), active)
    for q in (quota, None):
        want = select(columns, spec.weights, pred, emb, budget, q, excluded, np.random.default_rng(7), 10, gated)
        asked = []

        def load(rows):
            asked.append(rows.size)
            return emb[rows]

        got = select_rows(columns, spec.weights, pred, budget, q, excluded, gated, np.random.default_rng(7), load)
        assert got.tolist() == want.tolist()
        assert asked and sum(asked) < n // 5  # only the candidates' embeddings were read
    # no diversity: the plain call
    want = select(columns, spec.weights, pred, None, budget, quota, excluded, np.random.default_rng(7), 10, gated)
    got = select_rows(columns, spec.weights, pred, budget, quota, excluded, gated, np.random.default_rng(7), None)
    assert got.tolist() == want.tolist()


def test_score_shards_are_read_in_place_exactly(tmp_path):
    """ScoreFile (mmap of np.savez's stored members) returns what np.load does, for every
    dtype/shape a score shard has, empty members included; a compressed file falls back."""
    from engine.scorefiles import ScoreFile

    rng = np.random.default_rng(0)
    arrays = {"item_ids": np.arange(5, 50, dtype=np.int64), "pred": rng.integers(0, 9, 45),
              "probs": rng.random((45, 9)).astype(np.float32), "embedding": rng.normal(size=(45, 33)).astype(np.float32),
              "cam_lowres": rng.random((45, 7, 7)).astype(np.float16), "col_margin": rng.random(45).astype(np.float32),
              "fortran": np.asfortranarray(rng.random((4, 3))), "empty": np.zeros((0, 7), np.float16)}
    np.savez(tmp_path / "a.npz", **arrays)
    np.savez_compressed(tmp_path / "b.npz", **arrays)
    for f in ("a.npz", "b.npz"):
        z = ScoreFile(tmp_path / f)
        assert set(z.members) == set(arrays)
        for k, v in arrays.items():
            got = z[k]
            assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v), (f, k)

"""The store on real SQLite and PostgreSQL: migrations, constraints, the model matches the schema."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from service.db import get_engine, session_scope
from service.migrate import upgrade_head
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
    from service.labelstudio import ledger

    assert {"labelstudio_annotations", "labelstudio_projects"} <= names  # revision 0002
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

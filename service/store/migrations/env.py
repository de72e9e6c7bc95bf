"""Alembic environment: the URL comes from our settings (service.settings), never alembic.ini.

service.store.migrate passes either an open connection (attributes["connection"], so the upgrade runs
inside the caller's transaction) or a URL; the plain `alembic` CLI falls back to get_settings().
"""
from __future__ import annotations

from alembic import context

from service.store import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    if config.attributes.get("url"):
        return config.attributes["url"]
    from service.settings import get_settings

    return get_settings().database_url_effective


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(conn) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table.
    context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
        return
    from service.store.db import make_engine

    engine = make_engine(_url())
    with engine.connect() as c:
        _run(c)
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

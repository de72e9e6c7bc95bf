"""Alembic environment: the URL comes from our settings (service.settings), never alembic.ini."""
from __future__ import annotations

from alembic import context

from service.store import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    settings = config.attributes.get("settings")
    if settings is None:
        from service.settings import get_settings

        settings = get_settings()
    return settings.database_url_effective


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    from service.db import make_engine

    settings = config.attributes.get("settings")
    # A fresh engine (not the cached one): migrations run once, and SQLite's batch mode
    # (ALTER TABLE emulation) wants its own connection.
    engine = make_engine(_url()) if settings is None else make_engine(settings.database_url_effective)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

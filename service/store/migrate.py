"""Run Alembic migrations programmatically (the server calls upgrade_head at start)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from service.store.db import get_engine
from service.settings import Settings, get_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.attributes["url"] = url
    return cfg


def upgrade_head(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    engine = get_engine(settings)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two servers starting on a fresh database would both create alembic_version: one
            # migrator at a time (the lock is freed at commit; the second then finds head).
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7352019)")
        cfg = alembic_config(settings.database_url_effective)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

"""Engine and sessions from settings; migrations to head.

SQLite (the embedded default) gets WAL and a busy timeout: the API's request threads, the
reconciler thread and the CLI all write the same file, and without them a writer meets
"database is locked" instead of waiting its turn.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings

_lock = threading.Lock()
_engines: dict[str, Engine] = {}

def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # safe under WAL; a commit does not fsync twice
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # check_same_thread off: sessions are per thread, but the pool hands connections across.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def get_engine(settings: Settings) -> Engine:
    url = settings.database_url_effective
    with _lock:
        if url not in _engines:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            _engines[url] = make_engine(url)
        return _engines[url]


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(settings), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    s = session_factory(settings)()
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()

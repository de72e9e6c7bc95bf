"""Engine and sessions from settings; migrations to head.

SQLite (the embedded default) gets WAL and a busy timeout: the API's request threads, the
reconciler thread and the CLI all write the same file, and without them a writer meets
"database is locked" instead of waiting its turn.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
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


def _sqlite_savepoint_in_transaction(conn, _name) -> None:
    """Before a SAVEPOINT: make sure SQLite is inside a transaction.

    pysqlite (Python < 3.12 "legacy" transaction control) sends BEGIN only before DML, so a
    session that has only read so far runs its first SAVEPOINT outside any transaction — and in
    SQLite the RELEASE of such a savepoint COMMITS. `begin_nested()` (labels.record_label,
    rounds.start_round) would then commit each label of a request on its own, and a request
    failing on its 2nd label would leave the 1st written. BEGIN IMMEDIATE here: the transaction
    is a write (waits its turn under busy_timeout, no stale-snapshot upgrade failure)."""
    dbapi = conn.connection.dbapi_connection
    if not dbapi.in_transaction:
        dbapi.execute("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    # hide_parameters: an error's text (logged, or wrapped by a caller) never carries the bound
    # values of the statement — labels, who labeled them, file paths.
    if url.startswith("sqlite"):
        # check_same_thread off: sessions are per thread, but the pool hands connections across.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "savepoint", _sqlite_savepoint_in_transaction)
        return engine
    # pool_pre_ping: after an outage the pooled connections are dead; each is tested (and
    # replaced) when checked out instead of failing the first request after recovery.
    # connect_timeout / pool_timeout: when PostgreSQL is unreachable a request fails within
    # seconds with a 503 instead of hanging on a half-open TCP connection.
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=10,
                         hide_parameters=True, connect_args=connect_args)


def create_private(path: Path) -> None:
    """A SQLite database file created 0600 (its folder too, when made here): the store holds every
    label and who gave it. SQLite gives its -wal and -shm files the database file's mode."""
    if str(path) in ("", ":memory:"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # an empty file is an empty database
    except FileExistsError:
        # Made by an older camloop (0644): made private too, with its -wal and -shm, when ours.
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            try:
                st = f.stat()
                if st.st_uid == os.getuid() and st.st_mode & 0o077:
                    f.chmod(st.st_mode & 0o700)
            except OSError:
                pass


def get_engine(settings: Settings) -> Engine:
    url = settings.database_url_effective
    with _lock:
        if url not in _engines:
            if url.startswith("sqlite:///"):
                create_private(Path(url.removeprefix("sqlite:///")))
            _engines[url] = make_engine(url)
        return _engines[url]


def dispose_engines() -> None:
    """Close every pooled connection of every engine (before a database is dropped)."""
    with _lock:
        engines = list(_engines.values())
    for engine in engines:
        engine.dispose()


def engine_made_for(url: str) -> Engine | None:
    """The engine get_engine made for this URL, if it made one (this makes none)."""
    with _lock:
        return _engines.get(url)


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
        try:
            s.rollback()
        except Exception:  # noqa: BLE001 — the connection died: the server rolls back; keep the first error
            s.invalidate()
        raise
    finally:
        s.close()


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached (or is busy), not that a query is wrong.

    OperationalError covers connection refused/reset, server gone, SQLite "database is locked"
    or "unable to open database file"; a DBAPIError with connection_invalidated is a connection
    that died mid-statement; TimeoutError is the pool giving up waiting for a connection.
    """
    if isinstance(exc, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and not is_conflict(exc):
        if exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            msg = str(exc.orig or "").lower()
            # SQLite's OperationalError also means a broken query ("no such table", syntax):
            # that is a bug to report as one, not an outage.
            return not any(k in msg for k in ("no such table", "no such column", "syntax error"))
    return False


def is_conflict(exc: BaseException) -> bool:
    """The database aborted this transaction to resolve a conflict with a concurrent one
    (PostgreSQL deadlock_detected / serialization_failure, SQLSTATE class 40): running the
    whole transaction again is the documented remedy."""
    orig = getattr(exc, "orig", None) if isinstance(exc, sa_exc.DBAPIError) else None
    return str(getattr(orig, "sqlstate", "") or "").startswith("40")

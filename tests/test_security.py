"""Security: API keys on every engineer route, read-only dashboard keys, constant-time secret
comparisons, expiring signed URLs, and no secret in any log line or answer.

Routes are enumerated from the app's OpenAPI document, so a route added later without authentication
fails `test_every_api_route_requires_a_key_and_dashboard_keys_only_read` until it is either
protected or added, on purpose, to OPEN_ROUTES.
"""
from __future__ import annotations

import hmac
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.conftest import DASHBOARD_KEY, ENGINEER_KEY, make_settings, write_digits

SECRET = "sec-webhook-secret-5d0f1a"
SIGNING = "sec-url-signing-key-88e2b9"

# Reachable without an API key, each for a reason:
OPEN_ROUTES = {
    ("GET", "/healthz"): "liveness probe",
    ("GET", "/readyz"): "readiness probe (counts of workers and waiting jobs; no item data)",
    ("GET", "/metrics"): "Prometheus scrape (counts by stage/class; no item data)",
    ("POST", "/api/v1/webhooks/label-studio"): "Label Studio: the secret header of the Label Studio project it names",
    ("GET", "/api/v1/signed/files/{rel_path}"): "expert's browser: HMAC-signed expiring URL",
    ("GET", "/api/v1/signed/heatmaps/{pid}/{iid}.png"): "expert's browser: HMAC-signed expiring URL",
}


@pytest.fixture
def app(tmp_path, queue_prefix):
    from fastapi.testclient import TestClient

    from service.api import create_app

    root = tmp_path / "data"
    root.mkdir()
    settings = make_settings(root, f"sqlite:///{tmp_path / 'camloop.db'}", queue_prefix,
                             label_studio_webhook_secret=SecretStr(SECRET), url_signing_key=SecretStr(SIGNING))
    fastapi_app = create_app(settings)
    with TestClient(fastapi_app, raise_server_exceptions=False) as client:
        yield client, settings, fastapi_app


def _fill(path: str, ids: dict) -> str:
    for k, v in ids.items():
        path = path.replace("{" + k + "}", str(v))
    return path


def _body(path: str, method: str) -> dict | None:
    if method not in ("POST", "PUT", "PATCH"):
        return None
    if path.endswith("/projects"):
        return {"name": f"p-{time.monotonic_ns()}", "classes": ["a", "b", "c"]}
    if path.endswith("/labels"):
        return {"labels": []}
    if path.endswith("/items"):
        return {"items": []}
    return {}


def test_every_api_route_requires_a_key_and_dashboard_keys_only_read(app):
    c, settings, fastapi_app = app
    eng = {"Authorization": f"Bearer {ENGINEER_KEY}"}
    r = c.post("/api/v1/projects", json={"name": "sec", "classes": ["a", "b", "c"]}, headers=eng)
    pid = r.json()["id"]
    write_digits(settings.data_dir, 1, "pool")
    c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}, headers=eng)
    iid = c.get(f"/api/v1/projects/{pid}/items", headers=eng).json()["items"][0]["id"]
    ids = {"pid": pid, "n": 1, "iid": iid, "name": "b"}

    routes = [(m.upper(), path) for path, ops in fastapi_app.openapi()["paths"].items() for m in ops]
    open_found, checked = set(), 0
    for method, path in routes:
        url, body = _fill(path, ids), _body(path, method)
        if (method, path) in OPEN_ROUTES:
            open_found.add((method, path))
            continue
        for headers in ({}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {ENGINEER_KEY}"},
                        {"Authorization": f"Bearer {ENGINEER_KEY}x"}, {"Authorization": f"Bearer {ENGINEER_KEY[:-1]}"},
                        {"Authorization": f"Bearer {SECRET}"}, {"X-Api-Key": ENGINEER_KEY}):
            r = c.request(method, url, json=body, headers={"Authorization": "", **headers})
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
            assert ENGINEER_KEY not in r.text and SECRET not in r.text
        r = c.request(method, url, json=body, headers={"Authorization": f"Bearer {DASHBOARD_KEY}"})
        if method == "GET":
            assert r.status_code not in (401, 403), (method, path, r.status_code, r.text)
        else:
            assert r.status_code == 403 and "read-only" in r.json()["detail"], (method, path, r.status_code, r.text)
        checked += 1
    assert open_found == set(OPEN_ROUTES)
    assert checked >= 15  # every /api/v1 engineer route went through the loop
    # The documentation is public (it is the contract); it carries no secret.
    for doc in ("/openapi.json", "/docs", "/redoc"):
        r = c.get(doc)
        assert r.status_code == 200 and ENGINEER_KEY not in r.text and SECRET not in r.text
    # The dashboard's writes changed nothing: still one project, its classes all active, no round.
    p = c.get(f"/api/v1/projects/{pid}", headers=eng).json()
    assert [x["status"] for x in p["classes"]] == ["active"] * 3
    assert c.get(f"/api/v1/projects/{pid}/rounds", headers=eng).json()["rounds"] == []


def test_secrets_are_compared_in_constant_time(app, monkeypatch):
    """Every comparison of a presented secret with ours goes through hmac.compare_digest (a
    timing measurement would be a flaky test; this checks the mechanism instead)."""
    c, settings, _ = app
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a if isinstance(a, bytes) else str(a).encode(), b if isinstance(b, bytes) else str(b).encode()))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    # API keys: the presented key is compared with each configured key.
    c.get("/api/v1/projects/1", headers={"Authorization": "Bearer presented-api-key"})
    assert any(b"presented-api-key" in pair and ENGINEER_KEY.encode() in pair for pair in seen), seen
    assert any(b"presented-api-key" in pair and DASHBOARD_KEY.encode() in pair for pair in seen), seen
    seen.clear()
    # Webhook secret.
    c.post("/api/v1/webhooks/label-studio", content=b"{}", headers={"X-Camloop-Webhook-Secret": "presented-secret"})
    assert any(b"presented-secret" in pair and SECRET.encode() in pair for pair in seen), seen
    seen.clear()
    # A webhook naming a Label Studio project: compared with that project's own secret.
    from service.core.signing import signing_key
    from service.labelstudio.webhook import project_secret, webhook_key
    c.post("/api/v1/webhooks/label-studio", content=b'{"action": "ANNOTATION_CREATED", "project": {"id": 77}}',
           headers={"X-Camloop-Webhook-Secret": "presented-secret"})
    own = project_secret(webhook_key(signing_key(settings), SECRET), 77).encode()
    assert any(b"presented-secret" in pair and own in pair for pair in seen), seen
    seen.clear()
    # Signed URL signature.
    from service.labelstudio.routes import FILES_PREFIX
    c.get(f"{FILES_PREFIX}/pool/x.png?exp={int(time.time()) + 60}&sig=presented-signature")
    assert any(b"presented-signature" in pair for pair in seen), seen


def test_signed_image_urls_work_only_as_signed_and_only_until_they_expire(app):
    from service.labelstudio.routes import FILES_PREFIX
    from service.core.signing import SignatureError, UrlSigner

    c, settings, _ = app
    write_digits(settings.data_dir, 2, "pool")
    # Only registered items are served (tests/test_signed_media.py): register them first.
    pid = c.post("/api/v1/projects", json={"name": f"sig-{time.monotonic_ns()}", "classes": ["a", "b"]},
                 headers={"Authorization": f"Bearer {ENGINEER_KEY}"}).json()["id"]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"},
                  headers={"Authorization": f"Bearer {ENGINEER_KEY}"}).status_code == 202
    signer = UrlSigner.from_settings(settings)
    data = (settings.data_dir / "pool/00000.png").read_bytes()
    local = lambda url: url.replace(settings.public_base_url, "")  # noqa: E731

    good = local(signer.sign(f"{FILES_PREFIX}/pool/00000.png", ttl_s=60))
    r = c.get(good)  # no API key needed: the signature is the permission
    # The 8-pixel digit as the expert is shown it: enlarged by a whole factor (28), pixel blocks.
    import io

    from PIL import Image
    shown, original = Image.open(io.BytesIO(r.content)), Image.open(io.BytesIO(data)).convert("RGB")
    assert r.status_code == 200 and shown.size == (224, 224)
    assert shown.resize(original.size, Image.NEAREST).tobytes() == original.tobytes()
    expired = local(signer.sign(f"{FILES_PREFIX}/pool/00000.png", ttl_s=-1))
    r = c.get(expired)
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    path, query = good.split("?")
    exp, sig = (kv.split("=")[1] for kv in query.split("&"))
    for tampered in (f"{path}?exp={int(exp) + 3600}&sig={sig}",              # expiry pushed back
                     f"{path.replace('00000', '00001')}?exp={exp}&sig={sig}",  # another file
                     f"{path}?exp={exp}&sig={sig[:-1]}{'1' if sig[-1] == '0' else '0'}",  # last digit changed
                     f"{path}?exp={exp}", path, f"{path}?exp=abc&sig={sig}"):
        r = c.get(tampered)
        assert r.status_code == 403, (tampered, r.status_code)
    other = UrlSigner(b"another-installation-key", settings.public_base_url)
    assert c.get(local(other.sign(f"{FILES_PREFIX}/pool/00000.png"))).status_code == 403
    # Expiry is exact: valid up to exp, refused one second after.
    t0 = 1_700_000_000
    url = signer.sign("/x", now=t0, ttl_s=10)
    e, s = (kv.split("=")[1] for kv in url.split("?")[1].split("&"))
    signer.verify("/x", e, s, now=t0 + 10)
    with pytest.raises(SignatureError, match="expired"):
        signer.verify("/x", e, s, now=t0 + 11)
    # Label Studio task URLs live long (experts take days) but not for ever.
    assert 0 < settings.label_studio_url_ttl_s <= 30 * 24 * 3600 and 0 < settings.signed_url_ttl_s <= 24 * 3600


@pytest.mark.slow
def test_no_secret_in_any_log_line_or_answer(pg_url, tmp_path):
    """`camloop serve` with every secret set (API keys, webhook secret, URL signing key, Label
    Studio token, a database password), driven through wrong keys, wrong webhook secrets, an
    unreachable Label Studio, the database cut away, a 500: no secret in the log or any answer."""
    from tests.worker_proc import REDIS_URL, TcpProxy, free_port, start_server, unique_prefix, wait_for, worker_env

    pw, ls_token = "Db-Passw0rd-c41e", "ls-token-0f9d27c3"
    secrets = [ENGINEER_KEY, DASHBOARD_KEY, SECRET, SIGNING, ls_token, pw]
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    h, p = host_port.split(":")
    proxy = TcpProxy(h, int(p))
    user = pg_url.split("//", 1)[1].split("@", 1)[0]
    db_url = pg_url.replace(f"{user}@{host_port}", f"{user}:{pw}@127.0.0.1:{proxy.port}")  # trust auth: any password
    root = tmp_path / "data"
    root.mkdir()
    write_digits(root, 2, "pool")
    port = free_port()
    env = worker_env(CAMLOOP_DATA_DIR=str(root), CAMLOOP_QUEUE_PREFIX=unique_prefix("sec"), REDIS_URL=REDIS_URL,
                     DATABASE_URL=db_url, CAMLOOP_API_KEYS=ENGINEER_KEY, CAMLOOP_DASHBOARD_KEYS=DASHBOARD_KEY,
                     CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET=SECRET, CAMLOOP_URL_SIGNING_KEY=SIGNING,
                     CAMLOOP_LABEL_STUDIO_URL=f"http://127.0.0.1:{free_port()}",  # nobody listens there
                     CAMLOOP_LABEL_STUDIO_TOKEN=ls_token, CAMLOOP_LABEL_STUDIO_POLL_INTERVAL_S="0.5",
                     CAMLOOP_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")
    log = tmp_path / "server.log"
    server = start_server({**env}, log, port)
    answers: list[str] = []
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            def call(method, path, **kw):
                r = c.request(method, path, **kw)
                answers.append(f"{r.status_code} {dict(r.headers)} {r.text}")
                return r

            def healthy():
                try:
                    return c.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(healthy, timeout=120, what="serve", proc=server, log=log)
            eng = {"Authorization": f"Bearer {ENGINEER_KEY}"}
            r = call("POST", "/api/v1/projects", json={"name": "sec", "classes": ["a", "b"]}, headers=eng)
            assert r.status_code == 201 and r.json().get("warnings"), r.text  # LS unreachable: said, not fatal
            pid = r.json()["id"]
            call("POST", f"/api/v1/projects/{pid}/items", json={"folder": "pool"}, headers=eng)
            for k in (ENGINEER_KEY + "x", SECRET, DASHBOARD_KEY[:-2], SIGNING):
                assert call("GET", f"/api/v1/projects/{pid}", headers={"Authorization": f"Bearer {k}"}).status_code == 401
            assert call("POST", f"/api/v1/projects/{pid}/rounds",
                        headers={"Authorization": f"Bearer {DASHBOARD_KEY}"}).status_code == 403
            for s in (ENGINEER_KEY, SECRET[:-1], ls_token):
                call("POST", "/api/v1/webhooks/label-studio", content=b"{}", headers={"X-Camloop-Webhook-Secret": s})
            call("POST", "/api/v1/webhooks/label-studio", content=b"[1]", headers={"X-Camloop-Webhook-Secret": SECRET})
            call("GET", f"/api/v1/signed/files/pool/00000.png?exp={int(time.time()) + 99}&sig={SIGNING}")
            r = call("POST", f"/api/v1/projects/{pid}/label-studio/sync", headers=eng)
            assert r.status_code == 502 and "Label Studio" in r.json()["detail"], r.text  # down: said, not a 500
            call("GET", f"/api/v1/projects/{pid}/review", headers=eng)
            call("GET", "/metrics")
            call("GET", "/openapi.json")
            time.sleep(1.5)  # the Label Studio poller fails a few times against the closed port
            proxy.cut()
            assert call("GET", f"/api/v1/projects/{pid}", headers=eng).status_code == 503
            call("POST", f"/api/v1/projects/{pid}/labels", headers=eng,
                 json={"labels": [{"item_id": 1, "class": "a", "client_id": "x"}]})
            proxy.restore()
    finally:
        server.terminate()
        server.wait(timeout=30)
        proxy.close()
    text = Path(log).read_text(errors="replace")
    assert "503 database unavailable" in text  # the log did record the outage (so it was looked at)
    for s in secrets:
        assert s not in text, f"secret {s[:6]}… in the server log"
        for a in answers:
            assert s not in a, f"secret {s[:6]}… in an answer: {a[:300]}"

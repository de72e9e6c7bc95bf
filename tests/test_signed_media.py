"""The two signed routes Label Studio's editor reads from the expert's browser, over real HTTP.

Cross-origin: the editor's page is on Label Studio's origin and fetches the image and overlay
from the API's, so the routes must answer CORS for the configured Label Studio origins (and
only for them, only GET/HEAD, never with credentials), while a signature stays required.
Display: small images come enlarged by a whole factor with sharp pixels, the size the overlay
has; files a browser shows as they are come untouched.
"""
from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from pydantic import SecretStr

from service.labelstudio.routes import FILES_PREFIX, HEATMAPS_PREFIX, file_url, heatmap_url
from service.settings import Settings
from service.core.signing import UrlSigner
from tests.conftest import write_digits
from tests.worker_proc import free_port

LS_ORIGIN = "http://127.0.0.1:18080"   # never contacted: only its origin matters here
FOREIGN = "http://evil.example:18080"


def _register(settings: Settings, uris: list[str]) -> None:
    """The files as items of a project: the signed-file route serves registered images only (an
    unregistered file under the data root is 404 even correctly signed: the last test here)."""
    from service.store.db import session_scope
    from service.store.models import Item

    r = httpx.post(f"{settings.public_base_url}/api/v1/projects", headers={"Authorization": "Bearer k"},
                    json={"name": "signed-media", "classes": ["a", "b"]})
    assert r.status_code == 201, r.text
    with session_scope(settings) as s:
        s.add_all([Item(project_id=r.json()["id"], uri=u, sha256=f"{i:064x}") for i, u in enumerate(uris)])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """camloop's app under uvicorn on a free port; Label Studio configured by URL only (no token:
    no poller, no push), so the default CORS origins are Label Studio's."""
    from service.api import create_app

    root = tmp_path_factory.mktemp("signed")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(root / "small.png")
    Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)).save(root / "strip.png")
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(root / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 65535, (240, 240), dtype=np.uint16)).save(root / "scan16.tif")
    rotated = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": browsers would, the model's decoder does not
    rotated.save(root / "rotated.jpg", exif=exif)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    port = free_port()
    settings = Settings(data_dir=root, database_url=f"sqlite:///{root / 'camloop.db'}",
                        label_studio_url="http://127.0.0.1:18080/", public_base_url=f"http://127.0.0.1:{port}",
                        url_signing_key=SecretStr("signed-media-key"), api_keys=SecretStr("k"))
    srv = uvicorn.Server(uvicorn.Config(create_app(settings, reconcile=False), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    _register(settings, ["small.png", "strip.png", "photo.jpg", "scan16.tif", "rotated.jpg", "broken.png",
                         "gone.png"])
    yield settings, UrlSigner.from_settings(settings), root
    srv.should_exit = True
    thread.join(timeout=10)


def test_label_studios_origin_may_read_signed_media_and_only_it(server):
    settings, signer, _ = server
    assert settings.cors_origins_effective == {LS_ORIGIN, "http://localhost:18080"}
    url = file_url(signer, "small.png")
    for origin in (LS_ORIGIN, "http://localhost:18080"):
        # A simple request (what the editor's XHR and <img crossorigin> send): the origin echoed.
        r = httpx.get(url, headers={"Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert "access-control-allow-credentials" not in r.headers and "Origin" in r.headers["vary"]
        # A preflight: answered here, GET/HEAD/OPTIONS only, cached for a while.
        r = httpx.options(url, headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == origin
        assert r.headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
        assert "access-control-allow-credentials" not in r.headers and int(r.headers["access-control-max-age"]) > 0
    # The same for the overlay route (the signature is checked before anything is rendered).
    r = httpx.options(heatmap_url(signer, 1, 1), headers={"Origin": LS_ORIGIN, "Access-Control-Request-Method": "GET"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == LS_ORIGIN
    r = httpx.get(heatmap_url(signer, 1, 1), headers={"Origin": LS_ORIGIN})
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == LS_ORIGIN  # no such project

    # Another page, another method, extra headers, or a page that wants cookies: refused.
    r = httpx.get(url, headers={"Origin": FOREIGN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the browser blocks the read
    for headers in ({"Origin": FOREIGN, "Access-Control-Request-Method": "GET"},
                    {"Origin": LS_ORIGIN, "Access-Control-Request-Method": "DELETE"},
                    {"Origin": LS_ORIGIN, "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"}):
        r = httpx.options(url, headers=headers)
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers, headers
        assert r.json()["detail"]
    # Unsigned, tampered or expired: still 403, whoever asks (CORS is no permission).
    for bad in (f"{settings.public_base_url}{FILES_PREFIX}/small.png", url.replace("sig=", "sig=0"),
                signer.sign(f"{FILES_PREFIX}/small.png", ttl_s=-1),
                f"{settings.public_base_url}{HEATMAPS_PREFIX}/1/1.png"):
        r = httpx.get(bad, headers={"Origin": LS_ORIGIN})
        assert r.status_code == 403, bad
    # Other routes are left as they were: no CORS anywhere else.
    for path in ("/healthz", "/api/v1/projects"):
        r = httpx.get(settings.public_base_url + path, headers={"Origin": LS_ORIGIN, "Authorization": "Bearer k"})
        assert "access-control-allow-origin" not in r.headers, path
    r = httpx.options(settings.public_base_url + "/api/v1/projects",
                      headers={"Origin": LS_ORIGIN, "Access-Control-Request-Method": "GET"})
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


def test_head_answers_like_get_without_a_body(server):
    _, signer, root = server
    url = file_url(signer, "photo.jpg")
    r = httpx.head(url, headers={"Origin": LS_ORIGIN})
    assert r.status_code == 200 and r.content == b"" and r.headers["access-control-allow-origin"] == LS_ORIGIN
    assert int(r.headers["content-length"]) == (root / "photo.jpg").stat().st_size
    assert httpx.head(url.replace("sig=", "sig=0")).status_code == 403


def _png(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:200]
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_small_images_are_enlarged_by_a_whole_factor_and_others_served_as_a_browser_shows_them(server):
    _, signer, root = server
    small = np.asarray(Image.open(root / "small.png").convert("RGB"))
    shown = _png(httpx.get(file_url(signer, "small.png")))
    assert shown.shape == (224, 224, 3)  # 28 px × 8: each pixel an 8 × 8 block, nothing smoothed
    assert np.array_equal(shown, np.repeat(np.repeat(small, 8, axis=0), 8, axis=1))
    strip = _png(httpx.get(file_url(signer, "strip.png")))
    assert strip.shape == (20 * 12, 50 * 12, 3)  # the shorter side decides: 20 × 12 ≥ 224
    # A photo a browser shows as it is: the file itself, byte for byte.
    r = httpx.get(file_url(signer, "photo.jpg"))
    assert r.status_code == 200 and r.content == (root / "photo.jpg").read_bytes()
    # What a browser cannot show (a 16-bit TIFF) or would show otherwise than the model saw it
    # (an EXIF rotation): a PNG of what the model's decoder sees.
    assert _png(httpx.get(file_url(signer, "scan16.tif"))).shape == (240, 240, 3)
    assert _png(httpx.get(file_url(signer, "rotated.jpg"))).shape == (240, 320, 3)
    r = httpx.get(file_url(signer, "broken.png"))
    assert r.status_code == 422 and "broken.png" in r.json()["detail"]
    r = httpx.get(file_url(signer, "gone.png"))
    assert r.status_code == 404 and "no longer exists" in r.json()["detail"]


# ------------------------------------------------------------------ what the signed route serves

def test_the_signed_file_route_serves_registered_items_only(api):
    c, settings = api
    r = c.post("/api/v1/projects", json={"name": f"signed-{time.monotonic_ns()}", "classes": ["a", "b"]})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    write_digits(settings.data_dir, 2, "pool")
    write_digits(settings.data_dir, 1, "private")  # an image under the data root nobody registered
    (settings.data_dir / "notes.txt").write_text("not for the browser")
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
    signer = UrlSigner.from_settings(settings)

    def get(rel):
        return c.get(signer.sign(f"{FILES_PREFIX}/{rel}").replace(settings.public_base_url, ""),
                     headers={"Authorization": ""})

    r = get("pool/00000.png")
    # Served as the expert is shown it: an 8 × 8 digit comes enlarged by a whole factor (service.core.display).
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:200]
    shown, small = Image.open(io.BytesIO(r.content)), Image.open(settings.data_dir / "pool/00000.png")
    assert shown.width % small.width == 0 and shown.width // small.width >= 2
    for rel in ("private/00000.png", "notes.txt"):
        r = get(rel)
        assert r.status_code == 404 and "not an image of any project" in r.json()["detail"], (rel, r.text)

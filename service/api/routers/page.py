"""The project page: HTML a person opens (service.core.page draws it from GET metrics's dict).

  GET  /projects/{pid}/page               with any key (a dashboard key is enough), or
  GET  /projects/{pid}/page?exp=&sig=     a signed link: no key, scoped to this project's page
                                          and expiring (the URL-signing key, service.core.signing)
  POST /projects/{pid}/page/link          an engineer mints such a link to share ({"url", "expires_at"})

The page is what dashboards and wall screens poll, so it is served from the same cache as GET
metrics (service.api.cache: rendered bytes, single flight, stale while revalidate). Its images
(the last batch's Grad-CAM overlays, the shortcut section's examples) are signed URLs of the
signed-media routes, relative to the page, so the page works behind a proxy and with no key in
the browser.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from service.api.auth import authenticate
from service.api.cache import PolledCache
from service.api.deps import Pid, SettingsDep, WriterDep
from service.api.routers.metrics import metrics_dict
from service.core import page as page_svc
from service.core import projects as projects_svc
from service.core.signing import SignatureError, UrlSigner
from service.labelstudio.routes import FILES_PREFIX, HEATMAPS_PREFIX
from service.settings import Settings
from service.store.db import session_scope

router = APIRouter(tags=["page"])
PREFIX = "/api/v1"
LINK_TTL_S = 7 * 24 * 3600     # a shared link's default life
LINK_MAX_TTL_S = 90 * 24 * 3600
IMAGE_WINDOW_S = 600           # image URLs change at most every 10 minutes (the browser can cache them)


def page_path(pid: int) -> str:
    return f"{PREFIX}/projects/{pid}/page"


def _relative(url: str, base: str) -> str:
    """A signed media URL (absolute) as a path relative to the page (…/projects/{pid}/page)."""
    path = url[len(base):] if url.startswith(base) else url
    assert path.startswith(PREFIX + "/"), path
    return "../../" + path[len(PREFIX) + 1:]


def _render(settings: Settings, pid: int) -> bytes:
    metrics = metrics_dict(settings, pid)
    signer = UrlSigner.from_settings(settings)
    # Image URLs signed for a window that starts on a 10-minute boundary: the same URLs for ten
    # minutes of refreshes, and never less than the configured life left.
    now = time.time() // IMAGE_WINDOW_S * IMAGE_WINDOW_S
    ttl = settings.signed_url_ttl_s + IMAGE_WINDOW_S
    with session_scope(settings) as s:
        project = projects_svc.get_project(s, pid)
        rnd, rows = page_svc.latest_batch(s, pid)
        queue = page_svc.queue_progress(s, pid)
        batch = []
        for e, it in rows:
            img = _relative(signer.sign(f"{FILES_PREFIX}/{it.uri.lstrip('/')}", now=now, ttl_s=ttl),
                            signer.base_url)
            heat = (_relative(signer.sign(f"{HEATMAPS_PREFIX}/{pid}/{it.id}.png", now=now, ttl_s=ttl),
                              signer.base_url) if e.pred else None)
            batch.append(page_svc.BatchImage(item_id=it.id, rank=e.rank, predicted=e.pred, label=it.label,
                                             status=it.status, control=bool(getattr(e, "control", False)),
                                             image_url=img, heatmap_url=heat))
        name = project.name

    def overlay(item_id: int) -> str:
        return _relative(signer.sign(f"{HEATMAPS_PREFIX}/{pid}/{int(item_id)}.png", now=now, ttl_s=ttl),
                         signer.base_url)

    # The shortcut section's examples: images whose maps were judged, so their overlays exist.
    examples = {int(i): overlay(i) for v in ((metrics.get("shortcut") or {}).get("per_class") or {}).values()
                for i in v.get("examples") or []}
    html = page_svc.render(page_svc.PageInput(
        title=f"camloop · {name}", metrics=metrics, batch=batch, queue=queue, shortcut_images=examples,
        generated=datetime.now(timezone.utc).strftime("drawn %Y-%m-%d %H:%M:%S UTC"),
        refresh_s=page_svc.REFRESH_S if page_svc.running(metrics) else None))
    return html.encode()


HEADERS = {"Content-Security-Policy": page_svc.CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
MEDIA_TYPE = "text/html; charset=utf-8"
cache = PolledCache("page", _render, MEDIA_TYPE, HEADERS)


@router.get("/projects/{pid}/page", response_class=Response,
            responses={200: {"content": {"text/html": {}}, "description": "the project page"},
                       401: {"description": "no key and no signed link"},
                       403: {"description": "a signed link that is not this page's, altered or expired"}})
async def project_page(pid: Pid, request: Request, settings: SettingsDep,
                       exp: Annotated[str | None, Query(description="signed link: expiry (unix seconds)")] = None,
                       sig: Annotated[str | None, Query(description="signed link: signature")] = None) -> Response:
    """The project page: learning curve (with random picking's, when audited), per-class accuracy
    by round with intervals, confusion matrix, stopping signal, the audit's verdict, the queue and
    the last batch's Grad-CAM grid. A dashboard key, or a signed link (POST …/page/link)."""
    if exp is not None or sig is not None:
        try:
            UrlSigner.from_settings(settings).verify(page_path(pid), exp, sig)
        except SignatureError as e:
            raise HTTPException(403, f"this link does not open this page: {e}") from None
    else:
        authenticate(request, settings)  # 401 without a key; a read-only key is enough
    # (service.api.cache.FastPolls answers a cached hit before this route is reached)
    return Response(await cache.get(settings, pid), media_type=MEDIA_TYPE, headers=HEADERS)


@router.post("/projects/{pid}/page/link")
def page_link(pid: Pid, settings: SettingsDep, _c: WriterDep,
              ttl_s: Annotated[int, Query(ge=60, le=LINK_MAX_TTL_S, description="the link's life in seconds")]
              = LINK_TTL_S) -> dict:
    """A link to this project's page that opens it without a key until it expires (share it with
    people who watch the project; anyone holding it can read the page)."""
    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)  # 404 for a project that does not exist
    now = time.time()
    url = UrlSigner.from_settings(settings).sign(page_path(pid), now=now, ttl_s=ttl_s)
    return {"url": url, "expires_at": datetime.fromtimestamp(int(now + ttl_s), timezone.utc).isoformat()}

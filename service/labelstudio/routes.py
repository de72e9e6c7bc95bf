"""HTTP entry points Label Studio (and the expert's browser) call.

  POST /api/v1/webhooks/label-studio                 webhook receiver (secret header)
  GET  /api/v1/signed/files/<path>?exp=&sig=         an image under the data root
  GET  /api/v1/signed/heatmaps/<pid>/<iid>.png?exp=&sig=   an item's Grad-CAM overlay

The browser has no camloop API key, so the two GET routes take a signed, expiring URL
instead (service.core.signing). Label Studio's editor fetches them from its own page, another
origin than the API's, so they answer cross-origin reads from the configured Label Studio
origins (SignedMediaCors); no other route does. Routes stay thin: the webhook answers within
Label Studio's 1 s timeout; the poll catches up on anything it missed.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from service.labelstudio.apply import ApplyResult, LabelSink, apply_events
from service.labelstudio.webhook import BODY_SCHEMA, ClassesOf, WebhookError, check_secret, parse_payload
from service.core.display import BadImage, display_png, shown_as_is
from service.core.signing import SignatureError, UnsafePath, UrlSigner, safe_join

WEBHOOK_PATH = "/api/v1/webhooks/label-studio"
FILES_PREFIX = "/api/v1/signed/files"
HEATMAPS_PREFIX = "/api/v1/signed/heatmaps"


def handle_webhook(body: bytes, headers, *, secret: str, classes_of: ClassesOf, sink: LabelSink) -> dict:
    """A webhook against any LabelSink, framework-free: the JSON answer, or WebhookError.

    An annotation with a class not in the project is stored (unusable, for review) and then
    reported as 422, so the error shows in Label Studio's log too and nothing is lost.
    """
    check_secret(headers, secret)
    action, events = parse_payload(body, classes_of)
    res: ApplyResult = apply_events(sink, events)
    answer = result_view(action, res)
    if res.problems:
        raise WebhookError(422, "; ".join(res.problems))
    return answer


def result_view(action: str, res: ApplyResult) -> dict:
    return {"action": action, "created": res.created, "updated": res.updated, "unchanged": res.unchanged,
            "deleted": res.deleted, "problems": res.problems, "region_notes": res.region_notes}


def webhook_router(handler: Callable[[bytes, object], dict] | None = None, *, secret: Callable[[], str] | None = None,
                   classes_of: ClassesOf | None = None, sink: Callable[[], LabelSink] | None = None,
                   on_applied: Callable[[dict], None] | None = None) -> APIRouter:
    """`handler(body, headers)` returns the JSON answer or raises WebhookError.

    Without a handler: handle_webhook against `sink()` (a LabelSink, e.g. MemorySink in tests).
    `on_applied(answer)` runs after a successful delivery (e.g. "batch fully labeled → next round").
    """
    if handler is None:
        def handler(body, headers):
            return handle_webhook(body, headers, secret=secret(), classes_of=classes_of, sink=sink())
    router = APIRouter()

    def handle(body: bytes, headers) -> dict | JSONResponse:
        try:
            answer = handler(body, headers)
        except WebhookError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status)
        if on_applied:
            on_applied(answer)
        return answer

    @router.post(WEBHOOK_PATH, tags=["label-studio"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": BODY_SCHEMA}}}})
    async def label_studio_webhook(request: Request):
        body = await request.body()
        # The handler's database work runs in the thread pool, never on the event loop: a burst
        # of webhooks must not hold up /healthz and every other request behind it.
        return await run_in_threadpool(handle, body, request.headers)

    return router


def _verify(signer: UrlSigner, path: str, request: Request) -> None:
    try:
        signer.verify(path, request.query_params.get("exp"), request.query_params.get("sig"))
    except SignatureError as e:
        raise HTTPException(403, str(e)) from None


def files_router(*, signer: Callable[[], UrlSigner], data_root: Callable[[], Path],
                 max_pixels: int | None = None, registered: Callable[[str], bool] | None = None) -> APIRouter:
    """The image of a task, as the expert is shown it (service.core.display): the file itself when a
    browser shows it as the model saw it, else its display version as PNG (small images enlarged
    by a whole factor, no smoothing, the same size as the overlay beside them).

    `registered(rel_path)`: whether the file is an image of some project; others are 404 even
    correctly signed (a leaked key or a signing bug must not open the whole data folder)."""
    router = APIRouter()

    @router.get(FILES_PREFIX + "/{rel_path:path}", tags=["label-studio"])
    def signed_file(rel_path: str, request: Request):
        _verify(signer(), f"{FILES_PREFIX}/{rel_path}", request)
        try:
            path = safe_join(data_root(), rel_path)
        except UnsafePath as e:
            raise HTTPException(400, str(e)) from None
        if registered is not None and not registered(rel_path):
            raise HTTPException(404, f"{rel_path!r} is not an image of any project")
        if not path.is_file():
            # Moved or deleted after it was queued: say so. The task stays in Label Studio and
            # the expert can skip it; the skip is recorded and nothing else breaks.
            raise HTTPException(404, f"image {rel_path!r} no longer exists in the data root")
        if shown_as_is(path):
            return FileResponse(path)
        try:
            return Response(display_png(path, max_pixels), media_type="image/png")
        except BadImage as e:
            raise HTTPException(422, f"image {rel_path!r} cannot be shown: {e.reason}") from None

    _head_too(router, FILES_PREFIX + "/{rel_path:path}", signed_file)
    return router


def heatmaps_router(*, signer: Callable[[], UrlSigner], render: Callable[[int, int], bytes]) -> APIRouter:
    """`render(project_id, item_id)` → PNG bytes (raises the store's NotFound when there is none)."""
    router = APIRouter()

    @router.get(HEATMAPS_PREFIX + "/{pid}/{iid}.png", tags=["label-studio"], response_class=Response)
    def signed_heatmap(pid: int, iid: int, request: Request):
        _verify(signer(), f"{HEATMAPS_PREFIX}/{pid}/{iid}.png", request)
        return Response(render(pid, iid), media_type="image/png")

    _head_too(router, HEATMAPS_PREFIX + "/{pid}/{iid}.png", signed_heatmap)
    return router


def _head_too(router: APIRouter, path: str, endpoint) -> None:
    """HEAD on a GET route (FastAPI answers 405 otherwise): a browser or proxy may probe an image
    before fetching it. Left out of the OpenAPI document, where it would only repeat the GET."""
    router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False, tags=["label-studio"])


def file_url(signer: UrlSigner, rel_path: str, ttl_s: int | None = None) -> str:
    """Signed URL of a file under the data root (an item's uri)."""
    return signer.sign(f"{FILES_PREFIX}/{rel_path.lstrip('/')}", ttl_s=ttl_s)


def heatmap_url(signer: UrlSigner, project_id: int, item_id: int, ttl_s: int | None = None) -> str:
    return signer.sign(f"{HEATMAPS_PREFIX}/{int(project_id)}/{int(item_id)}.png", ttl_s=ttl_s)


# -- cross-origin reads of the signed media -----------------------------------------------------

SIGNED_PREFIXES = (FILES_PREFIX + "/", HEATMAPS_PREFIX + "/")
CORS_METHODS = ("GET", "HEAD", "OPTIONS")
PREFLIGHT_MAX_AGE_S = 600


class SignedMediaCors:
    """ASGI middleware: lets Label Studio's pages read the signed image and heatmap URLs.

    Only requests under SIGNED_PREFIXES are touched, and only for an `Origin` in `origins`:
      * a preflight (OPTIONS with Access-Control-Request-Method GET or HEAD) is answered here,
        204 with the allowed methods; a foreign origin, another method or any request header
        asked for gets 403 and no CORS header, so the browser refuses the read;
      * a GET/HEAD gets `Access-Control-Allow-Origin: <that origin>` on whatever the route
        answers (errors too, so the editor can tell a 404 from a network failure).
    Never `Access-Control-Allow-Credentials` and never "*": the URLs carry their own permission
    (the signature), so the browser need not and must not send cookies with them.
    `Vary: Origin` on every answer of these routes keeps shared caches from mixing origins.
    """

    def __init__(self, app, origins: Iterable[str]):
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(SIGNED_PREFIXES):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        origin = headers.get("origin")
        allowed = origin is not None and origin in self.origins
        if scope["method"] == "OPTIONS":
            return await self._options(send, origin, allowed, headers)

        async def with_cors(msg):
            if msg["type"] == "http.response.start":
                extra = [(b"vary", b"Origin")]
                if allowed:
                    extra.append((b"access-control-allow-origin", origin.encode("latin-1")))
                msg = {**msg, "headers": [*msg.get("headers", []), *extra]}
            await send(msg)

        await self.app(scope, receive, with_cors)

    async def _options(self, send, origin: str | None, allowed: bool, headers: dict[str, str]) -> None:
        method = headers.get("access-control-request-method")
        vary = [(b"vary", b"Origin")]
        if method is None:  # not a preflight: say what the route takes
            return await _answer(send, 204, b"", [(b"allow", ", ".join(CORS_METHODS).encode()), *vary])
        asked = [h.strip() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()]
        if not allowed:
            why = f"origin {origin!r} may not read signed media (CAMLOOP_CORS_ORIGINS)"
        elif method.upper() not in ("GET", "HEAD"):
            why = f"method {method!r} is not allowed on signed media (GET, HEAD)"
        elif asked:
            why = f"request headers {', '.join(asked)} are not allowed on signed media"
        else:
            return await _answer(send, 204, b"", [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", ", ".join(CORS_METHODS).encode()),
                (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()), *vary])
        body = json.dumps({"detail": why}).encode()
        await _answer(send, 403, body, [(b"content-type", b"application/json"), *vary])


async def _answer(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})

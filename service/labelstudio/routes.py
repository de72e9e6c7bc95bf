"""HTTP entry points Label Studio (and the expert's browser) call.

  POST /api/v1/webhooks/label-studio                 webhook receiver (shared secret header)
  GET  /api/v1/signed/files/<path>?exp=&sig=         an image under the data root
  GET  /api/v1/signed/heatmaps/<pid>/<iid>.png?exp=&sig=   an item's Grad-CAM overlay

The browser has no camloop API key, so the two GET routes take a signed, expiring URL
instead (service.core.signing). Routes stay thin: the webhook answers within Label Studio's 1 s
timeout; the poll catches up on anything it missed.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from service.labelstudio.apply import ApplyResult, LabelSink, apply_events
from service.labelstudio.webhook import ClassesOf, WebhookError, check_secret, parse_payload
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
            "deleted": res.deleted, "problems": res.problems}


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

    @router.post(WEBHOOK_PATH, tags=["label-studio"])
    async def label_studio_webhook(request: Request):
        body = await request.body()
        try:
            answer = handler(body, request.headers)
        except WebhookError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status)
        if on_applied:
            on_applied(answer)
        return answer

    return router


def _verify(signer: UrlSigner, path: str, request: Request) -> None:
    try:
        signer.verify(path, request.query_params.get("exp"), request.query_params.get("sig"))
    except SignatureError as e:
        raise HTTPException(403, str(e)) from None


def files_router(*, signer: Callable[[], UrlSigner], data_root: Callable[[], Path],
                 registered: Callable[[str], bool] | None = None) -> APIRouter:
    """`registered(rel_path)`: whether the file is an image of some project; others are 404 even
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
        return FileResponse(path)

    return router


def heatmaps_router(*, signer: Callable[[], UrlSigner], render: Callable[[int, int], bytes]) -> APIRouter:
    """`render(project_id, item_id)` → PNG bytes (raises the store's NotFound when there is none)."""
    router = APIRouter()

    @router.get(HEATMAPS_PREFIX + "/{pid}/{iid}.png", tags=["label-studio"], response_class=Response)
    def signed_heatmap(pid: int, iid: int, request: Request):
        _verify(signer(), f"{HEATMAPS_PREFIX}/{pid}/{iid}.png", request)
        return Response(render(pid, iid), media_type="image/png")

    return router


def file_url(signer: UrlSigner, rel_path: str, ttl_s: int | None = None) -> str:
    """Signed URL of a file under the data root (an item's uri)."""
    return signer.sign(f"{FILES_PREFIX}/{rel_path.lstrip('/')}", ttl_s=ttl_s)


def heatmap_url(signer: UrlSigner, project_id: int, item_id: int, ttl_s: int | None = None) -> str:
    return signer.sign(f"{HEATMAPS_PREFIX}/{int(project_id)}/{int(item_id)}.png", ttl_s=ttl_s)

"""HTTP entry points Label Studio calls: the webhook receiver and the signed media files.

Routes stay thin: the webhook route checks the secret, parses, applies and answers within
Label Studio's 1 s timeout; the media route checks a signature and joins the path safely.
The API's app factory includes these routers; tests mount them on a bare FastAPI app.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse

from service.labelstudio.apply import ApplyResult, LabelSink, apply_events
from service.labelstudio.webhook import ClassesOf, WebhookError, check_secret, parse_payload
from service.signing import SignatureError, UnsafePath, UrlSigner, safe_join

WEBHOOK_PATH = "/api/v1/webhooks/label-studio"
MEDIA_PREFIX = "/api/v1/media"


def handle_webhook(body: bytes, headers, *, secret: str, classes_of: ClassesOf, sink: LabelSink) -> dict:
    """The whole webhook, framework-free: returns the JSON answer or raises WebhookError.

    An annotation with a class not in the project is stored (marked unusable, for review)
    and then reported as 422, so the error is visible in Label Studio's webhook log too.
    """
    check_secret(headers, secret)
    action, events = parse_payload(body, classes_of)
    res: ApplyResult = apply_events(sink, events)
    answer = {"action": action, "created": res.created, "updated": res.updated,
              "unchanged": res.unchanged, "deleted": res.deleted, "problems": res.problems}
    if res.problems:
        raise WebhookError(422, "; ".join(res.problems))
    return answer


def webhook_router(*, secret: Callable[[], str], classes_of: ClassesOf,
                   sink: Callable[[], LabelSink], on_applied: Callable[[dict], None] | None = None) -> APIRouter:
    """`sink()` gives the LabelSink for this request (e.g. bound to a DB session)."""
    router = APIRouter()

    @router.post(WEBHOOK_PATH)
    async def label_studio_webhook(request: Request):
        body = await request.body()
        try:
            answer = handle_webhook(body, request.headers, secret=secret(), classes_of=classes_of, sink=sink())
        except WebhookError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status)
        if on_applied:
            on_applied(answer)  # e.g. "batch fully labeled → start the next round"
        return answer

    return router


def media_router(*, signer: Callable[[], UrlSigner], data_root: Callable[[], Path]) -> APIRouter:
    """GET /api/v1/media/<path relative to the data root>?exp=…&sig=… (see media_url)."""
    router = APIRouter()

    @router.get(MEDIA_PREFIX + "/{rel_path:path}")
    def signed_media(rel_path: str, request: Request):
        q = request.query_params
        try:
            signer().verify(f"{MEDIA_PREFIX}/{rel_path}", q.get("exp"), q.get("sig"))
            path = safe_join(data_root(), rel_path)
        except SignatureError as e:
            raise HTTPException(403, str(e)) from None
        except UnsafePath as e:
            raise HTTPException(400, str(e)) from None
        if not path.is_file():
            # The image was moved or deleted after it was queued: say so; the task stays in
            # Label Studio and the expert can skip it (a skip is recorded, nothing breaks).
            raise HTTPException(404, f"image {rel_path!r} no longer exists in the data root")
        return FileResponse(path)

    return router


def media_url(signer: UrlSigner, rel_path: str, ttl_s: int | None = None) -> str:
    """Signed URL of a file under the data root, for task data (image_url)."""
    return signer.sign(f"{MEDIA_PREFIX}/{rel_path.lstrip('/')}", ttl_s=ttl_s)

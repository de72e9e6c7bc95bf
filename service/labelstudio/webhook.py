"""Label Studio webhook requests → typed events, after checking the project's own secret.

Each Label Studio project's webhook carries a secret of its own (project_secret): an HMAC of the
project's id under a key derived from the server's URL-signing key and
CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET, so neither leaves camloop, and a webhook configuration read
in one Label Studio project forges nothing for another. The receiver checks the secret against
the project the payload names (check_project_secret).

Label Studio sends each webhook once, with a 1 s timeout, and never retries; so the route
must answer fast (parse, apply, return) and the reconciliation poll catches whatever was
lost. Errors here are raised as WebhookError with the HTTP status the route should answer.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from service.labelstudio import config as cfg
from service.labelstudio.events import (MAX_ID, AnnotationDeleted, AnnotationError, AnnotationUpserted, Event,
                                       parse_annotation)

log = logging.getLogger("camloop.labelstudio")

SECRET_HEADER = "X-Camloop-Webhook-Secret"
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
# The webhook's body as the OpenAPI document shows it (Label Studio 1.x's payload, the fields camloop
# reads; others are allowed and ignored): what the fuzz of the contract generates, valid or not.
# The handler checks the same by hand (parse_payload, events.parse_annotation): a wrong type is a 400
# or a 422 naming the field, never a 500.
BODY_SCHEMA = {
    "type": "object", "required": ["action"],
    "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)},
        "project": {"type": "object", "properties": {"id": _ID}},
        "annotation": {"type": "object", "required": ["id"], "properties": {
            "id": _ID, "task": _ID, "project": _ID, "completed_by": _ID, "was_cancelled": {"type": "boolean"},
            "updated_at": {"type": "string"},
            "result": {"type": "array", "items": {"type": "object", "properties": {
                "from_name": {"type": "string"},
                "value": {"type": "object", "properties": {"choices": {"type": "array", "items": {"type": "string"}}}}}}}}},
        "task": {"type": "object", "properties": {"id": _ID, "project": _ID, "data": {"type": "object", "properties": {
            cfg.ITEM_ID: _ID, cfg.ROUND: _ID}}}},
        "annotations": {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {"id": _ID}}},
    },
}


class WebhookError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_secret(headers: Mapping[str, str], expected: str) -> None:
    """Raise 401/403 unless the secret header is `expected` (constant-time compare)."""
    if not expected:
        # Refuse rather than accept anything: an unset secret is a configuration error.
        raise WebhookError(503, "webhook secret not configured (CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET)")
    got = _presented(headers)
    if got is None:
        raise WebhookError(401, f"missing {SECRET_HEADER} header")
    if not hmac.compare_digest(got.encode(), expected.encode()):
        raise WebhookError(403, f"wrong {SECRET_HEADER}")


def _presented(headers: Mapping[str, str]) -> str | None:
    for k, v in headers.items():  # header names are case-insensitive
        if k.lower() == SECRET_HEADER.lower():
            return v
    return None


def webhook_key(server_key: bytes, configured: str) -> bytes:
    """The key every project's webhook secret is derived from: the server's secret (the URL-signing
    key) with CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET; rotating either re-keys every project."""
    return hmac.new(server_key, b"camloop-label-studio-webhook\n" + configured.encode(), hashlib.sha256).digest()


def project_secret(key: bytes, ls_project_id: int) -> str:
    """The webhook secret of one Label Studio project: HMAC-SHA256(key, "ls-project:<id>"), hex."""
    return hmac.new(key, f"ls-project:{int(ls_project_id)}".encode(), hashlib.sha256).hexdigest()


def check_project_secret(headers: Mapping[str, str], configured: str, key: bytes, ls_project_id: int | None) -> None:
    """Raise 401/403 unless the header carries the secret of the Label Studio project the payload
    names (constant-time compare). A payload naming no project (malformed, or an action about no
    project) can change nothing; it is checked against the configured secret.

    The configured secret itself (every project's secret before per-project secrets) is refused
    for a payload that names a project, with a log line: the reconciliation poll re-registers that
    project's webhook with its own secret and recovers the annotation the refused webhook carried.
    """
    if ls_project_id is None:
        check_secret(headers, configured)
        return
    if not configured:
        raise WebhookError(503, "webhook secret not configured (CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET)")
    got = _presented(headers)
    if got is None:
        raise WebhookError(401, f"missing {SECRET_HEADER} header")
    if hmac.compare_digest(got.encode(), project_secret(key, ls_project_id).encode()):
        return
    if hmac.compare_digest(got.encode(), configured.encode()):
        log.warning("webhook of Label Studio project %s refused: it carries the old shared secret, not the "
                    "project's own; the next poll re-registers the webhook with its own secret and recovers "
                    "the annotation", ls_project_id)
        raise WebhookError(403, f"wrong {SECRET_HEADER} (the shared secret of old; this project's webhook is "
                                "re-registered with its own secret at the next poll)")
    raise WebhookError(403, f"wrong {SECRET_HEADER} for Label Studio project {ls_project_id}")


ClassesOf = Callable[[int | None], Sequence[str] | None]


def project_id_of(payload: dict) -> int | None:
    """The Label Studio project a webhook payload is about (None when it does not say)."""
    for src in (payload.get("project"), payload.get("annotation"), payload.get("task")):
        if isinstance(src, dict):
            v = src.get("id") if src is payload.get("project") else src.get("project")
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID:
                return v
    return None


def parse_payload(body: bytes | str, classes: Iterable[str] | ClassesOf) -> tuple[str, list[Event]]:
    """(action, events) for one webhook body. Other actions give (action, []).

    `classes` is the project's class list, or a function from the Label Studio project id
    to it (None = not a project camloop knows → 404).
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise WebhookError(400, f"malformed JSON: {e}") from None
    except RecursionError:
        raise WebhookError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
        raise WebhookError(400, "payload is not an object with an 'action'")
    action = payload["action"]
    if action not in ACTIONS:
        return action, []  # e.g. PROJECT_UPDATED when a webhook sends all actions: ignored, not an error
    if action == "ANNOTATIONS_DELETED":
        anns = payload.get("annotations")
        if not isinstance(anns, list):
            raise WebhookError(400, "ANNOTATIONS_DELETED without an 'annotations' list (send_payload off?)")
        try:
            ids = [a["id"] for a in anns]
            if any(isinstance(i, bool) or not isinstance(i, (int, str)) for i in ids):
                raise TypeError
            ids = [int(i) for i in ids]
            if not all(0 <= i <= MAX_ID for i in ids):
                raise ValueError
            return action, [AnnotationDeleted(i) for i in ids]
        except (KeyError, TypeError, ValueError):
            raise WebhookError(400, "ANNOTATIONS_DELETED with an annotation without an integer id") from None
    if callable(classes):
        pid = project_id_of(payload)
        found = classes(pid)
        if found is None:
            raise WebhookError(404, f"Label Studio project {pid} is not connected to a camloop project")
        classes = found
    ann, task = payload.get("annotation"), payload.get("task")
    if not isinstance(ann, dict) or not isinstance(task, dict):
        raise WebhookError(400, f"{action} without 'annotation' and 'task' objects (send_payload off?)")
    try:
        ev: AnnotationUpserted = parse_annotation(ann, task, classes)
    except AnnotationError as e:
        raise WebhookError(422, str(e)) from None
    return action, [ev]

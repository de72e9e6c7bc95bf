"""Bearer API keys: engineer keys write, dashboard keys read. Keys are compared with
hmac.compare_digest and never logged nor echoed; a caller is named by a short key fingerprint: an
HMAC of the key under the server's secret (the URL-signing key), so the name shown to every
read-only key (`changed_by`, a label's `who`) cannot be used to guess the key offline."""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request

from service.core.signing import signing_key
from service.settings import Settings


@dataclass(frozen=True)
class Caller:
    who: str
    can_write: bool


def _match(token: str, keys: frozenset[str]) -> bool:
    found = False
    for k in keys:  # no early exit: time does not depend on which key matched
        found |= hmac.compare_digest(token.encode(), k.encode())
    return found


def fingerprint(secret: bytes, token: str) -> str:
    """A caller's name: 10 hex of HMAC-SHA256(server secret, key); stable for one installation."""
    return "key:" + hmac.new(secret, b"camloop-caller\n" + token.encode(), hashlib.sha256).hexdigest()[:10]


def _secret(request: Request, settings: Settings) -> bytes:
    state = request.app.state
    key = getattr(state, "caller_secret", None)
    if key is None:
        key = state.caller_secret = signing_key(settings)
    return key


def authenticate(request: Request, settings: Settings) -> Caller:
    if settings.auth_disabled:
        return Caller("local", True)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer API key", headers={"WWW-Authenticate": "Bearer"})
    token = token.strip()
    if _match(token, settings.split_keys(settings.api_keys)):
        return Caller(fingerprint(_secret(request, settings), token), True)
    if _match(token, settings.split_keys(settings.dashboard_keys)):
        return Caller(fingerprint(_secret(request, settings), token), False)
    raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})


def require_write(caller: Caller) -> Caller:
    if not caller.can_write:
        raise HTTPException(403, "this key is read-only")
    return caller

"""Bearer API keys: engineer keys write, dashboard keys read. Keys are compared with
hmac.compare_digest and never logged nor echoed; a caller is named by a short key fingerprint."""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request

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


def authenticate(request: Request, settings: Settings) -> Caller:
    if settings.auth_disabled:
        return Caller("local", True)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer API key", headers={"WWW-Authenticate": "Bearer"})
    token = token.strip()
    who = "key:" + hashlib.sha256(token.encode()).hexdigest()[:10]
    if _match(token, settings.split_keys(settings.api_keys)):
        return Caller(who, True)
    if _match(token, settings.split_keys(settings.dashboard_keys)):
        return Caller(who, False)
    raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})


def require_write(caller: Caller) -> Caller:
    if not caller.can_write:
        raise HTTPException(403, "this key is read-only")
    return caller

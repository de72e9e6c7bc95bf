"""What dashboards poll (GET /metrics, the project page): answers kept as encoded bytes per
project, recomputed at most once per reconcile_interval_s.

Single flight, stale while revalidate: when an entry expires, exactly one recompute runs while
the other requests keep getting the previous bytes; without it, every request that arrived
during a recompute missed too and ran its own (measured at 200 req/s: 4–10 concurrent
recomputes slowing each other until the server never caught up). Only a first request, or one
after a write dropped the entry, waits for the recompute. Keyed by database too: several apps
(tests) in one process must not share project ids.

`FastPolls` answers a cached dashboard poll before routing (an ASGI middleware): the key or the
signed link checked as the routes check them, then the bytes. A hit then costs the server about
what /healthz does less FastAPI's routing and dependencies; anything else (no cache entry yet, an
engineer's key, a bad key or link) goes on to the route, which answers as it always did.
"""
from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool

from service.core.signing import SignatureError, UrlSigner, signing_key
from service.settings import Settings

_ALL: dict[str, "PolledCache"] = {}


class PolledCache:
    def __init__(self, name: str, compute: Callable[[Settings, int], bytes], media_type: str,
                 headers: dict[str, str] | None = None):
        self.name, self.compute, self.media_type, self.headers = name, compute, media_type, dict(headers or {})
        self._cache: dict[tuple[str, int], tuple[float, bytes]] = {}
        self._refresh: dict[tuple[str, int], asyncio.Future] = {}
        self._generation: dict[tuple[str, int], int] = {}
        _ALL[name] = self

    @staticmethod
    def key(settings: Settings, pid: int) -> tuple[str, int]:
        return settings.database_url_effective, pid

    def forget(self, settings: Settings, pid: int) -> None:
        key = self.key(settings, pid)
        self._cache.pop(key, None)
        # A recompute that started before the write must not store what it read, nor answer a
        # read that comes after the write: the next read starts a recompute of its own.
        self._generation[key] = self._generation.get(key, 0) + 1
        self._refresh.pop(key, None)

    def fresh(self, settings: Settings, pid: int, store: bool = True) -> bytes:
        """Compute now (in the caller's thread) and keep the answer unless a write came meanwhile."""
        key = self.key(settings, pid)
        t0, generation = time.monotonic(), self._generation.get(key, 0)
        body = self.compute(settings, pid)
        if store and self._generation.get(key, 0) == generation:
            self._cache[key] = (t0, body)
        return body

    def _refresh_once(self, settings: Settings, pid: int) -> asyncio.Future:
        """The one recompute in flight for this project (started if there is none)."""
        key = self.key(settings, pid)
        fut = self._refresh.get(key)
        if fut is None:
            fut = asyncio.ensure_future(run_in_threadpool(self.fresh, settings, pid))
            self._refresh[key] = fut
            fut.add_done_callback(lambda f, k=key: self._refresh.pop(k, None) if self._refresh.get(k) is f else None)
        return fut

    def peek(self, settings: Settings, pid: int) -> bytes | None:
        """The cached answer, if any (a recompute starts in the background once it is older than
        the reconcile interval). On the event loop only."""
        hit = self._cache.get(self.key(settings, pid))
        if hit is None:
            return None
        if time.monotonic() - hit[0] >= settings.reconcile_interval_s:
            self._refresh_once(settings, pid)  # in the background; this request gets the previous answer
        return hit[1]

    async def get(self, settings: Settings, pid: int) -> bytes:
        """The cached answer, or the one recompute in flight. Runs on the event loop: a hit costs
        no thread hop."""
        hit = self.peek(settings, pid)
        if hit is not None:
            return hit
        # shield: a client that gives up must not cancel the recompute the others are waiting for
        return await asyncio.shield(self._refresh_once(settings, pid))


def forget_project(settings: Settings, pid: int) -> None:
    """A write that changes what every polled answer shows (classes, a round started)."""
    for cache in _ALL.values():
        cache.forget(settings, pid)


_POLLED = re.compile(r"/api/v1/projects/([1-9][0-9]{0,9})/(metrics|page)")


def _match(token: bytes, keys: frozenset[bytes]) -> bool:
    found = False
    for k in keys:  # no early exit, as service.api.auth
        found |= hmac.compare_digest(token, k)
    return found


class FastPolls:
    """ASGI middleware: a dashboard's GET metrics (a dashboard key) or GET page (any key, or a
    valid signed link) answered from the cache when it holds the project's answer. Engineer keys
    on GET metrics always go to the route (they read their own writes)."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings
        self.dashboard = frozenset(k.encode() for k in settings.split_keys(settings.dashboard_keys))
        self.engineer = frozenset(k.encode() for k in settings.split_keys(settings.api_keys))
        self._signer: UrlSigner | None = None

    def _signed(self, path: str, query: bytes) -> bool | None:
        """None: no link in the query; else whether it is a valid link to this path."""
        q = parse_qs(query.decode("latin-1"))
        if "exp" not in q and "sig" not in q:
            return None
        if self._signer is None:
            self._signer = UrlSigner(signing_key(self.settings), self.settings.public_base_url)
        try:
            self._signer.verify(path, (q.get("exp") or [None])[0], (q.get("sig") or [None])[0])
        except SignatureError:
            return False
        return True

    def _allowed(self, scope, what: str) -> bool:
        if what == "page":
            signed = self._signed(scope["path"], scope.get("query_string") or b"")
            if signed is not None:
                return signed
            if self.settings.auth_disabled:
                return True
        elif self.settings.auth_disabled:  # every caller writes: GET metrics answers fresh
            return False
        token = b""
        for k, v in scope.get("headers") or ():
            if k == b"authorization":
                scheme, _, token = v.partition(b" ")
                token = token.strip() if scheme.lower() == b"bearer" else b""
        if not token:
            return False
        return _match(token, self.dashboard) or (what == "page" and _match(token, self.engineer))

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            m = _POLLED.fullmatch(scope["path"])
            cache = _ALL.get(m[2]) if m else None
            if cache is not None and int(m[1]) <= 2**31 - 1 and self._allowed(scope, m[2]):
                body = cache.peek(self.settings, int(m[1]))
                if body is not None:
                    headers = [(b"content-type", cache.media_type.encode()),
                               (b"content-length", str(len(body)).encode())]
                    headers += [(k.lower().encode(), v.encode()) for k, v in cache.headers.items()]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

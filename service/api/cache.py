"""What dashboards poll (GET /metrics, the project page): answers kept as encoded bytes per
project, recomputed at most once per reconcile_interval_s.

Single flight, stale while revalidate: when an entry expires, exactly one recompute runs while
the other requests keep getting the previous bytes; without it, every request that arrived
during a recompute missed too and ran its own (measured at 200 req/s: 4–10 concurrent
recomputes slowing each other until the server never caught up). Only a first request, or one
after a write dropped the entry, waits for the recompute. Keyed by database too: several apps
(tests) in one process must not share project ids.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from service.settings import Settings

_ALL: list["PolledCache"] = []


class PolledCache:
    def __init__(self, compute: Callable[[Settings, int], bytes]):
        self.compute = compute
        self._cache: dict[tuple[str, int], tuple[float, bytes]] = {}
        self._refresh: dict[tuple[str, int], asyncio.Future] = {}
        self._generation: dict[tuple[str, int], int] = {}
        _ALL.append(self)

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

    async def get(self, settings: Settings, pid: int) -> bytes:
        """The cached answer (refreshed in the background once older than the reconcile interval),
        or the one recompute in flight. Runs on the event loop: a hit costs no thread hop."""
        hit = self._cache.get(self.key(settings, pid))
        if hit is not None:
            if time.monotonic() - hit[0] >= settings.reconcile_interval_s:
                self._refresh_once(settings, pid)  # in the background; this request gets the previous answer
            return hit[1]
        # shield: a client that gives up must not cancel the recompute the others are waiting for
        return await asyncio.shield(self._refresh_once(settings, pid))


def forget_project(settings: Settings, pid: int) -> None:
    """A write that changes what every polled answer shows (classes, a round started)."""
    for cache in _ALL:
        cache.forget(settings, pid)

"""Logging for background loops that retry every tick: a Redis or database outage should leave
one traceback and a count in the log, not a traceback twice a second until it ends."""
from __future__ import annotations

import logging
import time


class FailureStreak:
    """Call `failed()` from the loop's except block and `succeeded()` after a good tick.

    The first failure of a streak is logged with its traceback; while the same error repeats,
    one line at most every `every_s` seconds; a different error gets its traceback again; the
    end of a streak says how long it lasted and how many ticks failed."""

    def __init__(self, log: logging.Logger, what: str, every_s: float = 60.0):
        self.log, self.what, self.every_s = log, what, every_s
        self.count = 0
        self.started = 0.0
        self._last_line = 0.0
        self._last_key: tuple[str, str] | None = None

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        key = (type(exc).__name__, str(exc)[:200])
        self.count += 1
        if self.count == 1:
            self.started = now
        if key != self._last_key:
            self._last_key, self._last_line = key, now
            self.log.error("%s failed (%s in a row)", self.what, self.count, exc_info=exc)
        elif now - self._last_line >= self.every_s:
            self._last_line = now
            self.log.error("%s still failing: %s failures in %.0f s, last %s: %s",
                           self.what, self.count, now - self.started, key[0], key[1])

    def succeeded(self) -> None:
        if self.count:
            self.log.warning("%s recovered after %s failures in %.0f s",
                             self.what, self.count, time.monotonic() - self.started)
        self.count, self._last_key = 0, None

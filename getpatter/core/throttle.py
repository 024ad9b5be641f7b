"""Rate limits for what strangers can make the server do: log lines and inbound messages.

Refusing a bad request is cheap; logging a line for each of ten thousand is not (and floods
the operator's logs). `LogThrottle` writes the first line of a kind and then at most one per
`every` seconds, saying how many were left out. `TokenBucket` caps a sustained rate with a
burst, e.g. the media messages of one call.
"""

from __future__ import annotations

import logging
import time
from typing import Any

LOG_EVERY = 10.0


class LogThrottle:
    """One line per kind per `every` seconds, on `logger`, without traceback."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any) -> bool:
        """Log `msg % args` unless a line of this `kind` was logged within `every` seconds;
        True when it was written."""
        now = time.monotonic()
        if now - self._last.get(kind, -float("inf")) < self.every:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return False
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            msg += f" (and {skipped} more like it in the last {self.every:.0f} s)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)


class TokenBucket:
    """`rate` events a second on average, `burst` at once."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

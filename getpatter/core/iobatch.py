"""Batched socket reads: an idle event loop wakes for its sockets at most every few ms.

A node's media is many small messages at independent phases: each call's carrier sends a
20 ms frame whenever its own clock says, so with N calls the loop would wake N×50 times a
second, each time to run ~30 µs of Python on a cold CPU (cold caches cost several times the
warm run: measured 95 µs for one message on a node with one call, 20 µs at 50 calls). That
is why a node's CPU per call fell with the calls it held, and why two nodes of 50 calls cost
more than one of 100.

`batch_io` makes the loop, when it is about to wait, wait until `window` after its last wake
before it looks at its sockets again: the messages that arrived meanwhile are read in one
pass. Timers are untouched: if a timer (the playout tick) is due within the wait, the loop
sleeps exactly until it and runs it *before* reading the sockets, so pacing keeps its
precision and the tick is not delayed behind a batch. What a batch costs is latency on
input: a message is read at most `window` after it arrived (5 ms on average at 10 ms),
small against a turn's hundreds of ms.

The wait is the loop's own idle wait, split in two (a sleep, then the poll); it only happens
when the loop has nothing ready to run. Only asyncio's own selector loops on the real clock
are batched (not uvloop, not the virtual clock of the tests). GETPATTER_IO_BATCH_MS sets the
window (default 10; 0 turns batching off).
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ENV_WINDOW = "GETPATTER_IO_BATCH_MS"
DEFAULT_WINDOW_MS = 10.0

_Select = Callable[[float | None], list[tuple[selectors.SelectorKey, int]]]


def window_from_env() -> float:
    """The batching window in seconds from GETPATTER_IO_BATCH_MS (0: off)."""
    raw = os.environ.get(ENV_WINDOW, "")
    try:
        ms = float(raw) if raw.strip() else DEFAULT_WINDOW_MS
    except ValueError:
        log.warning("%s=%r is not a number of ms; using %g", ENV_WINDOW, raw, DEFAULT_WINDOW_MS)
        ms = DEFAULT_WINDOW_MS
    return max(0.0, min(ms, 50.0)) / 1000


class _BatchedSelect:
    """Stands in for the loop's `selector.select` while at least one user holds it."""

    def __init__(self, inner: _Select, window: float) -> None:
        self.inner = inner
        self.window = window
        self.users = 0
        self._next_poll = 0.0  # monotonic time before which an idle loop does not poll
        self._timer_woke = False  # the last wait ended for a timer, sockets not read yet
        self._flowing = False  # the last batch read something
        self.sleep: Callable[[float], None] = time.sleep
        self.now: Callable[[], float] = time.monotonic

    def __call__(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:  # the loop has work ready: no wait
            ready = self.inner(timeout)
            if self._timer_woke:  # the first read after a wake for a timer opens a batch
                self._timer_woke = False
                self._opened(ready)
            return ready
        wait = self._next_poll - self.now() if self._flowing else 0.0
        if wait > 0:
            if timeout is not None and timeout <= wait:
                # A timer is due first: wake exactly for it, and let it run before the
                # sockets are read (the loop polls again, without waiting, once it has run).
                self.sleep(timeout)
                self._timer_woke = True
                return []
            self.sleep(wait)
            if timeout is not None:
                timeout -= wait
        ready = self.inner(timeout)
        self._timer_woke = False
        self._opened(ready)
        return ready

    def _opened(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        """A batch starts now. Only while messages flow is the next one held back: a quiet
        loop (timers only, an idle node) waits on its sockets directly, one wake-up each."""
        self._flowing = bool(ready)
        self._next_poll = self.now() + self.window


def batch_io(loop: asyncio.AbstractEventLoop, window: float | None = None) -> Callable[[], None]:
    """Batch `loop`'s socket reads (see the module docstring); returns the release function.

    Users are counted: the loop's own select comes back when the last one releases. A loop
    that cannot be batched (not asyncio's selector loop, a virtual clock) is left alone."""
    window = window_from_env() if window is None else window
    selector: Any = getattr(loop, "_selector", None)
    batchable = (
        window > 0
        and isinstance(loop, asyncio.SelectorEventLoop)
        and type(loop).time is asyncio.BaseEventLoop.time  # not a virtual clock
        and selector is not None
    )
    if not batchable:
        return _nothing
    current = selector.__dict__.get("select")
    if isinstance(current, _BatchedSelect):
        batched = current
    else:
        batched = _BatchedSelect(selector.select, window)
        selector.select = batched
    batched.users += 1
    released = False

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        batched.users -= 1
        if batched.users == 0 and selector.__dict__.get("select") is batched:
            del selector.select  # the class's own method again

    return release


def _nothing() -> None:
    return None

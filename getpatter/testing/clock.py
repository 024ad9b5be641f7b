"""An event loop on a virtual clock: timers fire in order, instantly, at exact times.

Whenever the loop would sleep waiting for a timer, it jumps its clock to that timer instead.
Use it for timing logic (pacing, VAD hysteresis, barge-in) with no real sockets involved:
real I/O that takes wall time would see the clock jump past it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout is None or timeout <= 0 or self.loop is None:
            if not ready and timeout is None:
                return super().select(None)  # nothing scheduled at all: wait for real I/O
            return ready
        self.loop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """`loop.time()` is virtual and starts at `start`; `asyncio.sleep` costs no wall time."""

    def __init__(self, start: float = 1000.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = start

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


def run_virtual(coro: Coroutine[Any, Any, T], start: float = 1000.0) -> T:
    """Run `coro` to completion on a fresh `VirtualClockLoop`."""
    loop = VirtualClockLoop(start)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

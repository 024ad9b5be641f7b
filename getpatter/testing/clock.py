"""An event loop on a virtual clock: timers fire in order, instantly, at exact times.

Whenever the loop would sleep waiting for a timer, it jumps its clock to that timer instead.
Use it for timing logic (pacing, VAD hysteresis, barge-in). Work in the loop's executor (a
plain user callback, a DNS lookup) holds the clock until it is done, so a busy machine cannot
make virtual time run past a thread; other real I/O that takes wall time would still see the
clock jump past it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and self.loop is not None and self.loop.in_executor:
            # a thread is working for the loop: wait for it in real time, not virtual
            return super().select(0.05 if timeout is None else min(timeout, 0.05))
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
        self.in_executor = 0  # executor jobs not yet finished

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.in_executor += 1
        future.add_done_callback(self._executor_done)
        return future

    def _executor_done(self, _: asyncio.Future[Any]) -> None:
        self.in_executor -= 1

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

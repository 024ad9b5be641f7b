"""Bounds on the server's TCP connections: how many, how long before a request, fd limits.

An idle socket costs an attacker nothing and the server a file descriptor; ~1,100 of them
used to exhaust a 1024-fd process, so the carrier's next webhook failed. Here:

- every connection must deliver its first request's headers within `header_timeout`
  (idle and slowloris peers are closed; after a request aiohttp's keep-alive timeout applies);
- at most `limit` connections are open; past it the oldest connection that has not sent a
  request yet is closed to make room (an attacker's idle sockets go first, a carrier's
  webhook gets in), and `reserve` more are admitted only for the media socket of a call we
  are waiting for (`restricted`, checked by the server once the request line is known);
- the soft RLIMIT_NOFILE is raised to the hard limit at start, and the limit derived from it;
- asyncio's "socket.accept() out of system resource" error, logged up to a backlog's worth of
  times per loop tick, is logged at most once per `LOG_EVERY` seconds.

The guard wraps aiohttp's protocol (a plain `asyncio.Protocol` forwarding every call), so it
works on whatever aiohttp version is installed and touches none of its internals; aiohttp's
side of a connection is made only when its first bytes arrive, so a flood of idle sockets
costs the event loop little more than the accept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0  # seconds from connect to the end of the first request's headers
MAX_CONNECTIONS = 10_000  # a ceiling however many fds the process may open
RESERVE = 64  # extra connections for the media sockets of pending calls
FDS_PER_CONNECTION = 2  # headroom for each call's provider sockets, files, the store
FDS_KEPT = 256  # for everything else the process opens
LOG_EVERY = 10.0  # seconds between two "out of file descriptors" lines


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (where the OS lets us); the soft limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.info("open-file limit stays %d (could not raise it to %d: %s)", soft, target, exc)
            return soft
        log.info("open-file limit raised from %d to %d", soft, target)
        return target
    return soft


def connection_limit(fd_limit: int) -> int:
    """How many connections a process with `fd_limit` descriptors can hold and still work."""
    if fd_limit <= 0:
        return MAX_CONNECTIONS
    return max(32, min(MAX_CONNECTIONS, (fd_limit - FDS_KEPT - RESERVE) // FDS_PER_CONNECTION))


class _Guarded(asyncio.Protocol):
    """One connection: the guard's bookkeeping around aiohttp's protocol, which is only
    made once the peer sends its first bytes — an idle socket costs no handler, no parser
    and no task."""

    __slots__ = (
        "_factory",
        "_tail",
        "guard",
        "inner",
        "opened",
        "requested",
        "restricted",
        "transport",
    )

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self._factory: Callable[[], asyncio.Protocol] | None = factory
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.opened = 0.0
        self.requested = False  # the first request's headers are in
        self.restricted = False  # admitted from the reserve: only a pending call's media
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.guard._admit(self):
            self._factory = None
            transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.requested:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self.requested = True
                self.guard._requested(self)
            else:
                self._tail = seen[-3:]
        if self.inner is None:
            if self._factory is None or self.transport is None:
                return
            self.inner, self._factory = self._factory(), None
            self.inner.connection_made(self.transport)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard._forget(self)
        self._factory = None
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class ConnectionGuard:
    """The connections of one listening server."""

    def __init__(
        self,
        limit: int = MAX_CONNECTIONS,
        *,
        reserve: int = RESERVE,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.limit = limit
        self.reserve = reserve
        self.header_timeout = header_timeout
        self._open: set[_Guarded] = set()
        self._waiting: OrderedDict[_Guarded, None] = OrderedDict()  # no request yet, oldest first
        self._by_transport: dict[asyncio.BaseTransport, _Guarded] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._open)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to listen with."""
        return lambda: _Guarded(self, factory)

    def restricted(self, transport: asyncio.BaseTransport | None) -> bool:
        """Whether this request's connection came in on the reserve (see the module doc)."""
        conn = self._by_transport.get(transport) if transport is not None else None
        return conn is not None and conn.restricted

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # --- the protocol's side -------------------------------------------------------------

    def _admit(self, conn: _Guarded) -> bool:
        if len(self._open) >= self.limit:
            victim = next(iter(self._waiting), None)
            if victim is not None:
                self.evicted += 1
                self._drop(victim)
            elif len(self._open) >= self.limit + self.reserve:
                self.refused += 1
                return False
            else:
                conn.restricted = True
        assert conn.transport is not None
        conn.opened = time.monotonic()
        self._open.add(conn)
        self._waiting[conn] = None
        self._by_transport[conn.transport] = conn
        self._sweep_later()
        return True

    def _requested(self, conn: _Guarded) -> None:
        self._waiting.pop(conn, None)

    def _forget(self, conn: _Guarded) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)

    def _drop(self, conn: _Guarded) -> None:
        self._forget(conn)
        if conn.transport is not None:
            conn.transport.abort()

    def _sweep_later(self) -> None:
        if self._sweeper is None and self._waiting:
            loop = asyncio.get_running_loop()
            first = next(iter(self._waiting)).opened
            delay = max(0.05, first + self.header_timeout - time.monotonic())
            self._sweeper = loop.call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """Close the connections whose first request is overdue (the oldest are in front)."""
        self._sweeper = None
        deadline = time.monotonic() - self.header_timeout
        while self._waiting:
            conn = next(iter(self._waiting))
            if conn.opened > deadline:
                break
            self.timed_out += 1
            self._drop(conn)
        self._sweep_later()


class AcceptErrorLog:
    """asyncio logs each failed accept() of a backlog, every tick, while fds are exhausted:
    thousands of lines a second. While installed, those lines come at most every `every`
    seconds, with a count; every other exception goes to the handler that was there."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._last = -float("inf")
        self._suppressed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._previous = loop, loop.get_exception_handler()
        loop.set_exception_handler(self._handle)

    def uninstall(self) -> None:
        if self._loop is not None and self._loop.get_exception_handler() == self._handle:
            self._loop.set_exception_handler(self._previous)
        self._loop = None

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" not in str(context.get("message", "")):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self.every:
            self._suppressed += 1
            return
        self._last, suppressed, self._suppressed = now, self._suppressed, 0
        log.error(
            "cannot accept connections: %s (%d more in the last %.0f s); "
            "raise the open-file limit (ulimit -n) or put a proxy in front",
            context.get("exception"),
            suppressed,
            self.every,
        )

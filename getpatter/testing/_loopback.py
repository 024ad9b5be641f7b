"""The aiohttp scaffolding the loopback fakes share, so each one only says what it serves.

A fake sets `host` and `port` (0: a free port, replaced by the bound one on `start()`) and
implements `_routes()`, plus `_open_sockets()` if it keeps the base `drop_connections()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import ClassVar, Literal, Protocol, Self

from aiohttp import web

__all__ = ["LoopbackServer"]


class _Socket(Protocol):
    closed: bool

    @property
    def request(self) -> web.Request: ...

    @property
    def ws(self) -> web.WebSocketResponse: ...


class LoopbackServer:
    """Start/stop/`async with`/`drop_connections()` for a fake on a real local socket."""

    host: str
    port: int
    _runner: web.AppRunner | None = None
    _server_ssl: ssl.SSLContext | None = None  # set by fakes of services an SDK reaches by TLS only
    # What stop() does to live sockets; fakes differ on purpose and their tests rely on it:
    # "close" (1001, going away), "drop" (drop_connections()), "leave" (runner cleanup only).
    _on_stop: ClassVar[Literal["close", "drop", "leave"]] = "close"
    _client_max_size: ClassVar[int] = 1024**2  # aiohttp's default request body limit

    def _routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def _open_sockets(self) -> Sequence[_Socket]:
        """The live connections `drop_connections()` and `stop()` act on."""
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application(client_max_size=self._client_max_size)
        app.add_routes(self._routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self._server_ssl).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._on_stop == "close":
            await self._close_sockets()
        elif self._on_stop == "drop":
            await self.drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _close_sockets(self) -> None:
        """Tell every live client the server is going away, so none waits on a dead peer."""
        for conn in self._open_sockets():
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def drop_connections(self) -> int:
        """Kill every live socket at the TCP level (no close frame): a network failure."""
        dropped = 0
        for conn in self._open_sockets():
            conn.closed = True
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
                dropped += 1
        await asyncio.sleep(0)
        return dropped

    async def _abort_every_connection(self) -> int:
        """Abort every open connection, HTTP ones included, at the TCP level (for fakes served
        over plain HTTP, whose requests are not kept as sockets)."""
        server = self._runner.server if self._runner is not None else None
        dropped = 0
        for handler in server.connections if server is not None else ():
            transport = handler.transport
            if transport is not None:
                transport.abort()
                dropped += 1
        await asyncio.sleep(0)
        return dropped

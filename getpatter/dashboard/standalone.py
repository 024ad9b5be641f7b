"""The dashboard without an agent (`getpatter dashboard`): stored call history, served alone.

The same page and API as the dashboard of a running server, over the same store, with no
live calls. Listening beyond loopback needs a token (generated and logged once if none is
given), exactly as the server's dashboard does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web

from getpatter.core.store import Scrubber, Store, open_store, store_path
from getpatter.core.webguard import LOOPBACK_HOSTS
from getpatter.dashboard.routes import Dashboard
from getpatter.errors import PatterConfigError

if TYPE_CHECKING:
    from getpatter.core.session import CallSession

log = logging.getLogger("getpatter.dashboard")


class _NoLiveCalls:
    """The dashboard's view of a server, for history alone: no calls are live here."""

    def __init__(self, host: str) -> None:
        self.sessions: dict[str, CallSession] = {}
        self.public_host = host
        self.cluster_node = ""
        self.node_host = ""

    def remote_calls(self) -> list[dict[str, Any]]:
        return []

    async def control_call(self, call_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": False, "error": "no calls are live here: this dashboard shows history"}


class HistoryDashboard:
    """`run()` serves until `stop()`."""

    def __init__(
        self,
        location: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8001,
        token: str = "",
        mask_phone_numbers: bool = False,
    ) -> None:
        self.location = location
        self.host = host
        self.port = port
        self.token = token
        self.generated = False
        if not token and host not in LOOPBACK_HOSTS:
            self.token, self.generated = secrets.token_urlsafe(24), True
        self.scrub = Scrubber([self.token], mask_phone_numbers=mask_phone_numbers)
        self.store: Store | None = None
        self._stopped = asyncio.Event()
        self._ui: Dashboard | None = None
        self.listening: asyncio.Future[int] | None = None

    async def _open(self) -> Store:
        if not self.location.startswith(("postgresql://", "postgres://")):
            path = store_path(self.location)
            if not path.is_file():
                raise PatterConfigError(
                    f"no call history at {path} (nothing has been stored there yet): run an "
                    "agent first, or pass --db the persist= directory your app uses"
                )
        try:
            return await open_store(self.location, self.scrub, fallback=False)
        except PatterConfigError:
            raise
        except Exception as exc:
            raise PatterConfigError(
                f"cannot open the call history at {self.location}: {exc}"
            ) from None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.listening = loop.create_future()
        store = self.store = await self._open()
        ui = self._ui = Dashboard(_NoLiveCalls(self.host), store, self.scrub, self.token)
        app = web.Application(client_max_size=64 * 1024)
        app.add_routes(ui.routes())
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            try:
                await site.start()
            except OSError as exc:
                raise PatterConfigError(
                    f"cannot listen on {self.host}:{self.port}: {exc}"
                ) from None
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]
            _, total = await store.search("", 1, 1)
            shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
            where = self.location if "://" in self.location else str(store_path(self.location))
            guard = "no token: loopback only"
            if self.token:
                guard = "token required" + (
                    f" (generated): open /dashboard?token={self.token} once"
                    if self.generated
                    else ": your --token"
                )
            log.info(
                "call history %s: %d calls\n  dashboard   http://%s:%d/dashboard  (%s)\n"
                "  Ctrl-C stops",
                where,
                total,
                shown,
                self.port,
                guard,
            )
            self.listening.set_result(self.port)
            await self._stopped.wait()
        finally:
            await ui.close()
            await runner.cleanup()
            await store.close()
            if not self.listening.done():
                self.listening.cancel()

    async def stop(self) -> None:
        self._stopped.set()

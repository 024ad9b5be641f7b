"""A fake phone network's plumbing: its REST server's life, the route table that stands in for
DNS and TLS termination, the far ends it can ring, and the HTTP requests it makes to the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yarl
from aiohttp import web

from .audio import AnswerMode, AudioInput, Callee

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
HTTP_FAILURES = (aiohttp.ClientError, OSError, TimeoutError, LookupError, ValueError)


@dataclass
class Reply:
    """What came back from one request to the app."""

    status: int | None = None  # None: no HTTP response at all
    content_type: str = ""
    body: str = ""
    error: str | None = None


class PhoneNetwork:
    """The REST server (`_rest_app`), routes and far ends a carrier's fake builds on."""

    #: what the network's requests to the app say they are
    user_agent = "fake-phone-network"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._callees: dict[str, Callee] = {}
        self._routes: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # --- what a carrier provides -------------------------------------------------------------

    def _rest_app(self) -> web.Application:
        raise NotImplementedError

    async def _end_all(self) -> None:
        """Hang up every live call and wait for their last webhooks (on `stop`)."""
        raise NotImplementedError

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self._rest_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Hang up live calls (stream `stop` + close 1000), then shut the servers down."""
        await self._end_all()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- configuration ---------------------------------------------------------------------

    def route(self, public_host: str, local: str) -> None:
        """DNS + TLS termination stand-in: https://public_host/… (wss://…) is sent to
        http://local/… (ws://…) with the public Host, so what the carrier signs (a URL, a
        body) is what it would sign in production."""
        host = public_host.split("://", 1)[-1].rstrip("/")
        self._routes[host] = local.split("://", 1)[-1].rstrip("/")

    def set_callee(
        self,
        number: str,
        *,
        answer: AnswerMode = "human",
        answer_delay: float = 0.0,
        audio: AudioInput | None = None,
        machine_greeting_s: float = 2.0,
    ) -> None:
        """How `number` behaves when an outbound call or a transfer rings it. `audio` is what
        it says once answered; "no-answer" rings until the call's timeout."""
        self._callees[number] = Callee(answer, answer_delay, audio, machine_greeting_s)

    def callee(self, number: str) -> Callee:
        return self._callees.get(number, Callee())

    # --- HTTP to the app ---------------------------------------------------------------------

    def _local(self, url: str) -> str:
        """Where a public URL really goes (route table); LookupError if nowhere. The fake
        never talks to the internet: only routed hosts and loopback are reachable."""
        parts = urlsplit(url)
        target = self._routes.get(parts.netloc) or self._routes.get(parts.hostname or "")
        if target is None:
            if (parts.hostname or "") in LOOPBACK:
                return url
            raise LookupError(
                f"host {parts.netloc!r} is not routed ({type(self).__name__}.route())"
            )
        scheme = {"https": "http", "wss": "ws"}.get(parts.scheme, parts.scheme)
        return urlunsplit((scheme, target, parts.path, parts.query, ""))

    def _proxy_headers(self, url: str) -> dict[str, str]:
        """What a TLS-terminating proxy in front of the app (ngrok) would pass on."""
        parts = urlsplit(url)
        proto = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
        return {"Host": parts.netloc, "X-Forwarded-Proto": proto, "User-Agent": self.user_agent}

    async def _request_app(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None,
        headers: dict[str, str],
        timeout_s: float,
    ) -> Reply:
        """One HTTP request to the app's public `url` (through the route table)."""
        reply = Reply()
        try:
            assert self._session is not None
            async with self._session.request(
                method,
                yarl.URL(self._local(url), encoded=True),
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                reply.status = resp.status
                reply.content_type = resp.content_type
                reply.body = await resp.text(errors="replace")
        except HTTP_FAILURES as exc:
            reply.error = f"{type(exc).__name__}: {exc}"
        return reply

"""The dashboard's routes: one static page at /dashboard and a JSON API under /api/.

    GET /dashboard                    the page (no build step, no CDN: works offline)
    GET /api/calls?q=&page=&page_size= call history, newest first, searchable
    GET /api/calls/active             calls in progress (on every node sharing the database)
    POST /api/calls/{call_id}/hangup  hang up a live call, on whichever node holds it
    POST /api/calls/{call_id}/transfer  {"to": "+1555..."}: cold transfer, likewise
    GET /api/calls/{call_id}          one call: metadata, transcript, turn metrics, cost, events
    GET /api/calls.csv, /api/calls.json  export (the same `q` filter)
    GET /api/events                   Server-Sent Events: `active` (live calls), `calls` (history
                                      changed)

Without a token (a server on loopback) the dashboard answers only requests addressed to this
machine by name — `Host` localhost, 127.0.0.1 or [::1] (any port), or the configured public
host — and refuses any other `Host` with 421: a web page whose name an attacker re-points at
127.0.0.1 (DNS rebinding) reads nothing.

With a dashboard token every route needs `Authorization: Bearer <token>`. A browser can't set
that header on a page load or an EventSource, so `/dashboard?token=<token>` (and
`/api/events?token=`) is accepted once: it sets an HttpOnly, SameSite=Strict cookie (an HMAC
of the token, not the token) and redirects to the bare URL, so the token leaves the address
bar. Tokens are compared in constant time. Every response passes through the server's scrubber:
no credential of the config can appear in it, and phone numbers are masked when asked.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from getpatter.core.webguard import LOOPBACK_HOSTS

if TYPE_CHECKING:
    from getpatter.core.session import CallSession
    from getpatter.core.store import Scrubber, Store

log = logging.getLogger(__name__)

COOKIE = "getpatter_dashboard"
SSE_INTERVAL = 0.5  # seconds between looks at the live calls
SSE_PING = 15.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def host_name(host: str) -> str:
    """The name in a `Host` header (or a host[:port]), without port, brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else ""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


def _remote(row: dict[str, Any]) -> dict[str, Any]:
    """Another node's live call, in the shape of `_live` (what its heartbeat row tells)."""
    started = row.get("started_at")
    return {
        "call_id": row.get("call_id", ""),
        "caller": row.get("caller", ""),
        "callee": row.get("callee", ""),
        "direction": row.get("direction", ""),
        "state": row.get("state", ""),
        "created_at": row.get("created_at"),
        "started_at": started,
        "duration": round(time.time() - started) if started else 0,
        "turns": None,
        "last_latency_ms": None,
        "cost_total": None,
        "currency": "",
        "node": row.get("node", ""),
    }


def _page_html() -> str:
    return resources.files("getpatter.dashboard").joinpath("static/index.html").read_text("utf-8")


class ServerView(Protocol):
    """What the dashboard reads from its server: the live calls and its public host."""

    @property
    def sessions(self) -> dict[str, CallSession]: ...

    @property
    def public_host(self) -> str: ...

    @property
    def node_host(self) -> str:
        """This node's own public host, when it has one ("": none)."""

    @property
    def cluster_node(self) -> str:
        """This node's name when it is one of many sharing a database ("": alone)."""

    def remote_calls(self) -> list[dict[str, Any]]:
        """The live calls of the other nodes."""

    async def control_call(self, call_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Hang up or transfer a live call, on whichever node holds it."""


class Dashboard:
    """The dashboard of one `EmbeddedServer`."""

    def __init__(
        self,
        server: ServerView,
        store: Store,
        scrub: Scrubber,
        token: str = "",
        *,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        """`server` is the `EmbeddedServer` (or, for `getpatter dashboard`, a view with no live
        calls). `metrics` renders the Prometheus exposition served at /metrics."""
        self._metrics = metrics
        self.server = server
        self.store = store
        self.scrub = scrub
        self.token = token
        self._cookie = (
            hmac.new(token.encode(), b"getpatter-dashboard-cookie", hashlib.sha256).hexdigest()
            if token
            else ""
        )
        self._html = _page_html()
        self._version = 0  # bumped when a call is written to history
        self._closing = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        g = self._guard
        return [
            web.get("/dashboard", self._page),
            web.get("/dashboard/", self._page),
            web.get("/api/calls", g(self._calls)),
            web.get("/api/calls.csv", g(self._export_csv)),
            web.get("/api/calls.json", g(self._export_json)),
            web.get("/api/calls/active", g(self._active_calls)),
            web.get("/api/calls/{call_id}", g(self._call)),
            web.post("/api/calls/{call_id}/hangup", g(self._hangup)),
            web.post("/api/calls/{call_id}/transfer", g(self._transfer)),
            web.get("/api/events", self._events),
            web.get("/metrics", g(self._prometheus)),
        ]

    def changed(self) -> None:
        """A call was written to history (the list is out of date)."""
        self._version += 1

    async def close(self) -> None:
        """Ends every event stream (so the server can stop without waiting for them)."""
        self._closing.set()

    # --- auth ----------------------------------------------------------------------------

    def _host_ok(self, request: web.Request) -> bool:
        """With a token the token decides; without one, only names of this machine."""
        if self.token:
            return True
        host = host_name(request.headers.get("Host", ""))
        ours = {host_name(self.server.public_host), host_name(self.server.node_host)} - {""}
        return host in LOOPBACK_HOSTS or host in ours

    @staticmethod
    def _misdirected(request: web.Request) -> web.Response:
        return web.Response(
            status=421,
            text="421: this dashboard has no token, so it answers only to localhost, "
            "127.0.0.1, [::1] or the server's public host. Pass dashboard_token= to serve() "
            "to reach it by another name.",
            headers={"Cache-Control": "no-store"},
        )

    def _token_ok(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self.token.encode())

    def _authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self._token_ok(value.strip()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._cookie.encode())

    def _query_token(self, request: web.Request) -> bool | None:
        """None: no ?token=; else whether it is right."""
        offered = request.query.get("token")
        if offered is None or not self.token:
            return None
        return self._token_ok(offered)

    def _set_cookie(self, response: web.StreamResponse, request: web.Request) -> None:
        response.set_cookie(
            COOKIE,
            self._cookie,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    @staticmethod
    def _denied() -> web.Response:
        return web.json_response(
            {"error": "unauthorized: send Authorization: Bearer <dashboard token>"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="getpatter"', "Cache-Control": "no-store"},
        )

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._host_ok(request):
                return self._misdirected(request)
            if not self._authorized(request):
                return self._denied()
            return await handler(request)

        return guarded

    # --- the page ------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        if not self._host_ok(request):
            return self._misdirected(request)
        by_query = self._query_token(request)
        if by_query is True:
            response = web.Response(
                status=303, headers={"Location": "/dashboard", "Cache-Control": "no-store"}
            )
            self._set_cookie(response, request)
            return response
        if by_query is False or not self._authorized(request):
            return web.Response(
                status=401,
                text="401: this dashboard needs its token. Open /dashboard?token=<token> once "
                "(the token is printed in the server log at start-up, or is the "
                "dashboard_token= you passed to serve()).",
                headers={"WWW-Authenticate": 'Bearer realm="getpatter"'},
            )
        nonce = secrets.token_urlsafe(16)
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return web.Response(
            text=self._html.replace("__NONCE__", nonce),
            content_type="text/html",
            headers={
                "Content-Security-Policy": csp,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    # --- the API -------------------------------------------------------------------------

    def _json(self, data: Any, status: int = 200) -> web.Response:
        return web.Response(
            text=json.dumps(self.scrub(data), default=str),
            status=status,
            content_type="application/json",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    @staticmethod
    def _int(request: web.Request, name: str, default: int) -> int:
        raw = request.query.get(name, "")
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            raise web.HTTPBadRequest(text=f"{name} must be an integer") from None

    async def _calls(self, request: web.Request) -> web.StreamResponse:
        q = request.query.get("q", "")
        page = max(1, self._int(request, "page", 1))
        page_size = self._int(request, "page_size", 20)
        rows, total = await self.store.search(q, page, page_size)
        from getpatter.core.store import MAX_PAGE_SIZE

        size = min(MAX_PAGE_SIZE, max(1, page_size))
        return self._json(
            {
                "calls": rows,
                "total": total,
                "page": page,
                "page_size": size,
                "pages": (total + size - 1) // size,
            }
        )

    def _live(self, session: CallSession) -> dict[str, Any]:
        metrics = session.metrics
        last = metrics.turns[-1]["latency"]["total_ms"] if metrics.turns else None
        cost = metrics.cost(session.call_seconds())
        return {
            "call_id": session.call_id,
            "caller": session.caller,
            "callee": session.callee,
            "direction": session.direction,
            "state": session.state,
            "created_at": session.created_at,
            "started_at": session.started_at,
            "duration": round(session.call_seconds()),
            "turns": len(metrics.turns),
            "last_latency_ms": last,
            "cost_total": cost["total"],
            "currency": cost["currency"],
        }

    def _sessions(self) -> list[CallSession]:
        return [s for s in self.server.sessions.values() if s.state != "ended"]

    def _all_live(self) -> list[dict[str, Any]]:
        """This node's calls, then the other nodes' (as of their last heartbeat)."""
        node = self.server.cluster_node
        here = [{**self._live(s), **({"node": node} if node else {})} for s in self._sessions()]
        return here + [_remote(row) for row in self.server.remote_calls()]

    async def _active_calls(self, request: web.Request) -> web.StreamResponse:
        return self._json({"calls": self._all_live()})

    # --- control -------------------------------------------------------------------------

    async def _hangup(self, request: web.Request) -> web.StreamResponse:
        return await self._control(request, "hangup", {})

    async def _transfer(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        to = str(body.get("to", ""))
        if not _E164.match(to):
            return self._json({"error": "to must be an E.164 number, e.g. +15550001111"}, 400)
        return await self._control(request, "transfer", {"to": to})

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return self._json({"error": "the body must be a JSON object"}, 400)
        if not isinstance(body, dict):
            return self._json({"error": "the body must be a JSON object"}, 400)
        return body

    async def _control(self, request: web.Request, op: str, args: dict[str, Any]) -> web.Response:
        # a JSON content type is a non-simple request: another site's page cannot send it
        if request.content_type != "application/json":
            return self._json({"error": "send Content-Type: application/json"}, 415)
        call_id = request.match_info["call_id"]
        try:
            result = await self.server.control_call(call_id, op, args)
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.warning("call %s: %s not routed: %r", call_id, op, exc)
            return self._json({"error": "the call's node cannot be reached right now"}, 503)
        if result.get("ok"):
            return self._json(result)
        return self._json(result, 404 if result.get("missing") else 502)

    async def _call(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call_id"]
        for session in self._sessions():
            if session.call_id == call_id:
                return self._json({**session.record(), "active": True})
        record = await self.store.get(call_id)
        if record is None:
            return self._json({"error": f"no call {call_id!r}"}, status=404)
        return self._json({**record, "active": False})

    async def _export_csv(self, request: web.Request) -> web.StreamResponse:
        from getpatter.core.store import SUMMARY_COLUMNS

        rows = self.scrub(await self.store.export(request.query.get("q", "")))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            # a cell a spreadsheet would run as a formula is quoted as text
            writer.writerow(
                {
                    k: "'" + v if isinstance(v, str) and v.startswith(_CSV_FORMULA) else v
                    for k, v in row.items()
                }
            )
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            headers={
                "Content-Disposition": 'attachment; filename="getpatter-calls.csv"',
                "Cache-Control": "no-store",
            },
        )

    async def _export_json(self, request: web.Request) -> web.StreamResponse:
        rows = await self.store.export(request.query.get("q", ""))
        records = []
        for row in rows:
            record = await self.store.get(row["call_id"])
            if record is not None:
                records.append(record)
        response = self._json({"calls": records})
        response.headers["Content-Disposition"] = 'attachment; filename="getpatter-calls.json"'
        return response

    # --- Prometheus ----------------------------------------------------------------------

    async def _prometheus(self, request: web.Request) -> web.StreamResponse:
        if self._metrics is None:
            why = "metrics need a running agent and prometheus-client (getpatter[prometheus])"
            return web.Response(status=501, text=why + "\n")
        from getpatter.observability.prometheus import CONTENT_TYPE_LATEST

        return web.Response(
            body=self._metrics(),
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )

    # --- live ----------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if not self._host_ok(request):
            return self._misdirected(request)
        by_query = self._query_token(request)
        if by_query is False or (by_query is None and not self._authorized(request)):
            return self._denied()
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        if by_query:
            self._set_cookie(response, request)
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        last_active, last_version, last_sent = "", -1, loop.time()
        try:
            await response.write(b"retry: 2000\n\n")
            while not self._closing.is_set():
                chunks = []
                live = self._all_live()
                active = json.dumps(self.scrub({"calls": live}))
                if active != last_active:
                    chunks.append(f"event: active\ndata: {active}\n\n")
                    last_active = active
                if self._version != last_version:
                    last_version = self._version
                    chunks.append(f'event: calls\ndata: {{"version": {last_version}}}\n\n')
                if not chunks and loop.time() - last_sent > SSE_PING:
                    chunks.append(": ping\n\n")
                if chunks:
                    await response.write("".join(chunks).encode())
                    last_sent = loop.time()
                try:
                    await asyncio.wait_for(self._closing.wait(), SSE_INTERVAL)
                except TimeoutError:
                    pass
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass  # the browser went away
        return response

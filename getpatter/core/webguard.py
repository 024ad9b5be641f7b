"""What every HTTP request passes before its handler runs (an aiohttp middleware).

- A body with a `Content-Encoding` other than identity is refused with 415 before one byte of
  it is read: Twilio and Telnyx never compress, and inflating a stranger's gzip (1 MB becomes
  a gigabyte) on the event loop stalls every call. The server also runs aiohttp with
  `auto_decompress=False`, so nothing is inflated behind our back (a 405 or 404 used to
  inflate the body it was discarding).
- A connection admitted from the reserve (see `connections.py`) may only open the media
  socket of a call we are waiting for; anything else gets 503.
- A request with a body has `request_timeout` seconds to deliver it and be answered (a slow
  body is a slowloris too); WebSockets and event streams are GETs, untouched.

Refusals close the connection (the unread body is not read) and are logged at most once per
kind every few seconds, without traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from getpatter.core.throttle import LogThrottle

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 15.0  # Twilio gives a webhook 15 s; nothing of ours needs longer
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})  # names only this machine reaches

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refuse(status: int, text: str) -> web.Response:
    """A refusal that closes the connection, so whatever the peer still sends is not read."""
    response = web.Response(status=status, text=text, headers={"Cache-Control": "no-store"})
    response.force_close()
    return response


def request_guard(
    *,
    restricted: Callable[[web.Request], bool],
    reserved_for: Callable[[web.Request], bool],
    request_timeout: Callable[[], float] = lambda: REQUEST_TIMEOUT,
    throttle: LogThrottle | None = None,
) -> Middleware:
    """The middleware. `restricted(request)`: the request's connection came from the reserve;
    `reserved_for(request)`: it is the media socket of a pending call."""
    warn = throttle or LogThrottle(log)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            warn.warning(
                "encoding", "refused a %s body on %s (415)", encoding[:20], request.path[:80]
            )
            return refuse(415, "415: compressed request bodies are not accepted")
        if restricted(request) and not reserved_for(request):
            warn.warning("full", "connection limit reached: refused %s (503)", request.path[:80])
            return refuse(503, "503: too many connections")
        if not request.can_read_body:
            return await handler(request)
        try:
            async with asyncio.timeout(request_timeout()):
                return await handler(request)
        except TimeoutError:
            warn.warning("slow", "request to %s took too long; closed (408)", request.path[:80])
            return refuse(408, "408: request body too slow")

    return guard

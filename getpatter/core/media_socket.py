"""The media WebSocket of every call: who may open it, and what its messages may do.

Before a valid `start`, nothing a peer sends touches the call. The request must be a real
WebSocket upgrade for a call we are waiting for; its first messages may only be the carrier's
preamble (e.g. `connected`) and then a `start` that carries the call's token, within
`START_TIMEOUT`. Anything else — media, DTMF, marks, `stop`, bad JSON, a wrong token, silence
— closes *that* socket (1008) and leaves the call waiting for its real stream until the token
expires: whoever knows a pending call's id cannot end it, fill its record, or lock its
carrier out (any number of sockets may try at once, each for `START_TIMEOUT` at most; the
first valid `start` wins, and the token is used up only then).

Once authenticated, the stream is bounded too: messages are at most `MAX_MEDIA_MESSAGE` bytes,
arrive at most at `MEDIA_RATE` a second (burst `MEDIA_BURST`; a carrier sends 50) and DTMF at
`DTMF_RATE`; what exceeds that is dropped unread and counted on the call's record. A malformed
message (bad JSON, nesting deep enough to exhaust the parser, ...) is one malformed message:
the call carries on unless there are `MAX_MALFORMED` of them. Lines about a stranger's input
are rate-limited (`LogThrottle`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from typing import TYPE_CHECKING, Protocol

from aiohttp import WSMsgType, web

from getpatter.core.context import CALL_ID
from getpatter.core.media import (
    MAX_MEDIA_MESSAGE,
    DtmfReceived,
    Ignored,
    InboundAudio,
    MalformedMessage,
    MarkPlayed,
    MediaEvent,
    StreamStarted,
    StreamStopped,
)
from getpatter.core.throttle import LogThrottle, TokenBucket

if TYPE_CHECKING:
    from getpatter.core.carrier import Carrier
    from getpatter.core.engine import EngineCall
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)

START_TIMEOUT = 5.0  # seconds from the socket's opening to a valid `start`
CLOSE_TIMEOUT = 0.1  # seconds our close waits for the peer's close frame before dropping it
MAX_PREAMBLE = 4  # messages a carrier may send before `start` (Twilio and Telnyx send one)
MAX_MALFORMED = 50  # malformed messages tolerated on one call's stream before it is closed
MEDIA_RATE, MEDIA_BURST = 150.0, 500.0  # messages a second; a carrier sends ~55
DTMF_RATE, DTMF_BURST = 10.0, 20.0  # key presses a second


class MediaTable(Protocol):
    """What the media socket needs from the server."""

    carrier: Carrier

    def call_by_key(self, key: str) -> CallSession | None: ...
    def bind_carrier_id(self, carrier_id: str, key: str) -> None: ...
    def open_engine(self, session: CallSession) -> EngineCall: ...


class _SocketSink:
    """The playout's view of a media socket: refuse sends while the peer is not reading.

    The shared playout tick awaits each call's sends in turn, so a send must never wait for
    a peer to drain: we stop well below the size at which asyncio pauses the transport (and
    aiohttp's send would wait), and one stalled caller cannot hold up every other call.
    """

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._ws = ws
        self._transport = request.transport
        high = 64 * 1024
        if self._transport is not None:
            high = self._transport.get_write_buffer_limits()[1] or high
        self._limit = max(4096, high // 2)

    def writable(self) -> bool:
        if self._ws.closed or self._transport is None or self._transport.is_closing():
            return False
        return self._transport.get_write_buffer_size() < self._limit

    async def send(self, message: str) -> None:
        if not self._ws.closed:
            await self._ws.send_str(message)


class MediaSockets:
    """The media sockets of one server, and the single-use tokens that open them."""

    def __init__(self, table: MediaTable) -> None:
        self._table = table
        self._tokens: dict[str, tuple[str, float]] = {}  # key → (token, monotonic expiry)
        self._connected: set[str] = set()  # keys whose stream is authenticated
        self.warn = LogThrottle(log)

    # --- tokens --------------------------------------------------------------------------

    def issue(self, key: str, ttl: float) -> str:
        """A fresh token for the call `key`, valid `ttl` seconds, for its carrier to bring."""
        # letters and digits only: some carriers can carry nothing else (e.g. in a header list)
        token = secrets.token_hex(24)
        self._tokens[key] = (token, time.monotonic() + ttl)
        return token

    def awaiting(self, key: str) -> bool:
        """The call `key` still waits for its stream (its token is unused)."""
        return key in self._tokens

    def connected(self, key: str) -> bool:
        return key in self._connected

    def forget(self, key: str) -> None:
        self._tokens.pop(key, None)

    # --- the socket ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["call_id"]
        ws = web.WebSocketResponse(
            max_msg_size=MAX_MEDIA_MESSAGE,
            autoping=True,
            compress=False,  # nobody inflates a stranger's data (permessage-deflate off)
            timeout=CLOSE_TIMEOUT,
        )
        if not ws.can_prepare(request).ok:  # a plain GET: nothing of the call is touched
            return web.Response(
                status=426,
                text="426: the media socket is a WebSocket",
                headers={"Upgrade": "websocket"},
            )
        session = self._table.call_by_key(key)
        if session is None or key not in self._tokens:
            return web.Response(status=404, text="unknown or expired call")
        if key in self._connected or session.state != "pending":
            return web.Response(status=409, text="this call already has a media socket")
        await ws.prepare(request)
        start = await self._authenticate(key, session, ws)
        if start is None:
            if not ws.closed:
                # Read nothing more of a stranger: the close frame goes out, and the socket
                # is dropped without waiting for (and parsing everything before) its reply.
                if request.transport is not None:
                    request.transport.pause_reading()
                await ws.close(code=1008, message=b"unauthorized")  # ≤ CLOSE_TIMEOUT
            return ws
        self._connected.add(key)
        session.adopt_context()  # from here this task is the call's: its log lines name it
        try:
            await self._stream(session, start, ws, request)
        except Exception:
            log.exception("call %s: media socket failed", session.call_id)
        finally:
            self._connected.discard(key)
            if not ws.closed:
                await ws.close()
            await session.end(session.end_reason or "hangup")
        return ws

    async def _authenticate(
        self, key: str, session: CallSession, ws: web.WebSocketResponse
    ) -> StreamStarted | None:
        """The stream's valid `start`, or None once this socket has shown it is not the
        carrier's (see the module docstring); the call is not touched either way."""
        carrier = self._table.carrier
        parse = getattr(carrier, "parse_opening", carrier.parse)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        who = f"call {session.call_id}: media socket refused"
        for _ in range(MAX_PREAMBLE + 1):
            try:
                msg = await ws.receive(timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                self.warn.warning("no-start", "%s: no start within %.0f s", who, START_TIMEOUT)
                return None
            if msg.type != WSMsgType.TEXT:
                return None  # closed, or binary: not a carrier's stream
            try:
                event = parse(msg.data)
            except (MalformedMessage, RecursionError) as exc:
                self.warn.warning("bad-opening", "%s: %s", who, _reason(exc))
                return None
            if isinstance(event, Ignored):
                continue  # the carrier's preamble (`connected`)
            if not isinstance(event, StreamStarted):
                kind = type(event).__name__
                self.warn.warning("early", "%s: %s before a valid start", who, kind)
                return None
            if not self._token_opens(key, event, session):
                self.warn.warning("token", "%s: wrong or expired token", who)
                return None
            # From here the stream is the carrier's: its start may set the carrier's own
            # per-stream state (`parse` of an authenticated stream's messages).
            authenticated = carrier.parse(msg.data)
            return authenticated if isinstance(authenticated, StreamStarted) else event
        self.warn.warning("preamble", "%s: too many messages before start", who)
        return None

    def _token_opens(self, key: str, event: StreamStarted, session: CallSession) -> bool:
        entry = self._tokens.get(key)
        if entry is None:
            return False
        token, expires = entry
        offered = event.parameters.get("token", "")
        if time.monotonic() > expires or not hmac.compare_digest(
            offered.encode(errors="replace"), token.encode()
        ):
            return False
        if session.direction == "outbound" and session.call_id == key:
            if not event.call_id:
                return False
            session.info.call_id = event.call_id  # the carrier's id, learned at answer
            session.context.run(CALL_ID.set, event.call_id)
            self._table.bind_carrier_id(event.call_id, key)
        if session.call_id != event.call_id:
            return False
        del self._tokens[key]  # single use: it has opened the call
        return True

    async def _stream(
        self,
        session: CallSession,
        start: StreamStarted,
        ws: web.WebSocketResponse,
        request: web.Request,
    ) -> None:
        carrier = self._table.carrier
        encoder = carrier.encoder(start.stream_id)
        await session.attach_media(
            start.stream_id, encoder, _SocketSink(ws, request), self._table.open_engine(session)
        )
        messages = TokenBucket(MEDIA_RATE, MEDIA_BURST)
        keys = TokenBucket(DTMF_RATE, DTMF_BURST)
        malformed = dropped = 0
        try:
            while True:
                msg = await ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    return
                if msg.type == WSMsgType.ERROR:
                    self.warn.warning(
                        "ws-error",
                        "call %s: media socket error: %s",
                        session.call_id,
                        ws.exception(),
                    )
                    session.end_reason = session.end_reason or "media_error"
                    return
                if not messages.take():
                    dropped += 1
                    if dropped == 1:
                        self.warn.warning(
                            "flood",
                            "call %s: media messages over %.0f/s dropped",
                            session.call_id,
                            MEDIA_RATE,
                        )
                    continue
                event: MediaEvent | None = None
                problem = ""
                if msg.type != WSMsgType.TEXT:
                    problem = "not a text message"
                else:
                    try:
                        event = carrier.parse(msg.data)
                    except (MalformedMessage, RecursionError) as exc:
                        problem = _reason(exc)
                if event is None:
                    malformed += 1
                    self.warn.warning(
                        "malformed",
                        "call %s: malformed media message: %s",
                        session.call_id,
                        problem,
                    )
                    if malformed > MAX_MALFORMED:
                        log.error("call %s: too many malformed messages; closing", session.call_id)
                        session.end_reason = session.end_reason or "protocol_error"
                        await ws.close(code=1008, message=b"protocol error")
                        return
                    continue
                if isinstance(event, InboundAudio):
                    session.push_audio(event)
                elif isinstance(event, MarkPlayed):
                    session.on_mark(event.name)
                elif isinstance(event, DtmfReceived):
                    if keys.take():
                        await session.on_dtmf(event.digit)
                    else:
                        dropped += 1
                elif isinstance(event, StreamStopped):
                    session.end_reason = session.end_reason or "hangup"
                    return
        finally:
            if dropped or malformed:
                session.event("media_refused", dropped=dropped, malformed=malformed)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:200]

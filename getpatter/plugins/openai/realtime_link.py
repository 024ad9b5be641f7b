"""A call's connection to OpenAI Realtime: the outbox, the sender, the session handshake.

One `RealtimeLink` lives as long as the call; each `open()` is a new WebSocket and so a new
Realtime session (`number` counts them). Every client event goes through the outbox and one
sender task, so events reach the model in the order they were queued and the socket has one
writer. The caller's audio waits in the outbox while the link is down (up to
`MAX_QUEUED_AUDIO_MS`, oldest dropped first); control events queued for a session that is gone
are dropped when the next one opens. Audio flows only after `session.updated`: before it, the
model would read our μ-law as its default 24 kHz PCM.

Caller audio goes out in `APPEND_MS` appends, not one per 20 ms carrier frame: each message
through the SDK's WebSocket costs about as much CPU as everything else the bridge does with a
frame. The price is that the model hears the caller up to 40 ms (on average 20 ms) later; it
does not delay barge-in, which our own VAD on the carrier audio triggers, and it is small next
to the model's end-of-turn silence (500 ms by default). A control event first flushes the audio
before it, so the model sees events and audio in the order they happened.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from getpatter.errors import PatterConnectionError, ProviderError

if TYPE_CHECKING:
    from openai.resources.realtime.realtime import AsyncRealtimeConnection

    from getpatter.core.session import CallSession
    from getpatter.plugins.openai.realtime import OpenAIRealtime

log = logging.getLogger(__name__)

APPEND_MS: Final = 60  # caller audio per input_audio_buffer.append
APPEND_BYTES: Final = APPEND_MS * 8  # audio/pcmu: 8 kHz, one byte a sample
MAX_QUEUED_AUDIO_MS: Final = 10_000  # kept while the model is unreachable, oldest dropped
MAX_QUEUED_APPENDS: Final = MAX_QUEUED_AUDIO_MS // APPEND_MS
SESSION_TIMEOUT: Final = 10.0  # session.update → session.updated

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]


class RealtimeLink:
    def __init__(self, engine: OpenAIRealtime, call: CallSession, handle: EventHandler) -> None:
        self.engine = engine
        self.call = call
        self.number = 0  # sessions opened so far: 1 for the first, 2 after a reconnect
        self._handle = handle
        self._conn: AsyncRealtimeConnection | None = None
        self._outbox: deque[str | dict[str, Any]] = deque()
        self._audio_queued = 0  # appends in the outbox
        self._batch = bytearray()  # caller audio not yet in an append
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    # --- sending -------------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        """Queue a client event (never blocks), after the caller audio that came before it."""
        self._flush_audio()
        self._outbox.append(event)
        self._wake.set()

    def send_audio(self, payload: bytes) -> None:
        """Queue caller audio exactly as the carrier sent it (never blocks)."""
        self._batch += payload
        if len(self._batch) >= APPEND_BYTES:
            self._flush_audio()
            self._wake.set()

    def _flush_audio(self) -> None:
        if not self._batch:
            return
        b64 = base64.b64encode(self._batch).decode("ascii")  # base64 needs no JSON escaping
        self._batch.clear()
        self._outbox.append(f'{{"type":"input_audio_buffer.append","audio":"{b64}"}}')
        self._audio_queued += 1
        if self._audio_queued > MAX_QUEUED_APPENDS:
            for i, item in enumerate(self._outbox):
                if isinstance(item, str):
                    del self._outbox[i]
                    self._audio_queued -= 1
                    break

    async def _send_loop(self, conn: AsyncRealtimeConnection) -> None:
        while True:
            while not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            item = self._outbox[0]
            data = item if isinstance(item, str) else json.dumps(item)
            try:
                # the SDK's typed send() would re-validate every 20 ms audio frame
                await conn.send_raw(data)
            except Exception as exc:  # the socket is gone: the receiver notices and reopens
                log.debug("call %s: Realtime send failed: %r", self.call.call_id, exc)
                return
            self._outbox.popleft()
            if isinstance(item, str):
                self._audio_queued -= 1

    # --- life ----------------------------------------------------------------------------

    async def open(self, session: dict[str, Any]) -> None:
        """Connect and configure a new session, then let the outbox flow.

        Raises PatterConnectionError (unreachable, refused, dropped during setup) or
        ProviderError (the model refused the session settings).
        """
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        conn = await self.engine.connect()
        self._conn = conn
        self.number += 1
        kept = [e for e in self._outbox if isinstance(e, str)]  # audio only: see module doc
        self._outbox.clear()
        self._outbox.extend(kept)
        update_id = f"evt_setup_{secrets.token_hex(4)}"
        update = {"type": "session.update", "event_id": update_id, "session": session}
        try:
            await conn.send_raw(json.dumps(update))
            async with asyncio.timeout(SESSION_TIMEOUT):
                while True:
                    event = json.loads(await conn.recv_bytes())
                    kind = event.get("type")
                    if kind == "session.updated":
                        break
                    error = event.get("error") or {}
                    if kind == "error" and error.get("event_id") == update_id:
                        raise ProviderError(
                            f"OpenAI Realtime refused the session settings: "
                            f"{error.get('code')}: {error.get('message')}"
                        )
                    await self._handle(event)
        except BaseException as exc:
            await self._discard(conn)
            if isinstance(exc, PatterConnectionError | ProviderError | asyncio.CancelledError):
                raise
            if isinstance(exc, TimeoutError):
                raise PatterConnectionError("OpenAI Realtime never confirmed the session") from None
            if not isinstance(exc, Exception):
                raise
            raise PatterConnectionError(f"OpenAI Realtime session setup failed: {exc!r}") from None
        self._sender = self.call.spawn(self._send_loop(conn), "openai-realtime-send")
        self._wake.set()

    async def receive(self) -> None:
        """Hand every server event to the handler, in order, until the socket closes."""
        conn = self._conn
        if conn is None:
            return
        while True:
            try:
                raw = await conn.recv_bytes()
            except Exception as exc:  # closed, by us or by the network
                log.debug("call %s: Realtime socket closed: %r", self.call.call_id, exc)
                return
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("call %s: Realtime sent non-JSON: %.80r", self.call.call_id, raw)
                continue
            if isinstance(event, dict):
                await self._handle(event)

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        if self._conn is not None:
            await self._discard(self._conn)

    async def _discard(self, conn: AsyncRealtimeConnection) -> None:
        if self._conn is conn:
            self._conn = None
        try:
            async with asyncio.timeout(2):
                await conn.close()
        except Exception as exc:
            log.debug("call %s: closing a Realtime socket: %r", self.call.call_id, exc)

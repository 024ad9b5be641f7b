"""OpenAI Realtime's wire: the outbox, the sender, the session handshake, and translating
its events to and from the core realtime contract (`getpatter.core.realtime`).

One `OpenAIRealtimeWire` lives as long as the call; each `open()` is a new WebSocket and so a
new Realtime session (`number` counts them). Every client event goes through the outbox and
one sender task, so events reach the model in the order they were queued and the socket has
one writer. The caller's audio waits in the outbox while the link is down (up to
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
import binascii
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from getpatter.core.realtime import say_exactly
from getpatter.core.realtime_wire import (
    AgentAudio,
    AgentAudioDone,
    AgentText,
    AgentTextDone,
    CallerSpeechStarted,
    CallerText,
    EventHandler,
    ModelError,
    Outbox,
    RealtimeEvent,
    ResponseDone,
    ResponseStarted,
    SessionSetup,
    ToolCallRequested,
    ToolResult,
    Usage,
)
from getpatter.errors import PatterConnectionError, ProviderError

if TYPE_CHECKING:
    from openai.resources.realtime.realtime import AsyncRealtimeConnection

    from getpatter.core.media import InboundAudio
    from getpatter.core.session import CallSession
    from getpatter.plugins.openai.realtime import OpenAIRealtime

log = logging.getLogger(__name__)

APPEND_MS: Final = 60  # caller audio per input_audio_buffer.append
APPEND_BYTES: Final = APPEND_MS * 8  # audio/pcmu: 8 kHz, one byte a sample
MAX_QUEUED_AUDIO_MS: Final = 10_000  # kept while the model is unreachable, oldest dropped
MAX_QUEUED_APPENDS: Final = MAX_QUEUED_AUDIO_MS // APPEND_MS
SESSION_TIMEOUT: Final = 10.0  # session.update → session.updated
SCRIPTED_KEY: Final = "getpatter"  # response metadata marking responses whose text we chose


class OpenAIRealtimeWire:
    """A `RealtimeWire` speaking the OpenAI Realtime (GA) protocol."""

    def __init__(self, engine: OpenAIRealtime, call: CallSession, handle: EventHandler) -> None:
        self.engine = engine
        self.call = call
        self.number = 0  # sessions opened so far: 1 for the first, 2 after a reconnect
        self._handle = handle
        self._conn: AsyncRealtimeConnection | None = None
        self._outbox: Outbox[str | dict[str, Any]] = Outbox(
            APPEND_BYTES, MAX_QUEUED_APPENDS, _append
        )
        self._sender: asyncio.Task[None] | None = None

    # --- the core's commands -------------------------------------------------------------

    def send_audio(self, audio: InboundAudio) -> None:
        """Queue caller audio exactly as the carrier sent it (never blocks)."""
        self._outbox.audio(audio.payload)

    def respond(self, say: str | None = None) -> None:
        if say is None:
            self._send({"type": "response.create"})
            return
        response = {"instructions": say_exactly(say), "metadata": {SCRIPTED_KEY: "scripted"}}
        self._send({"type": "response.create", "response": response})

    def cancel(self, response_id: str) -> None:
        self._send({"type": "response.cancel", "response_id": response_id})

    def truncate(self, item_id: str, heard_ms: int) -> None:
        self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": heard_ms,
            }
        )

    def add_user_text(self, text: str) -> None:
        content = [{"type": "input_text", "text": text}]
        item = {"type": "message", "role": "user", "content": content}
        self._send({"type": "conversation.item.create", "item": item})

    def send_tool_results(self, results: Sequence[ToolResult], respond: bool) -> None:
        for r in results:
            item = {"type": "function_call_output", "call_id": r.call_id, "output": r.output}
            self._send({"type": "conversation.item.create", "item": item})
        if respond:
            self._send({"type": "response.create"})

    def caller_turn(self, kind: str) -> None:
        if kind == "speech_ended":  # our VAD ends the turn: the model answers
            self._send({"type": "input_audio_buffer.commit"})
            self._send({"type": "response.create"})

    def _send(self, event: dict[str, Any]) -> None:
        self._outbox.control(event)

    # --- life ----------------------------------------------------------------------------

    async def open(self, setup: SessionSetup) -> None:
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
        self._outbox.new_session()
        update_id = f"evt_setup_{secrets.token_hex(4)}"
        update = {
            "type": "session.update",
            "event_id": update_id,
            "session": self.engine.session_config(setup),
        }
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
                    await self._translate(event)
        except BaseException as exc:
            await self._discard(conn)
            if isinstance(exc, PatterConnectionError | ProviderError | asyncio.CancelledError):
                raise
            if isinstance(exc, TimeoutError):
                raise PatterConnectionError("OpenAI Realtime never confirmed the session") from None
            if not isinstance(exc, Exception):
                raise
            raise PatterConnectionError(f"OpenAI Realtime session setup failed: {exc!r}") from None
        what = f"call {self.call.call_id}: OpenAI Realtime"
        self._sender = self.call.spawn(self._outbox.run(_sender(conn), what), "openai-send")

    async def receive(self) -> None:
        """Hand every server event to the core, in order, until the socket closes."""
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
                await self._translate(event)

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

    # --- translating server events -------------------------------------------------------

    async def _translate(self, event: dict[str, Any]) -> None:
        out = self._event(event)
        if out is not None:
            await self._handle(out)

    def _event(self, event: dict[str, Any]) -> RealtimeEvent | None:
        kind = event.get("type")
        rid = str(event.get("response_id") or "")
        item = str(event.get("item_id") or "")
        if kind == "response.output_audio.delta":
            try:
                audio = base64.b64decode(event.get("delta") or "", validate=True)
            except (ValueError, binascii.Error):
                log.warning("call %s: bad base64 in a Realtime audio delta", self.call.call_id)
                return None
            return AgentAudio(rid, item, audio)
        if kind == "response.output_audio_transcript.delta":
            return AgentText(rid, item, str(event.get("delta") or ""))
        if kind == "response.output_audio.done":
            return AgentAudioDone(rid, item)
        if kind == "response.output_audio_transcript.done":
            return AgentTextDone(rid, item, str(event.get("transcript") or ""))
        if kind == "input_audio_buffer.speech_started":
            return CallerSpeechStarted()
        if kind == "conversation.item.input_audio_transcription.completed":
            return CallerText(str(event.get("transcript") or ""))
        if kind == "response.created":
            response = event.get("response") or {}
            metadata = response.get("metadata") or {}
            scripted = isinstance(metadata, dict) and SCRIPTED_KEY in metadata
            return ResponseStarted(str(response.get("id") or ""), scripted)
        if kind == "response.function_call_arguments.done":
            return ToolCallRequested(
                rid,
                str(event.get("call_id") or ""),
                str(event.get("name") or ""),
                str(event.get("arguments") or ""),
            )
        if kind == "response.done":
            response = event.get("response") or {}
            return ResponseDone(
                str(response.get("id") or ""),
                str(response.get("status") or ""),
                _usage(response.get("usage") or {}),
                str(response.get("status_details") or ""),
            )
        if kind == "error":
            error = event.get("error") or {}
            code = str(error.get("code") or "")
            if code == "response_cancel_not_active":  # the server's VAD got there first
                log.debug("call %s: nothing to cancel", self.call.call_id)
                return None
            return ModelError(code, str(error.get("message") or ""))
        return None


def _append(audio: bytes) -> str:
    """An input_audio_buffer.append, built as text (base64 needs no JSON escaping)."""
    b64 = base64.b64encode(audio).decode("ascii")
    return f'{{"type":"input_audio_buffer.append","audio":"{b64}"}}'


def _sender(conn: AsyncRealtimeConnection) -> Callable[[str | dict[str, Any]], Awaitable[None]]:
    async def send(message: str | dict[str, Any]) -> None:
        # the SDK's typed send() would re-validate every audio append
        await conn.send_raw(message if isinstance(message, str) else json.dumps(message))

    return send


def _usage(usage: dict[str, Any]) -> Usage:
    inp = usage.get("input_token_details") or {}
    out = usage.get("output_token_details") or {}
    return Usage(
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        input_audio_tokens=int(inp.get("audio_tokens") or 0),
        input_text_tokens=int(inp.get("text_tokens") or 0),
        cached_tokens=int(inp.get("cached_tokens") or 0),
        output_audio_tokens=int(out.get("audio_tokens") or 0),
        output_text_tokens=int(out.get("text_tokens") or 0),
    )

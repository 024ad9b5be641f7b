"""Ultravox's wire: PCM frames and data messages on the call's WebSocket, translated to and
from the core realtime contract.

Ultravox has no response ids: an agent turn runs from its first audio, transcript or
"speaking" state to the next "listening" state (or to a client tool invocation) and gets one
id here. It decides turns and interruptions itself: `playback_clear_buffer` is its barge-in;
there is no cancel or truncate to send (it knows what the client's buffer held). A greeting
or a guardrail replacement is a `forced_agent_message`, said as given.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import numpy as np

from getpatter.core.frame import AudioFrame, pcm16_bytes
from getpatter.core.realtime_wire import (
    CallerSpeechStarted,
    CallerText,
    EventHandler,
    ModelTurns,
    Outbox,
    RealtimeEvent,
    SessionSetup,
    ToolResult,
)

if TYPE_CHECKING:
    from getpatter.core.media import InboundAudio
    from getpatter.core.session import CallSession
    from getpatter.plugins.ultravox.realtime import UltravoxRealtime

log = logging.getLogger(__name__)

SEND_BYTES: Final = 8000 * 2 * 60 // 1000  # 60 ms of 8 kHz PCM per binary frame
MAX_QUEUED_AUDIO: Final = 10_000 // 60  # 10 s kept while the socket is down


class UltravoxWire:
    """A `RealtimeWire` on an Ultravox call's WebSocket."""

    def __init__(self, engine: UltravoxRealtime, call: CallSession, handle: EventHandler) -> None:
        self.engine = engine
        self.call = call
        self.number = 0
        self._handle = handle
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: Outbox[bytes | dict[str, Any]] = Outbox(
            SEND_BYTES, MAX_QUEUED_AUDIO, lambda audio: audio
        )
        self._sender: asyncio.Task[None] | None = None
        self._user_text: list[str] = []
        self._turns = ModelTurns()

    # --- the core's commands -------------------------------------------------------------

    def send_audio(self, audio: InboundAudio) -> None:
        self._outbox.audio(pcm16_bytes(audio.frame.samples))

    def respond(self, say: str | None = None) -> None:
        if self._user_text:
            text, self._user_text = " ".join(self._user_text), []
            urgency = "later" if say is not None else "immediate"
            self._send({"type": "user_text_message", "text": text, "urgency": urgency})
        if say is not None:
            self._turns.expect(True)
            self._send({"type": "forced_agent_message", "content": say})

    def cancel(self, response_id: str) -> None:
        """Ultravox stops by itself when it hears the caller; the core drops the rest."""

    def truncate(self, item_id: str, heard_ms: int) -> None:
        """Ultravox knows what the client's buffer held (`clientBufferSizeMs`)."""

    def add_user_text(self, text: str) -> None:
        self._user_text.append(text)

    def send_tool_results(self, results: Sequence[ToolResult], respond: bool) -> None:
        for r in results:
            reaction = "speaks" if respond else "listens"
            message = {"type": "client_tool_result", "invocationId": r.call_id}
            message.update(result=r.output, responseType="tool-response", agentReaction=reaction)
            self._send(message)

    def caller_turn(self, kind: str) -> None:
        """Ultravox always detects the caller's turns itself."""

    def _send(self, message: dict[str, Any]) -> None:
        self._outbox.control(message)

    # --- life ----------------------------------------------------------------------------

    async def open(self, setup: SessionSetup) -> None:
        """Create a call (a new one after a drop: a joinUrl is good once) and join it."""
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        if self._http is None:
            self._http = aiohttp.ClientSession()
        ws = await self.engine.connect(self._http, setup)
        self._ws, self.number = ws, self.number + 1
        self._outbox.new_session()
        self._turns.new_session(self.number)

        async def send(message: bytes | dict[str, Any]) -> None:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(json.dumps(message))

        what = f"call {self.call.call_id}: Ultravox"
        self._sender = self.call.spawn(self._outbox.run(send, what), "ultravox-send")

    async def receive(self) -> None:
        ws = self._ws
        if ws is None:
            return
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                events = self._audio(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    log.warning("call %s: Ultravox sent non-JSON", self.call.call_id)
                    continue
                events = self._events(data) if isinstance(data, dict) else []
            else:
                break
            for event in events:
                await self._handle(event)
        log.debug("call %s: Ultravox socket closed (%s)", self.call.call_id, ws.close_code)

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                async with asyncio.timeout(2):
                    await ws.close()  # leaving the socket ends the Ultravox call
            except Exception as exc:
                log.debug("call %s: closing Ultravox: %r", self.call.call_id, exc)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- translating server messages -----------------------------------------------------

    def _audio(self, data: bytes) -> list[RealtimeEvent]:
        frame = AudioFrame(np.frombuffer(data[: len(data) // 2 * 2], "<i2"), 8000, 0.0)
        return self._turns.audio(frame)

    def _events(self, msg: dict[str, Any]) -> list[RealtimeEvent]:
        kind, turns = msg.get("type"), self._turns
        if kind == "transcript":
            text = str(msg.get("text") or msg.get("delta") or "")
            if msg.get("role") == "user":
                return [CallerText(text)] if msg.get("final") and text else []
            if turns.id is None and msg.get("final"):
                return []  # the last word on a turn already over (cut short by the caller)
            if "delta" in msg:
                return turns.said(text)
            if msg.get("final"):  # the whole utterance's text: keep it as its transcript
                events = turns.start()
                turns.text = text
                return events
            return turns.said(text[len(turns.text) :])
        if kind == "state" and msg.get("state") == "speaking":
            return turns.start()
        if kind == "state" and msg.get("state") == "listening":
            return turns.end()
        if kind == "playback_clear_buffer":
            return [CallerSpeechStarted(), *turns.end("cancelled")]
        if kind == "client_tool_invocation":
            call = (
                str(msg.get("invocationId") or ""),
                str(msg.get("toolName") or ""),
                json.dumps(msg.get("parameters") or {}),
            )
            return turns.tool_calls([call])
        return []

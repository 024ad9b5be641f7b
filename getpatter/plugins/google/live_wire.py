"""Gemini Live's wire: sending through the SDK's session, and translating its messages to
the core realtime contract (`getpatter.core.realtime`).

Gemini has no response or item ids: each model turn (from its first content to
`turnComplete`, or to a `toolCall`) gets one id here, used for both. It has no command to
cancel a response or to truncate one: a barge-in by our VAD clears the carrier and the core
drops the rest of that turn; Gemini's own VAD stops generating by itself (`interrupted`).
Caller audio goes out as 16 kHz PCM (one streaming resampler per call), in 100 ms pieces;
agent audio comes back as 24 kHz PCM frames, which the call's playout converts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from getpatter.core.frame import AudioFrame, pcm16_bytes
from getpatter.core.realtime import say_exactly
from getpatter.core.realtime_wire import (
    AgentAudioDone,
    CallerSpeechStarted,
    EventHandler,
    ModelTurns,
    Outbox,
    RealtimeEvent,
    SessionSetup,
    ToolResult,
    Usage,
)
from getpatter.core.resample import Resampler

if TYPE_CHECKING:
    from google.genai.live import AsyncSession
    from google.genai.types import LiveServerMessage, UsageMetadata

    from getpatter.core.media import InboundAudio
    from getpatter.core.session import CallSession
    from getpatter.plugins.google.live import GeminiLive

log = logging.getLogger(__name__)

IN_RATE: Final = 16000
SEND_BYTES: Final = IN_RATE * 2 // 10  # 100 ms of 16-bit audio per realtimeInput
MAX_QUEUED_AUDIO: Final = 100  # pieces (10 s) kept while the model is unreachable
MIME: Final = f"audio/pcm;rate={IN_RATE}"


class GeminiLiveWire:
    """A `RealtimeWire` over `client.aio.live.connect`."""

    def __init__(self, engine: GeminiLive, call: CallSession, handle: EventHandler) -> None:
        self.engine = engine
        self.call = call
        self.number = 0
        self._handle = handle
        self._session: AsyncSession | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._resampler = Resampler(8000, IN_RATE)  # the caller's audio, one per call
        self._outbox: Outbox[tuple[str, Any]] = Outbox(
            SEND_BYTES, MAX_QUEUED_AUDIO, lambda audio: ("audio", audio)
        )
        self._sender: asyncio.Task[None] | None = None
        self._user_text: list[str] = []
        self._turns = ModelTurns()
        self._usage: Usage | None = None

    # --- the core's commands -------------------------------------------------------------

    def send_audio(self, audio: InboundAudio) -> None:
        self._outbox.audio(pcm16_bytes(self._resampler.process(audio.frame).samples))

    def respond(self, say: str | None = None) -> None:
        turns = [{"role": "user", "parts": [{"text": t}]} for t in self._user_text]
        self._user_text.clear()
        if say is not None:
            turns.append({"role": "user", "parts": [{"text": say_exactly(say)}]})
        self._turns.expect(say is not None)
        self._queue("content", {"turns": turns, "turn_complete": True})

    def cancel(self, response_id: str) -> None:
        """Gemini has no cancel: the core drops the rest of the turn."""

    def truncate(self, item_id: str, heard_ms: int) -> None:
        """Gemini has no truncate: its history keeps what it generated."""

    def add_user_text(self, text: str) -> None:
        self._user_text.append(text)

    def send_tool_results(self, results: Sequence[ToolResult], respond: bool) -> None:
        responses = []
        for r in results:
            try:
                value = json.loads(r.output)
            except ValueError:
                value = r.output
            response = value if isinstance(value, dict) else {"result": value}
            responses.append({"id": r.call_id, "name": r.name, "response": response})
        self._turns.expect(False)
        self._queue("tool", responses)  # Gemini goes on by itself once it has every result

    def caller_turn(self, kind: str) -> None:
        self._queue("activity", "activity_start" if kind == "speech_started" else "activity_end")

    def _queue(self, kind: str, payload: Any) -> None:
        self._outbox.control((kind, payload))

    @staticmethod
    async def _send(session: AsyncSession, message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind == "audio":
            await session.send_realtime_input(audio={"data": payload, "mime_type": MIME})
        elif kind == "content":
            await session.send_client_content(**payload)
        elif kind == "tool":
            await session.send_tool_response(function_responses=payload)
        elif payload == "activity_start":
            await session.send_realtime_input(activity_start={})
        else:
            await session.send_realtime_input(activity_end={})

    # --- life ----------------------------------------------------------------------------

    async def open(self, setup: SessionSetup) -> None:
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        stack = contextlib.AsyncExitStack()
        self._session = await self.engine.connect(setup, stack)
        self._stack = stack
        self.number += 1
        self._outbox.new_session()
        self._turns.new_session(self.number)
        session, what = self._session, f"call {self.call.call_id}: Gemini Live"
        sender = self._outbox.run(lambda m: self._send(session, m), what)
        self._sender = self.call.spawn(sender, "gemini-live-send")

    async def receive(self) -> None:
        session = self._session
        if session is None:
            return
        while True:
            try:
                async for message in session.receive():
                    for event in self._events(message):
                        await self._handle(event)
            except Exception as exc:  # closed, by us or by the network
                log.debug("call %s: Gemini Live socket closed: %r", self.call.call_id, exc)
                return

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        stack, self._stack, self._session = self._stack, None, None
        if stack is not None:
            try:
                async with asyncio.timeout(2):
                    await stack.aclose()
            except Exception as exc:
                log.debug("call %s: closing Gemini Live: %r", self.call.call_id, exc)

    # --- translating server messages -----------------------------------------------------

    def _events(self, message: LiveServerMessage) -> list[RealtimeEvent]:
        turns, events = self._turns, list[RealtimeEvent]()
        if message.usage_metadata is not None:
            self._usage = _usage(message.usage_metadata)
        content = message.server_content
        if content is not None:
            if content.input_transcription is not None and content.input_transcription.text:
                turns.heard(content.input_transcription.text)
            if content.interrupted:
                turns.cut = True
                events.append(CallerSpeechStarted())
            parts = content.model_turn.parts if content.model_turn is not None else None
            for part in parts or []:
                blob = part.inline_data
                if blob is not None and blob.data and (blob.mime_type or "").startswith("audio/"):
                    rate = _rate(blob.mime_type or "")
                    events += turns.audio(AudioFrame(np.frombuffer(blob.data, "<i2"), rate, 0.0))
            if content.output_transcription is not None and content.output_transcription.text:
                events += turns.said(content.output_transcription.text)
            if content.generation_complete and turns.id is not None:
                events.append(AgentAudioDone(turns.id, turns.id))
            if content.turn_complete:
                status = "cancelled" if turns.cut else "completed"
                events += turns.end(status, self._usage, audio_done=not turns.cut)
                self._usage = None
        if message.tool_call is not None and message.tool_call.function_calls:
            calls = message.tool_call.function_calls
            events += turns.tool_calls(
                [(fc.id or "", fc.name or "", json.dumps(fc.args or {})) for fc in calls]
            )
        if message.go_away is not None:
            log.info("call %s: Gemini Live will close the session soon", self.call.call_id)
        return events


def _rate(mime: str) -> int:
    match = re.search(r";\s*rate=(\d+)", mime)
    return int(match[1]) if match else 24000


def _usage(meta: UsageMetadata) -> Usage:
    def by_modality(details: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in details or []:
            name = str(getattr(d.modality, "value", d.modality) or "")
            out[name] = out.get(name, 0) + int(d.token_count or 0)
        return out

    prompt, response = (
        by_modality(meta.prompt_tokens_details),
        by_modality(meta.response_tokens_details),
    )
    return Usage(
        input_tokens=int(meta.prompt_token_count or 0),
        output_tokens=int(meta.response_token_count or 0),
        input_audio_tokens=prompt.get("AUDIO", 0),
        input_text_tokens=prompt.get("TEXT", 0),
        cached_tokens=int(meta.cached_content_token_count or 0),
        output_audio_tokens=response.get("AUDIO", 0),
        output_text_tokens=response.get("TEXT", 0),
    )

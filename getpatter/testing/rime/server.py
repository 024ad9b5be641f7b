"""A fake of Rime's JSON text-to-speech WebSocket (`/ws3`) on 127.0.0.1.

Written from Rime's documentation (docs.rime.ai: "Websockets JSON" API reference, "WebSocket
API overview", "Segmentation and behavior settings"), not from any client:

- `GET /ws3` (and the legacy `/ws2`, same messages). Synthesis arguments are query parameters
  fixed for the connection: `speaker` (required), `modelId` (default `mistv3`),
  `audioFormat` (`wav`, `mp3`/`mpeg`, `ogg`, `webm`, `pcm`/`l16`, `mulaw`/`pcmu`; anything
  else falls back to `wav`), `samplingRate` (default 24000), `lang`, `speedAlpha`, `segment`
  (`bySentence` default, `never`, `immediate`). Auth is `Authorization: Bearer <key>` on the
  upgrade; a missing or wrong key is refused with HTTP 401 before the upgrade (the body's
  shape is unverified).
- Client messages: `{"text", "contextId"?}` appends to the buffer; `{"operation": "flush"}`
  synthesizes the buffer; `{"operation": "clear"}` drops text not yet submitted — it does
  **not** stop a synthesis already running or queued by an earlier flush (Rime's docs say so,
  and say to close the connection for a hard stop); `{"operation": "eos"}` synthesizes what
  is left, then the server closes the socket. Malformed input gets `{"type": "error",
  "message"}` and the connection stays open.
- When text is synthesized depends on `segment`: `never` only at flush/eos; `bySentence` when
  the buffer holds sentence-ending punctuation (`.`, `?`, `!`) and nothing is being
  synthesized; `immediate` on receipt when idle. Text that arrives while a synthesis runs
  waits, and flushes made meanwhile coalesce into one synthesis after it.
- Server messages: `{"type": "chunk", "data": <base64 audio>, "contextId"}`, `{"type":
  "timestamps", "word_timestamps": {"words", "start", "end"}, "contextId"}` (only for English
  or Spanish, or no `lang`), then `{"type": "done", "contextId"}` once all audio of a
  synthesis run is sent. Events carry the context id most recently given when the audio was
  requested (`null` if none).

Audio is a tone as long as the text would take to say (`speech_tone`), in the requested
encoding and rate: `mulaw`, `pcm`, and `wav` are produced; the compressed formats cannot be
made here and get an `error` message. Knobs: `first_audio_delay` (per synthesis, counted
from the flush that asked for it: text held behind a running synthesis starts as soon as that
one ends if its time has passed), `chunk_ms`, `audio_speed` (× real time; 0 = unpaced).
Faults: `refuse_with` (an HTTP status for new sockets), `stall_next(n)` (the next synthesis
goes silent after `n` chunks, with no `done`, the socket open), `drop_connections()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Unpack

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.testing.engines import speech_tone
from getpatter.testing.speaking import SpeakingKnobs, SpeakingServer, encode, word_spans

__all__ = ["FakeRime", "FakeRimeSession", "rime_audio"]

_FORMATS = {"wav": "wav", "mp3": "mp3", "mpeg": "mp3", "ogg": "ogg", "webm": "webm"}
_FORMATS |= {"pcm": "pcm", "l16": "pcm", "mulaw": "mulaw", "pcmu": "mulaw"}
_SENTENCE_END = re.compile(r"[.?!](\s|$)")
_TIMESTAMP_LANGS = frozenset({"", "en", "eng", "es", "spa"})


def rime_audio(samples: np.ndarray, audio_format: str, rate: int) -> bytes:
    """int16 samples in one of the raw formats the fake produces (`wav` with its header)."""
    if audio_format == "mulaw":
        return encode(samples, "ulaw")
    pcm = encode(samples, "pcm16")
    if audio_format == "wav":
        header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
        header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        return header + b"data" + struct.pack("<I", len(pcm)) + pcm
    return pcm


@dataclass(eq=False)
class FakeRimeSession:
    """One socket: its query, what it received, what it synthesized and how it ended."""

    query: dict[str, str]
    headers: dict[str, str]
    ws: web.WebSocketResponse
    request: web.Request
    received: list[dict[str, Any]] = field(default_factory=list)
    synthesized: list[tuple[str, str | None]] = field(default_factory=list)  # (text, context)
    errors: list[str] = field(default_factory=list)
    closed: bool = False
    # synthesis state
    buffer: str = ""
    context: str | None = None
    busy: bool = False
    flush_pending: bool = False
    flush_at: float = 0.0  # loop time of the latest flush (or sentence end that acts as one)
    eos: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class FakeRime(SpeakingServer[FakeRimeSession]):
    """Rime's JSON WebSocket on 127.0.0.1: `base_url` is `ws://host:port` (append `/ws3`)."""

    def __init__(self, api_key: str = "rime_test", **knobs: Unpack[SpeakingKnobs]) -> None:
        super().__init__(api_key, **knobs)
        self.refuse_with: int | None = None

    @property
    def base_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{self.base_url}/ws3"

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/ws3", self._socket), web.get("/ws2", self._socket)]

    # --- the socket ------------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> web.Response:
        self.rejected.append(status)
        return web.json_response({"message": message}, status=status)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.api_key:
            return self._refuse(401, "Unauthorized: invalid or missing API key")
        if not request.query.get("speaker"):
            return self._refuse(400, "speaker is required")
        if self.refuse_with is not None:
            return self._refuse(self.refuse_with, "Too many concurrent connections")
        ws = await self._accept(request)
        session = FakeRimeSession(dict(request.query), dict(request.headers), ws, request)
        worker = asyncio.get_running_loop().create_task(self._synthesizer(session))

        async def cleanup() -> None:
            if not session.eos:
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker

        return await self._hold(session, self._converse(session), cleanup)

    async def _error(self, session: FakeRimeSession, message: str) -> None:
        session.errors.append(message)
        await session.ws.send_json({"type": "error", "message": message})

    async def _converse(self, session: FakeRimeSession) -> None:
        ws = session.ws
        segment = session.query.get("segment", "bySentence")
        while not session.eos:
            msg = await ws.receive()
            if msg.type != WSMsgType.TEXT:
                return
            try:
                message = json.loads(msg.data)
                assert isinstance(message, dict)
            except (json.JSONDecodeError, AssertionError):
                await self._error(session, "malformed message: expected a JSON object")
                continue
            session.received.append(message)
            operation = message.get("operation")
            was_pending = session.flush_pending
            if "text" in message and isinstance(message["text"], str):
                session.buffer += message["text"]
                if message.get("contextId") is not None:
                    session.context = str(message["contextId"])
                if segment == "immediate" or (
                    segment == "bySentence" and _SENTENCE_END.search(session.buffer)
                ):
                    session.flush_pending = True
            elif operation == "flush":
                session.flush_pending = True
            elif operation == "clear":
                session.buffer = ""  # what is running or already queued goes on
            elif operation == "eos":
                session.flush_pending = session.eos = True
            else:
                await self._error(session, f"unexpected message: {sorted(message)}")
                continue
            if session.flush_pending and not was_pending:
                session.flush_at = asyncio.get_running_loop().time()
            session.wake.set()
        # eos: the synthesizer finishes what is left, then the socket is closed

    async def _synthesizer(self, session: FakeRimeSession) -> None:
        try:
            while True:
                await session.wake.wait()
                session.wake.clear()
                while session.flush_pending and session.buffer.strip():
                    text, context = session.buffer, session.context
                    session.buffer, session.flush_pending, session.busy = "", False, True
                    await self._speak(session, text.strip(), context, session.flush_at)
                    session.busy = False
                    await session.ws.send_json({"type": "done", "contextId": context})
                session.flush_pending = False
                if session.eos:
                    await session.ws.close()
                    return
        except (ConnectionError, RuntimeError):
            pass

    async def _speak(
        self, session: FakeRimeSession, text: str, context: str | None, at: float
    ) -> None:
        query = session.query
        audio_format = _FORMATS.get(query.get("audioFormat", "wav"), "wav")
        if audio_format not in ("mulaw", "pcm", "wav"):
            await self._error(session, f"audioFormat {audio_format!r} is not produced by the fake")
            return
        rate = int(query.get("samplingRate") or 24000)
        session.synthesized.append((text, context))
        tone = speech_tone(text, rate, self.tone_hz)
        await self._first_audio(at)
        stall = self._take_stall()
        if audio_format == "wav":  # one header, then the samples
            await self._chunk(session, rime_audio(tone[:0], "wav", rate)[:44], context)
            audio_format = "pcm"
        async for piece in self._pieces(tone, rate, stall):
            await self._chunk(session, rime_audio(piece, audio_format, rate), context)
        if query.get("lang", "") in _TIMESTAMP_LANGS:
            words, starts, ends = word_spans(text, len(tone) / rate, 5)
            await session.ws.send_json(
                {
                    "type": "timestamps",
                    "word_timestamps": {"words": words, "start": starts, "end": ends},
                    "contextId": context,
                }
            )

    async def _chunk(self, session: FakeRimeSession, data: bytes, context: str | None) -> None:
        await session.ws.send_json(
            {"type": "chunk", "data": base64.b64encode(data).decode(), "contextId": context}
        )

"""A fake of LMNT's speech session WebSocket (`/v1/ai/speech/stream`) on 127.0.0.1.

Written from LMNT's documentation (docs.lmnt.com: "Speech session (WebSocket)" reference and
the Speech Sessions guide) and the session schema LMNT publishes as AsyncAPI (the message
types of its official SDK are generated from it), not from our client:

- No auth on the upgrade: the **first message** must be the init object, `{"X-API-Key",
  "voice", "format"?, "sample_rate"?, "language"?, "return_timestamps"?, "lmnt-version"?}`.
  `format` is `mp3` (default), `pcm_s16le` (older docs: `raw`), `pcm_f32le`, `ulaw` ("8-bit
  G711 µ-law audio with a WAV header") or `webm`; `sample_rate` 8000, 16000 or 24000
  (default). A wrong key gets `{"type": "error", "error": {"type":
  "authentication_error", "message"}, "request_id"}` and the socket is closed (policy
  violation, 1008: the close code is unverified); a bad init likewise with
  `invalid_request_error`. A good one gets `{"type": "ready", "request_id"}`.
- Then `{"type": "text", "text"}` appends to the buffer, `{"type": "flush", "nonce"}`
  synthesizes it and answers `{"type": "flush_complete", "nonce"}` after the last audio of
  that flush, `{"type": "reset", "nonce"}` drops buffered text unspoken and answers
  `{"type": "reset_complete", "nonce"}`, `{"type": "finish"}` speaks what is left and closes.
- Audio comes as **binary** frames in the requested format. For `ulaw` the stream starts with
  a WAV header, once per session (`ulaw_wav_header = "session"`; "flush" puts one before each
  flush's audio, None sends none: the docs do not say which the service does). With
  `return_timestamps` each flush's audio is followed by `{"type": "timestamps",
  "timestamps": [{"text", "start", "duration"}]}`.

Audio is a tone as long as the text would take to say (`speech_tone`); `mp3` and `webm`
cannot be made here and get an `error` message. Knobs: `first_audio_delay` (per flush,
counted from the flush's arrival: a flush queued behind another starts as soon as that one
ends if its time has passed), `chunk_ms`, `audio_speed` (× real time; 0 = unpaced). Faults:
`stall_next(n)` (the next flush goes silent after `n` chunks, with no `flush_complete`, the
socket open), `drop_connections()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Unpack

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from getpatter.testing.engines import speech_tone
from getpatter.testing.speaking import Encoding, SpeakingKnobs, SpeakingServer, encode

__all__ = ["FakeLmnt", "FakeLmntSession", "lmnt_audio", "ulaw_wav_header"]

FORMATS = ("mp3", "pcm_s16le", "raw", "pcm_f32le", "ulaw", "webm")
SAMPLE_RATES = (8000, 16000, 24000)
_ENCODINGS: dict[str, Encoding] = {"ulaw": "ulaw", "pcm_f32le": "f32"}


def ulaw_wav_header(rate: int = 8000) -> bytes:
    """A streaming WAV header for G.711 μ-law (format 7), sizes unknown (0xFFFFFFFF)."""
    fmt = struct.pack("<HHIIHHH", 7, 1, rate, rate, 1, 8, 0)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def lmnt_audio(samples: np.ndarray, audio_format: str) -> bytes:
    """int16 samples in one of the raw formats (no header)."""
    return encode(samples, _ENCODINGS.get(audio_format, "pcm16"))


@dataclass(eq=False)
class FakeLmntSession:
    """One socket: its init, what it received, what it spoke, and how it ended."""

    ws: web.WebSocketResponse
    request: web.Request
    init: dict[str, Any] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    received: list[dict[str, Any]] = field(default_factory=list)
    spoken: list[str] = field(default_factory=list)
    resets: int = 0
    closed: bool = False
    finishing: bool = False  # `finish` received: what is left is spoken, then it closes
    header_sent: bool = False


class FakeLmnt(SpeakingServer[FakeLmntSession]):
    """LMNT's speech session socket on 127.0.0.1: `base_url` is what the SDK takes."""

    _max_msg = 1024 * 1024

    def __init__(
        self,
        api_key: str = "lmnt_test",
        *,
        ulaw_wav_header: Literal["session", "flush"] | None = "session",
        **knobs: Unpack[SpeakingKnobs],
    ) -> None:
        super().__init__(api_key, **knobs)
        self.ulaw_wav_header = ulaw_wav_header
        self.refused: list[str] = []  # error types sent before closing

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/ai/speech/stream"

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/ai/speech/stream", self._socket)]

    # --- the socket ------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        session = FakeLmntSession(await self._accept(request), request)
        work: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        worker = asyncio.get_running_loop().create_task(self._speaker(session, work))

        async def converse() -> None:
            if await self._start(session):
                await self._converse(session, work)

        async def cleanup() -> None:
            if not session.finishing:
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker

        return await self._hold(session, converse(), cleanup)

    async def _refuse(self, session: FakeLmntSession, kind: str, message: str) -> bool:
        self.refused.append(kind)
        await session.ws.send_json(
            {
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": session.request_id,
            }
        )
        await session.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=message[:100].encode())
        return False

    async def _start(self, session: FakeLmntSession) -> bool:
        msg = await session.ws.receive(timeout=10)
        if msg.type != WSMsgType.TEXT:
            return False
        try:
            init = json.loads(msg.data)
            assert isinstance(init, dict)
        except (json.JSONDecodeError, AssertionError):
            return await self._refuse(session, "invalid_request_error", "init must be JSON")
        session.init = init
        if init.get("X-API-Key") != self.api_key:
            return await self._refuse(session, "authentication_error", "Invalid API key")
        if not init.get("voice"):
            return await self._refuse(session, "invalid_request_error", "voice is required")
        if init.get("format", "mp3") not in FORMATS:
            return await self._refuse(session, "invalid_request_error", "unknown format")
        if init.get("sample_rate", 24000) not in SAMPLE_RATES:
            return await self._refuse(session, "invalid_request_error", "unknown sample_rate")
        await session.ws.send_json({"type": "ready", "request_id": session.request_id})
        return True

    async def _converse(
        self, session: FakeLmntSession, work: asyncio.Queue[tuple[str, Any]]
    ) -> None:
        buffer = ""
        while True:
            msg = await session.ws.receive()
            if msg.type != WSMsgType.TEXT:
                return
            try:
                message = json.loads(msg.data)
                kind = message["type"]
            except (json.JSONDecodeError, KeyError, TypeError):
                await session.ws.send_json(
                    {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": "bad message"},
                        "request_id": session.request_id,
                    }
                )
                continue
            session.received.append(message)
            if kind == "text":
                buffer += str(message.get("text", ""))
            elif kind == "flush":
                at = asyncio.get_running_loop().time()
                work.put_nowait(("flush", (buffer, message.get("nonce"), at)))
                buffer = ""
            elif kind == "reset":
                buffer = ""
                session.resets += 1
                await session.ws.send_json(
                    {"type": "reset_complete", "nonce": message.get("nonce")}
                )
            elif kind == "finish":
                session.finishing = True
                work.put_nowait(("finish", buffer))
                return

    async def _speaker(
        self, session: FakeLmntSession, work: asyncio.Queue[tuple[str, Any]]
    ) -> None:
        try:
            while True:
                kind, value = await work.get()
                if kind == "flush":
                    text, nonce, at = value
                    await self._speak(session, text, at)
                    await session.ws.send_json({"type": "flush_complete", "nonce": nonce})
                else:
                    await self._speak(session, value)
                    await session.ws.close()
                    return
        except (ConnectionError, RuntimeError):
            pass

    async def _speak(self, session: FakeLmntSession, text: str, at: float | None = None) -> None:
        text = text.strip()
        if not text:
            return
        session.spoken.append(text)
        init = session.init
        audio_format = "pcm_s16le" if init.get("format") == "raw" else init.get("format", "mp3")
        if audio_format in ("mp3", "webm"):
            await session.ws.send_json(
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "format not faked"},
                    "request_id": session.request_id,
                }
            )
            return
        rate = int(init.get("sample_rate", 24000))
        tone = speech_tone(text, rate, self.tone_hz)
        await self._first_audio(at)
        stall = self._take_stall()
        header = b""
        if audio_format == "ulaw" and (
            self.ulaw_wav_header == "flush"
            or (self.ulaw_wav_header == "session" and not session.header_sent)
        ):
            header, session.header_sent = ulaw_wav_header(rate), True
        async for piece in self._pieces(tone, rate, stall):
            await session.ws.send_bytes(header + lmnt_audio(piece, audio_format))
            header = b""
        if init.get("return_timestamps"):
            words = text.split()
            seconds = len(tone) / rate
            each = seconds / max(len(words), 1)
            stamps = [
                {"text": w, "start": round(i * each, 4), "duration": round(each, 4)}
                for i, w in enumerate(words)
            ]
            await session.ws.send_json({"type": "timestamps", "timestamps": stamps})

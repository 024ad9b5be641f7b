"""A fake Soniox real-time speech-to-text API on 127.0.0.1, for STT tests over real sockets.

Written from Soniox's documentation (the WebSocket API reference, "WebSocket authentication",
"Error handling", "Endpoint detection", "Manual finalization", "Connection keepalive"), not
from any client, so it checks a client rather than agreeing with it.

    async with FakeSoniox(transcripts=["What time do you open?"]) as sx:
        stt = SonioxSTT(api_key=sx.api_key, base_url=sx.ws_url)

The endpoint is ``GET /transcribe-websocket`` (a WebSocket). As on the real service every
failure is reported inside the socket: an error response ``{"error_code": N, "error_type": …,
"error_message": …, "request_id": …}`` and then the close.
- Auth: the key goes with the connection, ``Authorization: Bearer <key>`` on the upgrade (or
  the protocols list ``soniox-api-key, <key>``); a wrong one is refused at once (401,
  ``unauthenticated``). A connection without one may still send it as the deprecated
  ``api_key`` of the start request (`accept_config_key`); without either: 401 as well.
- The first message must be the start request (JSON text): ``model`` one of `MODELS` (else
  400 ``Invalid model specified.``); ``audio_format`` ``auto`` or a raw format, which needs
  ``sample_rate`` and ``num_channels`` (else 400). Audio first, or text that is not JSON: 400.
  `refuse` = ``(code, type, message)`` refuses every start request that way (402 out of
  balance, 429 too many streams...).
- Speech is found by energy (20 ms frames with RMS above `speech_rms`, μ-law, A-law and
  pcm_s16le are decoded). The i-th utterance (across connections) says ``transcripts[i]``
  (then `default_transcript`); one whose connection ends before its words were final goes
  back to the script. Every `partial_every` seconds of speech a response carries the words so
  far as non-final tokens (``" time"``: a token carries its leading space). Final tokens are
  sent once; non-final ones again in each response until they are final.
- The words become final, followed by the ``<end>`` token, after `endpoint_silence` s of
  silence when the start request has ``enable_endpoint_detection``; on ``{"type":
  "finalize"}`` they become final followed by ``<fin>`` (``<fin>`` alone when there is
  nothing to finalize). ``{"type": "keepalive"}`` does nothing but keep the connection.
- An empty frame (text or binary) ends the audio: the last words final, then a response with
  ``"finished": true``, then close 1000.
- No audio and no message for `idle_timeout` s: error 408 and close (the docs say only that an
  idle connection "may be closed"; the code is this fake's guess).
- Every response carries ``final_audio_proc_ms`` and ``total_audio_proc_ms`` and goes out
  `latency` seconds after its cause, in order.

Faults: `drop_connections()` kills every live socket at the TCP level. `stall` (read when a
connection opens): ``"no_final"`` sends non-final tokens as usual but never makes them final
(not for silence, ``finalize`` or the end of audio, though ``finished`` still comes);
``"silent"`` accepts everything and sends nothing. For assertions: `connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.core.audio import alaw_decode, ulaw_decode
from getpatter.testing._loopback import LoopbackServer

__all__ = ["MODELS", "FakeSoniox", "SonioxConnection"]

MODELS = frozenset({"stt-rt-preview", "stt-rt-v3", "stt-rt-v4", "stt-rt-v5"})
RAW_FORMATS = {"pcm_s16le": 2, "mulaw": 1, "alaw": 1}  # bytes per sample, decodable here
CONTAINERS = {"auto", "wav", "mp3", "ogg", "flac", "webm", "aac", "aiff", "amr", "asf"}
_CLOSE = object()
Stall = Literal["no_final", "silent"] | None


@dataclass
class SonioxConnection:
    """One socket, as the fake saw it."""

    headers: dict[str, str]
    request: web.Request
    ws: web.WebSocketResponse
    config: dict[str, Any] | None = None
    audio: bytearray = field(default_factory=bytearray)
    messages: list[dict[str, Any]] = field(default_factory=list)  # control messages
    sent: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None  # the error response the fake ended it with
    ended_audio: bool = False  # the empty frame came
    closed: bool = False
    close_code: int | None = None

    def count(self, kind: str) -> int:
        return sum(1 for m in self.messages if m.get("type") == kind)

    def tokens(self) -> list[dict[str, Any]]:
        return [t for m in self.sent for t in m.get("tokens", ())]


class FakeSoniox(LoopbackServer):
    """Soniox's real-time STT at `ws_url` (``ws://127.0.0.1:P/transcribe-websocket``)."""

    def __init__(
        self,
        api_key: str = "sx-test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        transcripts: Sequence[str] = (),
        default_transcript: str = "Hello.",
        latency: float = 0.05,
        speech_rms: float = 300.0,
        partial_every: float = 0.3,
        endpoint_silence: float = 0.5,
        idle_timeout: float = 20.0,
        accept_config_key: bool = True,
        refuse: tuple[int, str, str] | None = None,
        stall: Stall = None,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.transcripts = list(transcripts)
        self.default_transcript = default_transcript
        self.latency = latency
        self.speech_rms = speech_rms
        self.partial_every = partial_every
        self.endpoint_silence = endpoint_silence
        self.idle_timeout = idle_timeout
        self.accept_config_key = accept_config_key
        self.refuse = refuse
        self.stall: Stall = stall
        self.connections: list[SonioxConnection] = []
        self.utterances: list[str] = []

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/transcribe-websocket"

    @property
    def live(self) -> list[SonioxConnection]:
        return [c for c in self.connections if not c.closed]

    def next_transcript(self) -> str:
        text = self.transcripts.pop(0) if self.transcripts else self.default_transcript
        self.utterances.append(text)
        return text

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/transcribe-websocket", self._ws)]

    def _open_sockets(self) -> list[SonioxConnection]:
        return self.live

    def _connection_key(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            return token
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        ]
        if len(protocols) == 2 and protocols[0] == "soniox-api-key":
            return protocols[1]
        return None

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        key = self._connection_key(request)
        protocols = (
            ("soniox-api-key",)
            if "soniox-api-key" in request.headers.get("Sec-WebSocket-Protocol", "")
            else ()
        )
        ws = web.WebSocketResponse(
            heartbeat=None, max_msg_size=4 * 1024 * 1024, protocols=protocols
        )
        await ws.prepare(request)
        headers = {
            k: ("***" if k.lower() in ("authorization", "sec-websocket-protocol") else v)
            for k, v in request.headers.items()
        }
        conn = SonioxConnection(headers, request, ws)
        self.connections.append(conn)
        session = _Session(self, conn, key)
        try:
            await session.run()
        finally:
            conn.closed = True
            conn.close_code = ws.close_code
            await session.stop()
        return ws


def _error(code: int, kind: str, message: str) -> dict[str, Any]:
    return {
        "error_code": code,
        "error_type": kind,
        "error_message": message,
        "request_id": str(uuid.uuid4()),
    }


class _Session:
    """One connection's recogniser: audio → utterances → token responses."""

    def __init__(self, fake: FakeSoniox, conn: SonioxConnection, key: str | None) -> None:
        self.fake = fake
        self.conn = conn
        self.key = key
        self.stall: Stall = fake.stall
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self.writer = self.loop.create_task(self._write())
        self.watchdog = self.loop.create_task(self._watch())
        self.last_activity = self.loop.time()
        self.started = False
        self.ending = False
        self.rate = 8000
        self.width = 1
        self.format = "mulaw"
        self.endpoints = False
        self.carry = np.zeros(0, np.int16)
        self.pos_ms = 0.0  # audio heard
        self.final_ms = 0.0  # audio finalized
        self.utterance: dict[str, Any] | None = None
        self.silence = 0.0

    async def run(self) -> None:
        if self.key is not None and self.key != self.fake.api_key:
            await self.fail(401, "unauthenticated", "Incorrect API key provided.")
            return
        async for msg in self.conn.ws:
            self.last_activity = self.loop.time()
            if self.ending:
                continue
            if msg.type == WSMsgType.TEXT:
                await self._text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self._binary(msg.data)
            else:
                break

    async def stop(self) -> None:
        if self.utterance is not None:  # never final: the words are still to come
            self.fake.transcripts.insert(0, self.utterance["text"])
            self.fake.utterances.pop()
            self.utterance = None
        for task in (self.writer, self.watchdog):
            task.cancel()
        await asyncio.gather(self.writer, self.watchdog, return_exceptions=True)

    async def fail(self, code: int, kind: str, message: str) -> None:
        """The error response, then the close (at once, not after `latency`)."""
        self.ending = True
        error = _error(code, kind, message)
        self.conn.error = error
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.conn.ws.send_str(json.dumps(error))
            self.conn.sent.append(error)
            await self.conn.ws.close(code=1000)

    # --- sending, in order, `latency` after the cause ------------------------------------

    def emit(self, message: Any) -> None:
        if self.stall == "silent" and message is not _CLOSE:
            return
        self.outbox.put_nowait((self.loop.time() + self.fake.latency, message))

    async def _write(self) -> None:
        ws = self.conn.ws
        while True:
            due, message = await self.outbox.get()
            await asyncio.sleep(max(0.0, due - self.loop.time()))
            if ws.closed:
                continue
            try:
                if message is _CLOSE:
                    await ws.close(code=1000)
                else:
                    await ws.send_str(json.dumps(message))
                    self.conn.sent.append(message)
            except (ConnectionError, RuntimeError):
                pass

    async def _watch(self) -> None:
        while True:
            left = self.last_activity + self.fake.idle_timeout - self.loop.time()
            if left <= 0:
                await self.fail(408, "request_timeout", "No audio or keepalive received.")
                return
            await asyncio.sleep(left)

    # --- client messages -----------------------------------------------------------------

    async def _text(self, data: str) -> None:
        if data == "":
            self._end_of_audio()
            return
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self.fail(400, "invalid_request", "Invalid JSON message.")
            return
        if not self.started:
            await self._start(message)
            return
        self.conn.messages.append(message)
        kind = message.get("type")
        if kind == "finalize":
            self._finalize("<fin>", always=True)
        elif kind == "keepalive":
            return
        else:
            await self.fail(400, "invalid_request", f"Unknown control message: {kind!r}")

    async def _start(self, config: dict[str, Any]) -> None:
        self.conn.config = {k: ("***" if k == "api_key" else v) for k, v in config.items()}
        if self.key is None:
            given = config.get("api_key")
            if not (self.fake.accept_config_key and given == self.fake.api_key):
                await self.fail(401, "unauthenticated", "Incorrect API key provided.")
                return
        if self.fake.refuse is not None:
            await self.fail(*self.fake.refuse)
            return
        if config.get("model") not in MODELS:
            await self.fail(400, "model_not_available", "Invalid model specified.")
            return
        fmt = config.get("audio_format")
        if fmt in RAW_FORMATS or (isinstance(fmt, str) and fmt.startswith("pcm_")):
            rate, channels = config.get("sample_rate"), config.get("num_channels")
            if not isinstance(rate, int) or not isinstance(channels, int):
                await self.fail(
                    400,
                    "invalid_request",
                    "sample_rate and num_channels are required for raw audio.",
                )
                return
            if fmt in RAW_FORMATS:
                self.format, self.rate, self.width = fmt, rate, RAW_FORMATS[fmt]
            else:
                self.format = "undecoded"
        elif fmt in CONTAINERS:
            self.format = "undecoded"
        else:
            await self.fail(400, "invalid_request", f"Invalid audio_format: {fmt!r}.")
            return
        self.endpoints = bool(config.get("enable_endpoint_detection"))
        self.started = True

    async def _binary(self, data: bytes) -> None:
        if not self.started:
            await self.fail(400, "invalid_request", "The start request must come first.")
            return
        if not data:
            self._end_of_audio()
            return
        self.conn.audio += data
        if self.format == "undecoded":
            return
        if self.format == "mulaw":
            samples = ulaw_decode(data)
        elif self.format == "alaw":
            samples = alaw_decode(data)
        else:
            samples = np.frombuffer(data[: len(data) // 2 * 2], "<i2")
        samples = np.concatenate([self.carry, samples])
        step = max(1, self.rate // 50)
        whole = len(samples) // step * step
        self.carry = samples[whole:]
        for i in range(0, whole, step):
            frame = samples[i : i + step].astype(np.float64)
            self._frame(float(np.sqrt(np.mean(frame * frame))) > self.fake.speech_rms)

    def _end_of_audio(self) -> None:
        self.conn.ended_audio = True
        self.ending = True
        if self.stall is None:
            self._finalize(None)
        self.emit(self._response([], finished=True))
        self.emit(_CLOSE)

    # --- listening -----------------------------------------------------------------------

    def _frame(self, speech: bool) -> None:
        self.pos_ms += 20.0
        utterance = self.utterance
        if speech:
            self.silence = 0.0
            if utterance is None:
                utterance = self.utterance = {
                    "text": self.fake.next_transcript(),
                    "start_ms": self.pos_ms - 20.0,
                    "speech": 0.0,
                    "partials": 0,
                }
            utterance["speech"] += 0.02
            utterance["end_ms"] = self.pos_ms
            if utterance["speech"] >= (utterance["partials"] + 1) * self.fake.partial_every:
                utterance["partials"] += 1
                words = self._tokens(utterance, final=False)
                self.emit(
                    self._response(words[: max(1, min(len(words) - 1, utterance["partials"]))])
                )
            return
        self.silence += 0.02
        if utterance is not None and self.endpoints and self.silence >= self.fake.endpoint_silence:
            self._finalize("<end>")

    def _tokens(self, utterance: dict[str, Any], *, final: bool) -> list[dict[str, Any]]:
        words = utterance["text"].split()
        start, end = utterance["start_ms"], utterance.get("end_ms", utterance["start_ms"] + 20)
        each = (end - start) / max(1, len(words))
        return [
            {
                "text": word if i == 0 else f" {word}",
                "start_ms": round(start + i * each),
                "end_ms": round(start + (i + 1) * each),
                "confidence": 0.95,
                "is_final": final,
            }
            for i, word in enumerate(words)
        ]

    def _finalize(self, marker: str | None, *, always: bool = False) -> None:
        """The utterance's words, final (then `marker`): sent once."""
        if self.stall is not None:
            return  # the words stay non-final
        utterance, self.utterance = self.utterance, None
        if utterance is None and not always:
            return
        tokens = self._tokens(utterance, final=True) if utterance is not None else []
        self.final_ms = self.pos_ms
        if marker is not None:
            at = round(self.pos_ms)
            tokens.append(
                {"text": marker, "start_ms": at, "end_ms": at, "confidence": 1.0, "is_final": True}
            )
        self.emit(self._response(tokens))

    def _response(self, tokens: list[dict[str, Any]], *, finished: bool = False) -> dict[str, Any]:
        response: dict[str, Any] = {
            "tokens": tokens,
            "final_audio_proc_ms": round(self.final_ms),
            "total_audio_proc_ms": round(self.pos_ms),
        }
        if finished:
            response["finished"] = True
        return response

"""A fake Deepgram live-transcription API (v1 listen) on 127.0.0.1, for STT tests over real sockets.

Written from Deepgram's documented wire protocol (protocols.md §4 and Deepgram's docs), not from
any client, so it checks a client rather than agreeing with it.

    async with FakeDeepgram(transcripts=["what time do you open"]) as dg:
        stt = DeepgramSTT(api_key=dg.api_key, base_url=dg.ws_url)

The endpoint is ``GET /v1/listen`` (a WebSocket):
- Auth: ``Authorization: Token <key>`` (or ``Bearer <token>`` for one of `access_tokens`);
  anything else is refused with HTTP 401 on the upgrade, as Deepgram does. `refuse_status`
  (402, 429, …) refuses every upgrade with that status instead: out of credits, too many streams.
- Query: ``encoding`` must be one Deepgram knows and needs ``sample_rate`` (HTTP 400 otherwise);
  ``utterance_end_ms`` needs ``interim_results=true``. Containerized audio (no encoding) is
  accepted but cannot be listened to: only `Finalize` ends its utterances.
- Speech is found by energy: 20 ms frames whose RMS is above `speech_rms`. The i-th utterance
  (across all connections) is recognised as ``transcripts[i]`` (then `default_transcript`);
  an utterance whose socket closes before its final goes back to the script, so audio a
  client sends again on a new socket is recognised as the same words.
  While it lasts, interim `Results` come every `interim_every` seconds of audio (with
  ``interim_results=true``); it ends with a final `Results` when the audio has been silent for
  ``endpointing`` ms (``speech_final:true``), on `Finalize` (``from_finalize:true``), or on
  `CloseStream`. Finals tile the audio: each covers from the previous final's end to now.
  `SpeechStarted` (``vad_events=true``) marks each utterance's start and `UtteranceEnd` comes
  once ``utterance_end_ms`` of audio has passed since the last final word.
- `Finalize` with nothing to flush answers an empty final `Results` with ``from_finalize``.
- `CloseStream` flushes, sends `Metadata`, and closes with 1000. A text message Deepgram does
  not know gets an `Error` (``variant: SchemaError``); the socket stays open.
- No audio and no text message for `idle_timeout` seconds: the socket is closed with 1011 and
  the NET-0001 reason, as Deepgram does after ~10 s.
- Every message the fake sends goes out `latency` seconds after the audio or message that caused
  it, in order. Without ``smart_format``/``punctuate`` the text is lowercased and unpunctuated.

Faults: `drop_connections()` kills every live socket at the TCP level (no close frame).
`stall` (read when a socket opens, so a test can stall the first socket only):
``"no_final"`` sends interims (and SpeechStarted) as usual but never a final, whatever ends the
utterance (endpointing, `Finalize`, `CloseStream`), as Deepgram has been seen to do on real
lines; ``"silent"`` accepts audio and messages and sends nothing at all. Both still close on
`CloseStream` (after `Metadata` with ``"no_final"``).
For assertions: `connections` (each with its query, headers, received audio and messages, and
sent messages), `rejected` (HTTP statuses of refused upgrades), `utterances` (texts given out).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.core.audio import alaw_decode, ulaw_decode
from getpatter.testing._loopback import LoopbackServer

__all__ = ["NET0001_REASON", "DeepgramConnection", "FakeDeepgram"]

NET0001_REASON = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
ENCODINGS = {
    "linear16",
    "linear32",
    "flac",
    "alaw",
    "mulaw",
    "amr-nb",
    "amr-wb",
    "opus",
    "ogg-opus",
    "speex",
    "g729",
}
_DECODABLE = {"mulaw", "alaw", "linear16"}
_MODEL_UUID = "1dbdfb4d-85b2-4659-9e5e-a2ac2a2e5a2b"
_CLOSE = object()
Stall = Literal["no_final", "silent"] | None


@dataclass
class DeepgramConnection:
    """One accepted socket, as the fake saw it."""

    query: dict[str, str]
    headers: dict[str, str]
    request: web.Request
    ws: web.WebSocketResponse
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    audio: bytearray = field(default_factory=bytearray)
    audio_frames: list[int] = field(default_factory=list)  # byte size of each binary frame
    messages: list[dict[str, Any]] = field(default_factory=list)  # client text messages
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None

    def count(self, kind: str) -> int:
        """How many client messages of this type (KeepAlive, Finalize, …) arrived."""
        return sum(1 for m in self.messages if m.get("type") == kind)

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == kind]


def _flag(query: dict[str, str], name: str, default: bool = False) -> bool:
    value = query.get(name)
    return default if value is None else value.lower() == "true"


def _plain(text: str) -> str:
    """What Deepgram gives without smart_format/punctuate: lowercase, no punctuation."""
    return " ".join(re.sub(r"[^\w\s']", " ", text).lower().split())


class FakeDeepgram(LoopbackServer):
    """Deepgram's live transcription at `ws_url` + ``/v1/listen``."""

    def __init__(
        self,
        api_key: str = "dg-test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        transcripts: Sequence[str] = (),
        default_transcript: str = "Hello.",
        latency: float = 0.05,
        idle_timeout: float = 10.0,
        speech_rms: float = 300.0,
        interim_every: float = 0.4,
        confidence: float = 0.97,
        access_tokens: Sequence[str] = (),
        refuse_status: int | None = None,
        stall: Stall = None,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.transcripts = list(transcripts)
        self.default_transcript = default_transcript
        self.latency = latency
        self.idle_timeout = idle_timeout
        self.speech_rms = speech_rms
        self.interim_every = interim_every
        self.confidence = confidence
        self.access_tokens = set(access_tokens)
        self.refuse_status = refuse_status
        self.stall: Stall = stall
        self.connections: list[DeepgramConnection] = []
        self.rejected: list[int] = []
        self.utterances: list[str] = []

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def live(self) -> list[DeepgramConnection]:
        return [c for c in self.connections if not c.closed]

    def next_transcript(self) -> str:
        text = self.transcripts.pop(0) if self.transcripts else self.default_transcript
        self.utterances.append(text)
        return text

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/listen", self._listen)]

    def _open_sockets(self) -> list[DeepgramConnection]:
        return self.live

    # --- the endpoint --------------------------------------------------------------------

    def _refuse(self, status: int, code: str, message: str) -> web.Response:
        self.rejected.append(status)
        body = {"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())}
        return web.json_response(body, status=status, headers={"dg-error": message})

    def _authorized(self, header: str) -> bool:
        scheme, _, credential = header.partition(" ")
        if scheme == "Token":
            return credential == self.api_key
        return scheme == "Bearer" and credential in self.access_tokens

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request.headers.get("Authorization", "")):
            return self._refuse(401, "INVALID_AUTH", "Invalid credentials.")
        if self.refuse_status is not None:
            return self._refuse(self.refuse_status, "REFUSED", "Refused by FakeDeepgram.")
        query = dict(request.query)
        encoding = query.get("encoding")
        if encoding is not None and encoding not in ENCODINGS:
            return self._refuse(400, "Bad Request", f"Unsupported encoding: {encoding}")
        if encoding is not None and not query.get("sample_rate", "").isdigit():
            return self._refuse(400, "Bad Request", "sample_rate is required with encoding")
        if "utterance_end_ms" in query and not _flag(query, "interim_results"):
            return self._refuse(400, "Bad Request", "utterance_end_ms requires interim_results")
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        headers = {
            k: ("***" if k.lower() == "authorization" else v) for k, v in request.headers.items()
        }
        conn = DeepgramConnection(query, headers, request, ws)
        self.connections.append(conn)
        session = _Session(self, conn)
        try:
            await session.run()
        finally:
            conn.closed = True
            conn.close_code = ws.close_code
            await session.stop()
        return ws


class _Session:
    """One connection's recogniser: audio → utterances → Results."""

    def __init__(self, fake: FakeDeepgram, conn: DeepgramConnection) -> None:
        self.fake = fake
        self.conn = conn
        q = conn.query
        self.encoding = q.get("encoding")
        self.rate = int(q.get("sample_rate", "8000") or 8000)
        self.channels = int(q.get("channels", "1") or 1)
        self.interim = _flag(q, "interim_results")
        self.vad_events = _flag(q, "vad_events")
        self.formatted = _flag(q, "smart_format") or _flag(q, "punctuate")
        endpointing = q.get("endpointing", "10")
        self.endpointing = None if endpointing == "false" else float(endpointing) / 1000
        utterance_end = q.get("utterance_end_ms")
        self.utterance_end = float(utterance_end) / 1000 if utterance_end else None
        self.model = q.get("model", "base")
        self.stall: Stall = fake.stall
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.outbox: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self.writer = self.loop.create_task(self._write())
        self.watchdog = self.loop.create_task(self._watch())
        self.carry = np.zeros(0, np.int16)
        self.pos = 0.0  # seconds of audio heard
        self.final_to = 0.0  # end of the last final
        self.utterance: dict[str, Any] | None = None
        self.silence = 0.0
        self.last_word_end: float | None = None
        self.closing = False

    async def run(self) -> None:
        async for msg in self.conn.ws:
            self.last_activity = self.loop.time()
            if self.closing:
                continue
            if msg.type == WSMsgType.BINARY:
                self.conn.audio += msg.data
                self.conn.audio_frames.append(len(msg.data))
                self._hear(msg.data)
            elif msg.type == WSMsgType.TEXT:
                self._control(msg.data)
            else:
                break

    async def stop(self) -> None:
        if self.utterance is not None:  # never finalized: the words are still to come
            self.fake.transcripts.insert(0, self.utterance["text"])
            self.fake.utterances.pop()
            self.utterance = None
        for task in (self.writer, self.watchdog):
            task.cancel()
        await asyncio.gather(self.writer, self.watchdog, return_exceptions=True)

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
                await self.conn.ws.close(code=1011, message=NET0001_REASON.encode())
                return
            await asyncio.sleep(left)

    # --- client text messages ------------------------------------------------------------

    def _control(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._schema_error(data)
            return
        self.conn.messages.append(message)
        kind = message.get("type")
        if kind == "KeepAlive":
            return
        if kind == "Finalize":
            self._final(from_finalize=True, speech_final=False, always=True)
        elif kind == "CloseStream":
            self.closing = True
            self._final(from_finalize=False, speech_final=False)
            self.emit(self._metadata())
            self.emit(_CLOSE)
        elif kind == "Configure":
            self.emit({"type": "ConfigureSuccess"})
        else:
            self._schema_error(data)

    def _schema_error(self, data: str) -> None:
        self.emit(
            {
                "type": "Error",
                "variant": "SchemaError",
                "description": "Could not parse the client message.",
                "message": data,
            }
        )

    # --- listening -----------------------------------------------------------------------

    def _hear(self, data: bytes) -> None:
        if self.encoding not in _DECODABLE:
            # Containerized or compressed audio: not listened to; Finalize ends utterances.
            if self.utterance is None:
                self._begin()
            return
        if self.encoding == "mulaw":
            samples = ulaw_decode(data)
        elif self.encoding == "alaw":
            samples = alaw_decode(data)
        else:
            samples = np.frombuffer(data[: len(data) // 2 * 2], "<i2")
        if self.channels > 1:
            samples = samples[: len(samples) // self.channels * self.channels][:: self.channels]
        samples = np.concatenate([self.carry, samples])
        step = max(1, self.rate // 50)
        whole = len(samples) // step * step
        self.carry = samples[whole:]
        for i in range(0, whole, step):
            frame = samples[i : i + step].astype(np.float64)
            self._frame(float(np.sqrt(np.mean(frame * frame))) > self.fake.speech_rms, step)

    def _frame(self, speech: bool, samples: int) -> None:
        self.pos += samples / self.rate
        utterance = self.utterance
        if speech:
            self.silence = 0.0
            if utterance is None:
                utterance = self._begin()
            utterance["speech"] += samples / self.rate
            utterance["last_speech"] = self.pos
            heard = utterance["speech"]
            if self.interim and heard >= (utterance["interims"] + 1) * self.fake.interim_every:
                utterance["interims"] += 1
                self._interim(utterance)
            return
        self.silence += samples / self.rate
        if utterance is not None:
            if self.endpointing is not None and self.silence >= self.endpointing:
                self._final(from_finalize=False, speech_final=True)
        elif (
            self.utterance_end is not None
            and self.last_word_end is not None
            and self.pos - self.last_word_end >= self.utterance_end
        ):
            self.emit(
                {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": self.last_word_end}
            )
            self.last_word_end = None

    def _begin(self) -> dict[str, Any]:
        self.utterance = {
            "text": self.fake.next_transcript(),
            "start": self.pos,
            "speech": 0.0,
            "last_speech": self.pos,
            "interims": 0,
        }
        if self.vad_events:
            self.emit({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(self.pos, 3)})
        return self.utterance

    # --- results -------------------------------------------------------------------------

    def _text(self, text: str) -> str:
        return text if self.formatted else _plain(text)

    def _words(self, utterance: dict[str, Any], count: int | None = None) -> list[dict[str, Any]]:
        spoken = self._text(utterance["text"]).split()
        plain = _plain(utterance["text"]).split()
        n = len(spoken) if count is None else min(count, len(spoken))
        start, end = utterance["start"], max(utterance["last_speech"], utterance["start"] + 0.1)
        each = (end - start) / max(1, len(spoken))
        return [
            {
                "word": plain[i] if i < len(plain) else spoken[i].lower(),
                "start": round(start + i * each, 3),
                "end": round(start + (i + 1) * each, 3),
                "confidence": self.fake.confidence,
                "punctuated_word": spoken[i],
            }
            for i in range(n)
        ]

    def _results(
        self,
        words: list[dict[str, Any]],
        *,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> dict[str, Any]:
        text = " ".join(w["punctuated_word" if self.formatted else "word"] for w in words)
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(self.pos - self.final_to, 3),
            "start": round(self.final_to, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": text,
                        "confidence": self.fake.confidence if words else 0.0,
                        "words": words,
                    }
                ]
            },
            "metadata": {
                "request_id": self.conn.request_id,
                "model_info": {"name": self.model, "version": "2025-01-01.0", "arch": self.model},
                "model_uuid": _MODEL_UUID,
            },
        }

    def _interim(self, utterance: dict[str, Any]) -> None:
        words = self._words(utterance)
        shown = max(1, min(len(words) - 1, utterance["interims"]))
        message = self._results(
            words[:shown], is_final=False, speech_final=False, from_finalize=False
        )
        self.emit(message)

    def _final(self, *, from_finalize: bool, speech_final: bool, always: bool = False) -> None:
        if self.stall is not None:
            return  # the utterance stays open: its final never comes
        utterance, self.utterance = self.utterance, None
        if utterance is None and not always:
            return
        words = self._words(utterance) if utterance is not None else []
        self.emit(
            self._results(
                words, is_final=True, speech_final=speech_final, from_finalize=from_finalize
            )
        )
        self.final_to = self.pos
        if words:
            self.last_word_end = words[-1]["end"]

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.conn.request_id,
            "sha256": "0" * 64,
            "created": datetime.now(UTC).isoformat(),
            "duration": round(self.pos, 3),
            "channels": self.channels,
            "models": [_MODEL_UUID],
            "model_info": {
                _MODEL_UUID: {"name": self.model, "version": "2025-01-01.0", "arch": self.model}
            },
        }

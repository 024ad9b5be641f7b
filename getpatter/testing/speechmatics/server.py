"""A fake Speechmatics real-time API (v2) on 127.0.0.1, for testing STT clients over real sockets.

Written from the RT API reference (protocols.md §7 and docs.speechmatics.com/api-ref), not from
any client, so it checks a client rather than agreeing with it:

- Auth as the service does it: `Authorization: Bearer <key>` (or `?jwt=<key>`) on the upgrade;
  a wrong or missing key is refused with HTTP 401 before the WebSocket opens.
- `StartRecognition` first; `RecognitionStarted` after `session_delay`. Audio (binary frames)
  before `RecognitionStarted` is a protocol error: `Error` then close, as the docs warn.
- Every binary frame is acknowledged with `AudioAdded` and its `seq_no`, counting from 1.
- The "recogniser" is a script: the i-th utterance is `transcripts[i]`. Speech is found by
  energy (20 ms frames above `speech_rms`), in audio time. While speech goes on, partials grow a
  word at a time (every `partial_every` seconds of audio). An utterance ends on
  `ForceEndOfUtterance`, on `end_of_utterance_silence_trigger` seconds of silent audio (when
  the client configured it), or at `EndOfStream`; then comes `AddTranscript` (or two of them
  with `split_finals`) and `EndOfUtterance`. Finals leave `latency` seconds after the trigger.
- `EndOfStream` → the remaining finals → `EndOfTranscript` → close 1000.
- `quota_exceeded = True`: the session is refused after StartRecognition with
  `Error {type: quota_exceeded}` and close code 4005 (the docs' retryable quota error).

Faults: `drop_connections()` kills every live socket at the TCP level. `stall` (read when a
session starts): ``"no_final"`` acknowledges audio and sends partials as usual but never an
`AddTranscript` or `EndOfUtterance` (not for silence, `ForceEndOfUtterance` or `EndOfStream`);
``"silent"`` sends `RecognitionStarted` and then nothing at all. Both still end the session on
`EndOfStream` (``"no_final"`` with its `EndOfTranscript`).
For assertions: `sessions` (one per connection, with everything it received), `rejected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Unpack

from aiohttp import WSMsgType, web

from getpatter.testing.listening import (
    CLOSE,
    EnergyFrames,
    ListeningKnobs,
    ListeningServer,
    Sample,
    Stall,
    decode,
)

log = logging.getLogger(__name__)

__all__ = ["FakeSpeechmatics", "SpeechmaticsSession"]

_ENCODINGS = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1}
_SAMPLES: dict[str, Sample] = {"pcm_s16le": "pcm16", "pcm_f32le": "f32", "mulaw": "ulaw"}


@dataclass
class SpeechmaticsSession:
    """One WebSocket connection, as the fake saw it."""

    request_headers: dict[str, str]
    query: dict[str, str]
    request: web.Request
    ws: web.WebSocketResponse
    start: dict[str, Any] | None = None
    started: bool = False
    audio: bytearray = field(default_factory=bytearray)
    frames: int = 0  # binary messages received (= the last seq_no acknowledged)
    received: list[dict[str, Any]] = field(default_factory=list)  # every JSON message
    sent: list[dict[str, Any]] = field(default_factory=list)  # every JSON message sent
    force_eou: list[dict[str, Any]] = field(default_factory=list)
    stall: Stall = None
    end_of_stream: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    # recogniser state
    rate: int = 16000
    width: int = 2
    encoding: str = "pcm_s16le"
    eou_trigger: float = 0.0
    samples_seen: int = 0
    energy: EnergyFrames = field(default_factory=lambda: EnergyFrames(16000, inclusive=True))
    speech_start: float | None = None
    speech_end: float = 0.0
    silence: float = 0.0
    partials: int = 0
    utterance_speech: float = 0.0

    @property
    def audio_seconds(self) -> float:
        return self.samples_seen / self.rate if self.rate else 0.0


class FakeSpeechmatics(ListeningServer[SpeechmaticsSession]):
    """The Speechmatics RT API on 127.0.0.1: connect to `ws_url` (``ws://127.0.0.1:P/v2``)."""

    _on_stop = "leave"
    _path = "/v2"

    def __init__(
        self,
        api_key: str = "sm-test",
        *,
        session_delay: float = 0.02,
        partial_every: float = 0.4,
        split_finals: bool = False,
        **knobs: Unpack[ListeningKnobs],
    ) -> None:
        super().__init__(api_key, **knobs)
        self.session_delay = session_delay
        self.partial_every = partial_every
        self.split_finals = split_finals
        self.quota_exceeded = False

    @property
    def sessions(self) -> list[SpeechmaticsSession]:
        """One per connection, with everything it received."""
        return self.connections

    @property
    def utterances(self) -> int:
        """How many utterances were given out."""
        return len(self._given)

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/v2", self._handle), web.get("/v2/{lang}", self._handle)]

    # --- the endpoint ----------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if auth and scheme.lower() == "bearer":
            return token == self.api_key
        return request.query.get("jwt", "") == self.api_key if not auth else False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            self.rejected.append(401)
            return web.Response(status=401, text="401 Authorization Required")
        ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024, heartbeat=None)
        await ws.prepare(request)
        session = SpeechmaticsSession(
            dict(request.headers), dict(request.query), request, ws, stall=self.stall
        )
        self.connections.append(session)
        outbox: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        sender = asyncio.create_task(self._sender(ws, session, outbox))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    if not await self._on_text(ws, session, outbox, msg.data):
                        break
                elif msg.type == WSMsgType.BINARY:
                    if not await self._on_audio(ws, session, outbox, msg.data):
                        break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            session.closed = True
            if not ws.closed:  # an error and its close are still queued: let them go out
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                    await asyncio.wait_for(asyncio.shield(sender), 2.0)
            sender.cancel()
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.close()
        return ws

    async def _sender(
        self,
        ws: web.WebSocketResponse,
        session: SpeechmaticsSession,
        outbox: asyncio.Queue[tuple[float, Any]],
    ) -> None:
        """Send queued messages in order, none before its due time."""
        loop = asyncio.get_running_loop()
        while True:
            due, message = await outbox.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if ws.closed:
                return
            if message is CLOSE:
                await ws.close(code=1000)
                return
            if isinstance(message, tuple):  # (error message, close code)
                session.sent.append(message[0])
                await ws.send_str(json.dumps(message[0]))
                await ws.close(code=message[1])
                return
            session.sent.append(message)
            await ws.send_str(json.dumps(message))

    def _queue(self, outbox: asyncio.Queue[tuple[float, Any]], msg: Any, delay: float = 0) -> None:
        outbox.put_nowait((asyncio.get_running_loop().time() + delay, msg))

    async def _fail(
        self,
        session: SpeechmaticsSession,
        outbox: asyncio.Queue[tuple[float, Any]],
        kind: str,
        reason: str,
        code: int = 1003,
    ) -> bool:
        error = {"message": "Error", "type": kind, "reason": reason}
        session.errors.append(error)
        self._queue(outbox, (error, code))
        return False

    async def _on_text(
        self,
        ws: web.WebSocketResponse,
        session: SpeechmaticsSession,
        outbox: asyncio.Queue[tuple[float, Any]],
        data: str,
    ) -> bool:
        try:
            msg = json.loads(data)
            kind = msg["message"]
        except (ValueError, KeyError, TypeError):
            return await self._fail(session, outbox, "invalid_message", "Invalid JSON message")
        session.received.append(msg)
        if kind == "StartRecognition":
            return await self._on_start(session, outbox, msg)
        if session.start is None:
            return await self._fail(
                session, outbox, "protocol_error", f"{kind} received before StartRecognition"
            )
        if kind == "ForceEndOfUtterance":
            if not session.started:
                return await self._fail(
                    session,
                    outbox,
                    "protocol_error",
                    "ForceEndOfUtterance before RecognitionStarted",
                )
            session.force_eou.append(msg)
            self._end_utterance(session, outbox, forced=True)
            return True
        if kind == "EndOfStream":
            session.end_of_stream = msg
            if msg.get("last_seq_no") != session.frames:
                log.warning(
                    "fake speechmatics: EndOfStream last_seq_no=%r, but %d frames were added",
                    msg.get("last_seq_no"),
                    session.frames,
                )
            if session.speech_start is not None:
                self._end_utterance(session, outbox, forced=False)
            if session.stall != "silent":
                self._queue(outbox, {"message": "EndOfTranscript"}, self.latency)
            self._queue(outbox, CLOSE, self.latency)
            return True
        if kind in ("SetRecognitionConfig", "GetSpeakers"):
            return True
        return await self._fail(session, outbox, "invalid_message", f"Unknown message {kind!r}")

    async def _on_start(
        self,
        session: SpeechmaticsSession,
        outbox: asyncio.Queue[tuple[float, Any]],
        msg: dict[str, Any],
    ) -> bool:
        if session.start is not None:
            return await self._fail(
                session, outbox, "protocol_error", "StartRecognition sent twice"
            )
        fmt = msg.get("audio_format") or {}
        config = msg.get("transcription_config")
        if fmt.get("type") != "raw" or fmt.get("encoding") not in _ENCODINGS:
            return await self._fail(
                session, outbox, "invalid_audio_type", f"Unsupported audio_format {fmt!r}"
            )
        rate = fmt.get("sample_rate")
        if not isinstance(rate, int) or not 8000 <= rate <= 48000:
            return await self._fail(
                session, outbox, "invalid_audio_type", f"Invalid sample_rate {rate!r}"
            )
        if not isinstance(config, dict) or not isinstance(config.get("language"), str):
            return await self._fail(
                session, outbox, "invalid_config", "transcription_config.language is required"
            )
        session.start = msg
        session.rate, session.encoding = rate, fmt["encoding"]
        session.width = _ENCODINGS[session.encoding]
        session.energy = EnergyFrames(rate, inclusive=True)
        conversation = config.get("conversation_config") or {}
        session.eou_trigger = float(conversation.get("end_of_utterance_silence_trigger") or 0.0)
        if self.quota_exceeded:
            return await self._fail(session, outbox, "quota_exceeded", "Quota exceeded", 4005)

        async def started() -> None:
            await asyncio.sleep(self.session_delay)
            session.started = True
            self._queue(
                outbox,
                {
                    "message": "RecognitionStarted",
                    "id": str(uuid.uuid4()),
                    "orchestrator_version": "fake",
                    "language_pack_info": {
                        "adapted": False,
                        "itn": True,
                        "language_description": "English",
                        "word_delimiter": " ",
                        "writing_direction": "left-to-right",
                    },
                },
            )

        asyncio.get_running_loop().create_task(started())
        return True

    # --- the recogniser --------------------------------------------------------------------

    async def _on_audio(
        self,
        ws: web.WebSocketResponse,
        session: SpeechmaticsSession,
        outbox: asyncio.Queue[tuple[float, Any]],
        data: bytes,
    ) -> bool:
        if not session.started:
            return await self._fail(
                session, outbox, "protocol_error", "Audio received before RecognitionStarted"
            )
        if session.end_of_stream is not None:
            return await self._fail(session, outbox, "protocol_error", "Audio after EndOfStream")
        session.frames += 1
        session.audio.extend(data)
        if session.stall != "silent":
            self._queue(outbox, {"message": "AudioAdded", "seq_no": session.frames})
        samples = decode(data, _SAMPLES[session.encoding])
        for speech in session.energy.feed(samples, self.speech_rms):
            self._on_frame(session, outbox, speech)
        return True

    def _on_frame(
        self,
        session: SpeechmaticsSession,
        outbox: asyncio.Queue[tuple[float, Any]],
        speech: bool,
    ) -> None:
        start = session.audio_seconds
        session.samples_seen += session.energy.step
        end = session.audio_seconds
        if speech:
            if session.speech_start is None:
                session.speech_start, session.partials, session.utterance_speech = start, 0, 0.0
            session.speech_end, session.silence = end, 0.0
            session.utterance_speech += end - start
            if session.utterance_speech >= (session.partials + 1) * self.partial_every:
                session.partials += 1
                self._partial(session, outbox)
        elif session.speech_start is not None:
            session.silence += end - start
            if session.eou_trigger > 0 and session.silence >= session.eou_trigger:
                self._end_utterance(session, outbox, forced=False)

    def _upcoming(self) -> str:
        return self.transcripts[0] if self.transcripts else self.default_transcript

    def _partial(self, session: SpeechmaticsSession, outbox: asyncio.Queue[Any]) -> None:
        if session.stall == "silent":
            return
        words = self._upcoming().split()
        text = " ".join(words[: min(session.partials, len(words))])
        assert session.speech_start is not None
        self._queue(
            outbox,
            _transcript_msg("AddPartialTranscript", text, session.speech_start, session.speech_end),
        )

    def _end_utterance(
        self, session: SpeechmaticsSession, outbox: asyncio.Queue[Any], *, forced: bool
    ) -> None:
        if session.stall is not None:
            return  # the utterance stays open: its final never comes
        if session.speech_start is None:  # nothing heard since the last end of utterance
            at = session.audio_seconds
            if forced:
                self._queue(outbox, _transcript_msg("AddTranscript", "", at, at), self.latency)
                self._queue(outbox, _eou(at), self.latency)
            return
        text = self.next_transcript()
        start, end = session.speech_start, session.speech_end
        session.speech_start, session.silence = None, 0.0
        words = text.split()
        if self.split_finals and len(words) > 1:
            half = len(words) // 2
            middle = start + (end - start) * half / len(words)
            first, second = " ".join(words[:half]), " ".join(words[half:])
            self._queue(
                outbox, _transcript_msg("AddTranscript", first, start, middle), self.latency
            )
            self._queue(outbox, _transcript_msg("AddTranscript", second, middle, end), self.latency)
        else:
            self._queue(outbox, _transcript_msg("AddTranscript", text, start, end), self.latency)
        self._queue(outbox, _eou(end), self.latency)


def _eou(at: float) -> dict[str, Any]:
    return {
        "message": "EndOfUtterance",
        "format": "2.9",
        "metadata": {"start_time": at, "end_time": at},
    }


def _transcript_msg(kind: str, text: str, start: float, end: float) -> dict[str, Any]:
    """An AddTranscript / AddPartialTranscript in the 2.9 format: words, then punctuation."""
    results: list[dict[str, Any]] = []
    words = text.split()
    span = (end - start) / max(len(words), 1)
    for i, word in enumerate(words):
        core = word.rstrip(".,?!")
        w0, w1 = round(start + i * span, 3), round(start + (i + 1) * span, 3)
        if core:
            results.append(
                {
                    "type": "word",
                    "start_time": w0,
                    "end_time": w1,
                    "alternatives": [
                        {"content": core, "confidence": 0.93, "language": "en", "speaker": "UU"}
                    ],
                }
            )
        for mark in word[len(core) :]:
            results.append(
                {
                    "type": "punctuation",
                    "start_time": w1,
                    "end_time": w1,
                    "is_eos": mark in ".?!",
                    "attaches_to": "previous",
                    "alternatives": [
                        {"content": mark, "confidence": 1.0, "language": "en", "speaker": "UU"}
                    ],
                }
            )
    return {
        "message": kind,
        "format": "2.9",
        "metadata": {
            "start_time": round(start, 3),
            "end_time": round(end, 3),
            "transcript": text + " " if text else "",
        },
        "results": results,
    }

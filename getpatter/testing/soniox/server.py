from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Unpack

from aiohttp import web

from getpatter.testing.listening import (
    CLOSE,
    EnergyFrames,
    Heard,
    Listener,
    ListeningKnobs,
    ListeningServer,
    Sample,
    accept,
    decode,
    masked,
)

__all__ = ["MODELS", "FakeSoniox", "SonioxConnection"]

MODELS = frozenset({"stt-rt-preview", "stt-rt-v3", "stt-rt-v4", "stt-rt-v5"})
RAW_FORMATS = {"pcm_s16le": 2, "mulaw": 1, "alaw": 1}  # bytes per sample, decodable here
_SAMPLES: dict[str, Sample] = {"pcm_s16le": "pcm16", "mulaw": "ulaw", "alaw": "alaw"}
CONTAINERS = {"auto", "wav", "mp3", "ogg", "flac", "webm", "aac", "aiff", "amr", "asf"}


@dataclass
class SonioxConnection(Heard):
    """One socket, as the fake saw it (`messages`: the control messages)."""

    config: dict[str, Any] | None = None
    audio: bytearray = field(default_factory=bytearray)
    error: dict[str, Any] | None = None  # the error response the fake ended it with
    ended_audio: bool = False  # the empty frame came

    def tokens(self) -> list[dict[str, Any]]:
        return [t for m in self.sent for t in m.get("tokens", ())]


class FakeSoniox(ListeningServer[SonioxConnection]):
    """Soniox's real-time STT at `ws_url` (``ws://127.0.0.1:P/transcribe-websocket``)."""

    _path = "/transcribe-websocket"

    def __init__(
        self,
        api_key: str = "sx-test-key",
        *,
        partial_every: float = 0.3,
        endpoint_silence: float = 0.5,
        idle_timeout: float = 20.0,
        accept_config_key: bool = True,
        refuse: tuple[int, str, str] | None = None,
        **knobs: Unpack[ListeningKnobs],
    ) -> None:
        super().__init__(api_key, **knobs)
        self.partial_every = partial_every
        self.endpoint_silence = endpoint_silence
        self.idle_timeout = idle_timeout
        self.accept_config_key = accept_config_key
        self.refuse = refuse

    @property
    def utterances(self) -> list[str]:
        """The texts given out, in order."""
        return self._given

    def _routes(self) -> list[web.RouteDef]:
        return [web.get(self._path, self._ws)]

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
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        ws = await accept(request, ("soniox-api-key",) if "soniox-api-key" in offered else ())
        headers = masked(request.headers, ("authorization", "sec-websocket-protocol"))
        conn = SonioxConnection(request, ws, headers=headers)
        return await self._serve(_Session(self, conn, key))


def _error(code: int, kind: str, message: str) -> dict[str, Any]:
    return {
        "error_code": code,
        "error_type": kind,
        "error_message": message,
        "request_id": str(uuid.uuid4()),
    }


class _Session(Listener):
    """One connection's recogniser: audio → utterances → token responses."""

    fake: FakeSoniox
    conn: SonioxConnection

    def __init__(self, fake: FakeSoniox, conn: SonioxConnection, key: str | None) -> None:
        super().__init__(fake, conn)
        self.key = key
        self.watch_idle()
        self.started = False
        self.rate = 8000
        self.width = 1
        self.format = "mulaw"
        self.endpoints = False
        self.frames = EnergyFrames(self.rate)
        self.pos_ms = 0.0  # audio heard
        self.final_ms = 0.0  # audio finalized
        self.silence = 0.0

    async def run(self) -> None:
        if self.key is not None and self.key != self.fake.api_key:
            await self.fail(401, "unauthenticated", "Incorrect API key provided.")
            return
        await super().run()

    async def fail(self, code: int, kind: str, message: str) -> None:
        """The error response, then the close (at once, not after `latency`)."""
        self.ending = True
        error = _error(code, kind, message)
        self.conn.error = error
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.conn.ws.send_str(json.dumps(error))
            self.conn.sent.append(error)
            await self.conn.ws.close(code=1000)

    async def on_idle(self) -> None:
        await self.fail(408, "request_timeout", "No audio or keepalive received.")

    # --- client messages -----------------------------------------------------------------

    async def on_text(self, data: str) -> None:
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
                self.frames = EnergyFrames(rate)
            else:
                self.format = "undecoded"
        elif fmt in CONTAINERS:
            self.format = "undecoded"
        else:
            await self.fail(400, "invalid_request", f"Invalid audio_format: {fmt!r}.")
            return
        self.endpoints = bool(config.get("enable_endpoint_detection"))
        self.started = True

    async def on_audio(self, data: bytes) -> None:
        if not self.started:
            await self.fail(400, "invalid_request", "The start request must come first.")
            return
        if not data:
            self._end_of_audio()
            return
        self.conn.audio += data
        if self.format == "undecoded":
            return
        for speech in self.frames.feed(decode(data, _SAMPLES[self.format]), self.fake.speech_rms):
            self._frame(speech)

    def _end_of_audio(self) -> None:
        self.conn.ended_audio = True
        self.ending = True
        if self.stall is None:
            self._finalize(None)
        self.emit(self._response([], finished=True))
        self.emit(CLOSE)

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

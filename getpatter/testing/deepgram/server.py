from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
_DECODABLE: dict[str, Sample] = {"mulaw": "ulaw", "alaw": "alaw", "linear16": "pcm16"}
_MODEL_UUID = "1dbdfb4d-85b2-4659-9e5e-a2ac2a2e5a2b"


@dataclass
class DeepgramConnection(Heard):
    """One accepted socket, as the fake saw it (`count`, `sent_of` for assertions)."""

    query: dict[str, str] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    audio: bytearray = field(default_factory=bytearray)
    audio_frames: list[int] = field(default_factory=list)  # byte size of each binary frame


def _flag(query: dict[str, str], name: str, default: bool = False) -> bool:
    value = query.get(name)
    return default if value is None else value.lower() == "true"


def _plain(text: str) -> str:
    """What Deepgram gives without smart_format/punctuate: lowercase, no punctuation."""
    return " ".join(re.sub(r"[^\w\s']", " ", text).lower().split())


class FakeDeepgram(ListeningServer[DeepgramConnection]):
    """Deepgram's live transcription at `ws_url` + ``/v1/listen``."""

    def __init__(
        self,
        api_key: str = "dg-test-key",
        *,
        idle_timeout: float = 10.0,
        interim_every: float = 0.4,
        confidence: float = 0.97,
        access_tokens: Sequence[str] = (),
        refuse_status: int | None = None,
        **knobs: Unpack[ListeningKnobs],
    ) -> None:
        super().__init__(api_key, **knobs)
        self.idle_timeout = idle_timeout
        self.interim_every = interim_every
        self.confidence = confidence
        self.access_tokens = set(access_tokens)
        self.refuse_status = refuse_status

    @property
    def utterances(self) -> list[str]:
        """The texts given out, in order."""
        return self._given

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/listen", self._listen)]

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
        ws = await accept(request)
        conn = DeepgramConnection(request, ws, headers=masked(request.headers), query=query)
        return await self._serve(_Session(self, conn))


class _Session(Listener):
    """One connection's recogniser: audio → utterances → Results."""

    fake: FakeDeepgram
    conn: DeepgramConnection

    def __init__(self, fake: FakeDeepgram, conn: DeepgramConnection) -> None:
        super().__init__(fake, conn)
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
        self.frames = EnergyFrames(self.rate)
        self.pos = 0.0  # seconds of audio heard
        self.final_to = 0.0  # end of the last final
        self.silence = 0.0
        self.last_word_end: float | None = None
        self.watch_idle()

    async def on_idle(self) -> None:
        await self.conn.ws.close(code=1011, message=NET0001_REASON.encode())

    # --- client text messages ------------------------------------------------------------

    async def on_text(self, data: str) -> None:
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
            self.ending = True
            self._final(from_finalize=False, speech_final=False)
            self.emit(self._metadata())
            self.emit(CLOSE)
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

    async def on_audio(self, data: bytes) -> None:
        self.conn.audio += data
        self.conn.audio_frames.append(len(data))
        kind = _DECODABLE.get(self.encoding or "")
        if kind is None:
            # Containerized or compressed audio: not listened to; Finalize ends utterances.
            if self.utterance is None:
                self._begin()
            return
        samples = decode(data, kind)
        if self.channels > 1:
            samples = samples[: len(samples) // self.channels * self.channels][:: self.channels]
        for speech in self.frames.feed(samples, self.fake.speech_rms):
            self._frame(speech, self.frames.step)

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

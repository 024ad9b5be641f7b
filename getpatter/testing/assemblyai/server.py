from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Sequence
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
    accept,
    decode,
    masked,
)

__all__ = ["AssemblyAISession", "FakeAssemblyAI"]

SPEECH_MODELS = {
    "universal-streaming-english",
    "universal-streaming-multilingual",
    "u3-rt-pro",
    "u3-pro",
    "whisper-rt",
}
ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}  # bytes per sample


@dataclass
class AssemblyAISession(Heard):
    """One socket, as the fake saw it (`count`, `sent_of` for assertions)."""

    query: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    frame_ms: list[float] = field(default_factory=list)  # duration of each binary frame
    error: tuple[int, str] | None = None  # how the fake ended it, if it did


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text).lower().split())


class FakeAssemblyAI(ListeningServer[AssemblyAISession]):
    """AssemblyAI's streaming STT at `ws_url` + ``/v3/ws``."""

    def __init__(
        self,
        api_key: str = "aai-test-key",
        *,
        format_delay: float = 0.05,
        partial_every: float = 0.3,
        end_silence_ms: float = 400.0,
        rate_slack: float = 2.0,
        temp_tokens: Sequence[str] = (),
        refuse: tuple[int, str] | None = None,
        **knobs: Unpack[ListeningKnobs],
    ) -> None:
        super().__init__(api_key, **knobs)
        self.format_delay = format_delay
        self.partial_every = partial_every
        self.end_silence_ms = end_silence_ms
        self.rate_slack = rate_slack
        self.temp_tokens = set(temp_tokens)
        self.refuse = refuse

    @property
    def sessions(self) -> list[AssemblyAISession]:
        """One per socket, in order."""
        return self.connections

    @property
    def turns(self) -> list[str]:
        """The texts given out, in order."""
        return self._given

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/v3/ws", self._ws)]

    # --- the endpoint --------------------------------------------------------------------

    def _auth_problem(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        token = request.query.get("token")
        if header is None and token is None:
            return "Unauthorized Connection: Missing Authorization header"
        if header == self.api_key or (token is not None and token in self.temp_tokens):
            return None
        return "Unauthorized Connection: Invalid API key"

    def _query_problem(self, query: dict[str, str]) -> str | None:
        rate = query.get("sample_rate")
        if rate is None or not rate.isdigit() or int(rate) <= 0:
            return "Input validation error: sample_rate must be a positive integer"
        if query.get("encoding", "pcm_s16le") not in ENCODINGS:
            return f"Input validation error: unsupported encoding {query.get('encoding')}"
        model = query.get("speech_model")
        if model is not None and model not in SPEECH_MODELS:
            return f"Input validation error: unknown speech_model {model}"
        return None

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = await accept(request)
        query = dict(request.query)
        session = AssemblyAISession(request, ws, headers=masked(request.headers), query=query)
        runner = _Run(self, session)
        return await self._serve(runner, self._open(runner, request))

    async def _open(self, runner: _Run, request: web.Request) -> None:
        """As on the service, a refusal comes inside the socket: Error, then the close."""
        problem = self._auth_problem(request)
        if problem is not None:
            await runner.fail(1008, problem)
        elif self.refuse is not None:
            await runner.fail(*self.refuse)
        elif (problem := self._query_problem(runner.conn.query)) is not None:
            await runner.fail(3006, problem)
        else:
            await runner.run()


class _Run(Listener):
    """One session's recogniser: audio → turns → Turn messages."""

    opening = 1  # Begin goes out whatever the stall
    fake: FakeAssemblyAI
    conn: AssemblyAISession

    def __init__(self, fake: FakeAssemblyAI, session: AssemblyAISession) -> None:
        super().__init__(fake, session)
        q = session.query
        self.rate = int(q.get("sample_rate", "16000")) if q.get("sample_rate", "").isdigit() else 1
        self.encoding = q.get("encoding", "pcm_s16le")
        self.width = ENCODINGS.get(self.encoding, 2)
        self.format_turns = q.get("format_turns", "false").lower() == "true"
        silence = q.get("min_turn_silence") or q.get("min_end_of_turn_silence_when_confident")
        self.end_silence = float(silence or fake.end_silence_ms) / 1000
        self.started = self.loop.time()
        self.audio_s = 0.0
        self.frames = EnergyFrames(self.rate)
        self.turn_order = 0
        self.silence = 0.0
        self.failing: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self.emit({"type": "Begin", "id": self.conn.id, "expires_at": int(time.time()) + 10800})
        await super().run()

    async def stop(self) -> None:
        await super().stop()
        if self.failing is not None:
            await asyncio.gather(self.failing, return_exceptions=True)

    async def fail(self, code: int, text: str) -> None:
        """Error frame, then close with the same code (sent at once, not after latency)."""
        self.conn.error = (code, text)
        ws = self.conn.ws
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps({"type": "Error", "error_code": code, "error": text}))
            reason = text if len(text.encode()) <= 123 else "See Error message for details"
            await ws.close(code=code, message=reason.encode())

    def _fail_soon(self, code: int, text: str) -> None:
        if not self.ending:
            self.ending = True
            self.failing = self.loop.create_task(self.fail(code, text))

    # --- client messages -----------------------------------------------------------------

    async def on_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            self._fail_soon(3006, f"Invalid JSON: {data[:60]}")
            return
        if not isinstance(message, dict):
            self._fail_soon(3006, f"Invalid Message: {data[:60]}")
            return
        self.conn.messages.append(message)
        kind = message.get("type")
        if kind == "ForceEndpoint":
            self._end_turn(confidence=1.0)
        elif kind == "Terminate":
            self.ending = True
            self._end_turn(confidence=1.0)
            elapsed = self.loop.time() - self.started
            self.emit(
                {
                    "type": "Termination",
                    "audio_duration_seconds": int(self.audio_s),
                    "session_duration_seconds": int(elapsed),
                },
                delay=self.fake.format_delay if self.format_turns else 0.0,
            )
            self.emit(CLOSE, delay=self.fake.format_delay if self.format_turns else 0.0)
        elif kind in ("KeepAlive", "UpdateConfiguration"):
            return
        else:
            self._fail_soon(3006, f"Invalid Message Type: {kind}")

    async def on_audio(self, data: bytes) -> None:
        ms = len(data) / self.width / self.rate * 1000
        self.conn.frame_ms.append(ms)
        if not 50 <= ms <= 1000:
            self._fail_soon(
                3007, f"Input duration violation: {ms:.0f} ms. Expected between 50 and 1000 ms"
            )
            return
        self.audio_s += ms / 1000
        elapsed = self.loop.time() - self.started
        if self.audio_s > elapsed + self.fake.rate_slack:
            self._fail_soon(
                3007,
                f"Audio Transmission Rate Exceeded: Received {self.audio_s:.1f} sec. audio "
                f"in {elapsed:.1f} sec",
            )
            return
        samples = decode(data, "ulaw" if self.encoding == "pcm_mulaw" else "pcm16")
        position = self.audio_s - (len(self.frames.carry) + len(samples)) / self.rate
        for speech in self.frames.feed(samples, self.fake.speech_rms):
            position += self.frames.step / self.rate
            self._frame(speech, position)

    # --- turns ---------------------------------------------------------------------------

    def _frame(self, speech: bool, at: float) -> None:
        turn = self.utterance
        if not speech:
            self.silence += 0.02
            if turn is not None and self.silence >= self.end_silence:
                self._end_turn(confidence=0.9)
            return
        self.silence = 0.0
        if turn is None:
            turn = self.utterance = {
                "text": self.fake.next_transcript(),
                "start": at - 0.02,
                "end": at,
                "speech": 0.0,
                "partials": 0,
            }
            self.emit({"type": "SpeechStarted", "timestamp": round((at - 0.02) * 1000)})
        turn["speech"] += 0.02
        turn["end"] = at
        if turn["speech"] >= (turn["partials"] + 1) * self.fake.partial_every:
            turn["partials"] += 1
            self._partial(turn)

    def _words(self, turn: dict[str, Any], formatted: bool) -> list[dict[str, Any]]:
        words = (turn["text"] if formatted else _plain(turn["text"])).split()
        each = (turn["end"] - turn["start"]) / max(1, len(words))
        return [
            {
                "start": round((turn["start"] + i * each) * 1000),
                "end": round((turn["start"] + (i + 1) * each) * 1000),
                "text": word,
                "confidence": 0.93,
                "word_is_final": True,
            }
            for i, word in enumerate(words)
        ]

    def _turn(self, words: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        final = [w["text"] for w in words if w["word_is_final"]]
        return {
            "type": "Turn",
            "turn_order": self.turn_order,
            "words": words,
            "transcript": " ".join(final),
            "utterance": "",
            **fields,
        }

    def _partial(self, turn: dict[str, Any]) -> None:
        words = self._words(turn, formatted=False)
        shown = words[: max(1, min(len(words) - 1, turn["partials"]))]
        if shown:
            shown[-1] = {**shown[-1], "word_is_final": False}
        self.emit(
            self._turn(
                shown, turn_is_formatted=False, end_of_turn=False, end_of_turn_confidence=0.02
            )
        )

    def _end_turn(self, confidence: float) -> None:
        if self.stall is not None:
            return  # the turn stays open: its end never comes
        turn, self.utterance = self.utterance, None
        if turn is None:
            return
        fields = {"end_of_turn": True, "end_of_turn_confidence": confidence}
        self.emit(self._turn(self._words(turn, False), turn_is_formatted=False, **fields))
        if self.format_turns:
            self.emit(
                self._turn(self._words(turn, True), turn_is_formatted=True, **fields),
                delay=self.fake.format_delay,
            )
        self.turn_order += 1

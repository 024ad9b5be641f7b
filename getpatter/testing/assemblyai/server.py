"""A fake AssemblyAI Universal Streaming v3 API on 127.0.0.1, for STT tests over real sockets.

Written from AssemblyAI's documented protocol (protocols.md §7, the "Message sequence" and
"Common session errors and closures" pages), not from any client.

    async with FakeAssemblyAI(transcripts=["What time do you open?"]) as aai:
        stt = AssemblyAISTT(api_key=aai.api_key, base_url=aai.ws_url)

The endpoint is ``GET /v3/ws`` (a WebSocket). As on the real service the upgrade always
succeeds and a failure is reported inside the socket: an `Error` frame
``{"type":"Error","error_code":N,"error":"…"}`` and then a close with code N.
- Auth: the ``Authorization`` header holds the bare key (no scheme), or ``?token=`` one of
  `temp_tokens`. Otherwise: 1008 ``Unauthorized Connection: …``. `refuse` = ``(code, text)``
  refuses every session that way instead (1008 for an account out of balance, 3009 for too
  many concurrent sessions).
- Query: ``sample_rate`` is required, ``encoding`` is ``pcm_s16le`` (default) or
  ``pcm_mulaw``, ``speech_model`` one AssemblyAI has; otherwise 3006.
- The session opens with `Begin`. Every binary frame must hold 50–1000 ms of audio, or the
  session ends with 3007 ``Input duration violation: <n> ms. Expected between 50 and 1000 ms``;
  more audio than real time plus `rate_slack` seconds ends it with 3007 too.
- Speech is found by energy (20 ms frames with RMS above `speech_rms`). The i-th turn (across
  all sessions) says ``transcripts[i]`` (then `default_transcript`); a turn whose session ends
  before its end of turn goes back to the script. While it lasts, a partial
  `Turn` (``end_of_turn:false``, growing ``words``; ``transcript`` holds the final words only)
  comes every `partial_every` seconds of speech. It ends after ``min_turn_silence`` ms of
  silent audio (default `end_silence_ms`), on `ForceEndpoint`, or on `Terminate`: an
  end-of-turn `Turn` (lowercase, unpunctuated) and, with ``format_turns=true``, a formatted
  one for the same ``turn_order`` `format_delay` seconds later. `SpeechStarted` marks a start.
- `Terminate` ends the turn in flight, then `Termination`, then close 1000. `KeepAlive` and
  `UpdateConfiguration` are accepted; another message type, or text that is not JSON, ends
  the session with 3006.
- Every message goes out `latency` seconds after its cause, in order.

Faults: `drop_connections()` kills every live socket at the TCP level. `stall` (read when a
session opens): ``"no_final"`` sends partial Turns as usual but never an end of turn (not for
silence, `ForceEndpoint` or `Terminate`); ``"silent"`` sends `Begin` and then nothing at all.
Both still end the session on `Terminate` (``"no_final"`` with its `Termination`). For assertions:
`sessions` (each with its query, headers, frame durations, messages, sent messages, close).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.core.audio import ulaw_decode
from getpatter.testing._loopback import LoopbackServer

__all__ = ["AssemblyAISession", "FakeAssemblyAI"]

SPEECH_MODELS = {
    "universal-streaming-english",
    "universal-streaming-multilingual",
    "u3-rt-pro",
    "u3-pro",
    "whisper-rt",
}
ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}  # bytes per sample
_CLOSE = "close"
Stall = Literal["no_final", "silent"] | None


@dataclass
class AssemblyAISession:
    """One socket, as the fake saw it."""

    query: dict[str, str]
    headers: dict[str, str]
    request: web.Request
    ws: web.WebSocketResponse
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    frame_ms: list[float] = field(default_factory=list)  # duration of each binary frame
    messages: list[dict[str, Any]] = field(default_factory=list)  # client text messages
    sent: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[int, str] | None = None  # how the fake ended it, if it did
    closed: bool = False
    close_code: int | None = None

    def count(self, kind: str) -> int:
        return sum(1 for m in self.messages if m.get("type") == kind)

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == kind]


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text).lower().split())


class FakeAssemblyAI(LoopbackServer):
    """AssemblyAI's streaming STT at `ws_url` + ``/v3/ws``."""

    def __init__(
        self,
        api_key: str = "aai-test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        transcripts: Sequence[str] = (),
        default_transcript: str = "Hello.",
        latency: float = 0.05,
        format_delay: float = 0.05,
        speech_rms: float = 300.0,
        partial_every: float = 0.3,
        end_silence_ms: float = 400.0,
        rate_slack: float = 2.0,
        temp_tokens: Sequence[str] = (),
        refuse: tuple[int, str] | None = None,
        stall: Stall = None,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.transcripts = list(transcripts)
        self.default_transcript = default_transcript
        self.latency = latency
        self.format_delay = format_delay
        self.speech_rms = speech_rms
        self.partial_every = partial_every
        self.end_silence_ms = end_silence_ms
        self.rate_slack = rate_slack
        self.temp_tokens = set(temp_tokens)
        self.refuse = refuse
        self.stall: Stall = stall
        self.sessions: list[AssemblyAISession] = []
        self.turns: list[str] = []

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def live(self) -> list[AssemblyAISession]:
        return [s for s in self.sessions if not s.closed]

    def next_transcript(self) -> str:
        text = self.transcripts.pop(0) if self.transcripts else self.default_transcript
        self.turns.append(text)
        return text

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/v3/ws", self._ws)]

    def _open_sockets(self) -> list[AssemblyAISession]:
        return self.live

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
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        query = dict(request.query)
        headers = {
            k: ("***" if k.lower() == "authorization" else v) for k, v in request.headers.items()
        }
        session = AssemblyAISession(query, headers, request, ws)
        self.sessions.append(session)
        runner = _Run(self, session)
        try:
            problem = self._auth_problem(request)
            if problem is not None:
                await runner.fail(1008, problem)
            elif self.refuse is not None:
                await runner.fail(*self.refuse)
            elif (problem := self._query_problem(query)) is not None:
                await runner.fail(3006, problem)
            else:
                await runner.run()
        finally:
            session.closed = True
            session.close_code = ws.close_code
            await runner.stop()
        return ws


class _Run:
    """One session's recogniser: audio → turns → Turn messages."""

    def __init__(self, fake: FakeAssemblyAI, session: AssemblyAISession) -> None:
        self.fake = fake
        self.session = session
        q = session.query
        self.rate = int(q.get("sample_rate", "16000")) if q.get("sample_rate", "").isdigit() else 1
        self.encoding = q.get("encoding", "pcm_s16le")
        self.width = ENCODINGS.get(self.encoding, 2)
        self.format_turns = q.get("format_turns", "false").lower() == "true"
        silence = q.get("min_turn_silence") or q.get("min_end_of_turn_silence_when_confident")
        self.end_silence = float(silence or fake.end_silence_ms) / 1000
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.outbox: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self.writer = self.loop.create_task(self._write())
        self.audio_s = 0.0
        self.carry = np.zeros(0, np.int16)
        self.turn: dict[str, Any] | None = None
        self.turn_order = 0
        self.silence = 0.0
        self.ending = False
        self.stall: Stall = fake.stall
        self.began = False
        self.failing: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self.emit({"type": "Begin", "id": self.session.id, "expires_at": int(time.time()) + 10800})
        async for msg in self.session.ws:
            if self.ending:
                continue
            if msg.type == WSMsgType.BINARY:
                self._audio(msg.data)
            elif msg.type == WSMsgType.TEXT:
                self._control(msg.data)
            else:
                break

    async def stop(self) -> None:
        if self.turn is not None:  # never ended: the words are still to come
            self.fake.transcripts.insert(0, self.turn["text"])
            self.fake.turns.pop()
            self.turn = None
        self.writer.cancel()
        await asyncio.gather(self.writer, return_exceptions=True)
        if self.failing is not None:
            await asyncio.gather(self.failing, return_exceptions=True)

    async def fail(self, code: int, text: str) -> None:
        """Error frame, then close with the same code (sent at once, not after latency)."""
        self.session.error = (code, text)
        ws = self.session.ws
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps({"type": "Error", "error_code": code, "error": text}))
            reason = text if len(text.encode()) <= 123 else "See Error message for details"
            await ws.close(code=code, message=reason.encode())

    def _fail_soon(self, code: int, text: str) -> None:
        if not self.ending:
            self.ending = True
            self.failing = self.loop.create_task(self.fail(code, text))

    # --- sending -------------------------------------------------------------------------

    def emit(self, message: Any, delay: float = 0.0) -> None:
        if self.stall == "silent" and self.began and message != _CLOSE:
            return
        self.began = True  # Begin goes out whatever the stall
        self.outbox.put_nowait((self.loop.time() + self.fake.latency + delay, message))

    async def _write(self) -> None:
        ws = self.session.ws
        while True:
            due, message = await self.outbox.get()
            await asyncio.sleep(max(0.0, due - self.loop.time()))
            if ws.closed:
                continue
            try:
                if message == _CLOSE:
                    await ws.close(code=1000)
                else:
                    await ws.send_str(json.dumps(message))
                    self.session.sent.append(message)
            except (ConnectionError, RuntimeError):
                pass

    # --- client messages -----------------------------------------------------------------

    def _control(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            self._fail_soon(3006, f"Invalid JSON: {data[:60]}")
            return
        if not isinstance(message, dict):
            self._fail_soon(3006, f"Invalid Message: {data[:60]}")
            return
        self.session.messages.append(message)
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
            self.emit(_CLOSE, delay=self.fake.format_delay if self.format_turns else 0.0)
        elif kind in ("KeepAlive", "UpdateConfiguration"):
            return
        else:
            self._fail_soon(3006, f"Invalid Message Type: {kind}")

    def _audio(self, data: bytes) -> None:
        ms = len(data) / self.width / self.rate * 1000
        self.session.frame_ms.append(ms)
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
        if self.encoding == "pcm_mulaw":
            samples = ulaw_decode(data)
        else:
            samples = np.frombuffer(data[: len(data) // 2 * 2], "<i2")
        samples = np.concatenate([self.carry, samples])
        step = max(1, self.rate // 50)
        whole = len(samples) // step * step
        self.carry = samples[whole:]
        position = self.audio_s - len(samples) / self.rate
        for i in range(0, whole, step):
            frame = samples[i : i + step].astype(np.float64)
            position += step / self.rate
            self._frame(float(np.sqrt(np.mean(frame * frame))) > self.fake.speech_rms, position)

    # --- turns ---------------------------------------------------------------------------

    def _frame(self, speech: bool, at: float) -> None:
        turn = self.turn
        if not speech:
            self.silence += 0.02
            if turn is not None and self.silence >= self.end_silence:
                self._end_turn(confidence=0.9)
            return
        self.silence = 0.0
        if turn is None:
            turn = self.turn = {
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
        turn, self.turn = self.turn, None
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

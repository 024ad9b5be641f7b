"""A fake Cartesia TTS WebSocket on 127.0.0.1, for testing TTS clients over real sockets.

`FakeCartesia` serves `GET /tts/websocket` as protocols.md §6 and Cartesia's docs describe it,
written from those rather than from any client:

- auth: `Authorization: Bearer <key>`, the legacy `X-API-Key`, or `?api_key=`; a version in
  the `Cartesia-Version` header or `?cartesia_version=` (any `YYYY-MM-DD` date). A wrong or
  missing key is refused with HTTP 401 before the upgrade, a missing version with 400 (bodies
  `{"title", "message", "error_code", "status_code", "request_id"}`, shape unverified);
- contexts: a generation request carries `context_id`, `model_id`, `transcript`, `voice`
  (`{"mode": "id", "id"}`, `{"id"}` or a bare id) and `output_format` (`container: raw`,
  `encoding` one of `pcm_s16le pcm_f32le pcm_mulaw pcm_alaw`, a listed `sample_rate`).
  With `continue: true` more requests may follow on the context; they must repeat every field
  but `transcript`, `continue`, `flush` and `duration`. Transcripts are joined verbatim.
  Text is generated when a request ends the context (`continue: false`), at `flush: true`, at
  once with `max_buffer_delay_ms: 0`, or else after `max_buffer_delay_ms` (default 3000 ms)
  with no new input — so a client that never flushes hears its sentence 3 s late;
- flushes: chunks carry `flush_id`, which starts at 1 and goes up with each `flush: true`;
  the end of a flush's audio is `{"type": "flush_done", "flush_id": n, ...}`;
- `{"context_id", "cancel": true}` stops the context at once: nothing more is sent for it;
- a finished context gets `{"type": "done", "done": true, ...}` after its last chunk, and more
  input on it is an error (unverified: the service's answer to a reused context id); errors are
  `{"type": "error", "done": true, "context_id", "status_code", "title", "message",
  "error_code", "request_id"}`, and they end that context only.

Audio is a tone as long as the text would take to say (`speech_tone`), in exactly the
requested encoding and rate. Knobs: `first_audio_delay` (per generation, counted from when
its text was generated on: a flush queued behind another on its context, whose text came
long before, starts as soon as that one ends), `chunk_ms`, `audio_speed` (× real time; 0 =
unpaced), `idle_timeout` (the service closes idle sockets after 5 minutes). Faults:
`refuse_with = 429` (or 402) refuses new sockets with that status, `stall_next(n)` makes the
next generation go silent after `n` chunks (0: no audio at all; more: mid-sentence), with no
end and the socket open, `drop_connections()` kills the live sockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Unpack

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.testing import speaking
from getpatter.testing.engines import speech_tone
from getpatter.testing.speaking import Encoding, SpeakingKnobs, SpeakingServer, word_spans

__all__ = ["FakeCartesia", "FakeCartesiaSession"]

ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")
_KINDS: dict[str, Encoding] = {"pcm_mulaw": "ulaw", "pcm_alaw": "alaw", "pcm_f32le": "f32"}
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
#: Fields a continuation may change; every other one must repeat the context's first request.
_MAY_CHANGE = frozenset({"transcript", "continue", "flush", "duration"})
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")


def encode(samples: np.ndarray, encoding: str) -> bytes:
    """int16 samples in one of Cartesia's raw encodings."""
    return speaking.encode(samples, _KINDS.get(encoding, "pcm16"))


def _voice_ok(voice: Any) -> bool:
    if isinstance(voice, str):
        return bool(voice)
    return isinstance(voice, dict) and bool(voice.get("id")) and voice.get("mode", "id") == "id"


def _format_problem(fmt: Any) -> str | None:
    if not isinstance(fmt, dict):
        return "output_format is required"
    if fmt.get("container") != "raw":
        return "the WebSocket supports only container 'raw'"
    if fmt.get("encoding") not in ENCODINGS:
        return f"encoding must be one of {', '.join(ENCODINGS)}"
    if fmt.get("sample_rate") not in SAMPLE_RATES:
        return f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}"
    return None


@dataclass(eq=False)
class FakeCartesiaSession:
    """One socket: requests received, contexts seen, and how it ended."""

    headers: dict[str, str]
    version: str
    ws: web.WebSocketResponse
    request: web.Request
    received: list[dict[str, Any]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False


class _Context:
    """One context: its fixed fields, buffered transcript, flush counter, and one worker."""

    def __init__(self, fake: FakeCartesia, session: FakeCartesiaSession, first: dict[str, Any]):
        self.fake, self.session = fake, session
        self.id = str(first["context_id"])
        self.fixed = {k: v for k, v in first.items() if k not in _MAY_CHANGE}
        self.buffer = ""
        self.flush_id = 1
        self.finished = False  # continue:false seen: no more input
        self.timer: asyncio.TimerHandle | None = None
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    def take(self, request: dict[str, Any]) -> None:
        self.buffer += str(request.get("transcript", ""))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        flush = bool(request.get("flush"))
        done = not request.get("continue", False)
        delay = self.fixed.get("max_buffer_delay_ms")
        if flush or done or delay == 0:
            self._generate()
        else:
            wait = (3000 if delay is None else int(delay)) / 1000
            self.timer = asyncio.get_running_loop().call_later(wait, self._generate)
        if flush:
            self.queue.put_nowait(("flush_done", self.flush_id))
            self.flush_id += 1
        if done:
            self.finished = True
            self.queue.put_nowait(("done", None))

    def _generate(self) -> None:
        self.timer = None
        if self.buffer.strip():
            at = asyncio.get_running_loop().time()
            self.queue.put_nowait(("text", (self.buffer, self.flush_id, at)))
        self.buffer = ""

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.worker.cancel()

    async def _work(self) -> None:
        try:
            while True:
                kind, value = await self.queue.get()
                if kind == "text":
                    await self._speak(*value)
                elif kind == "flush_done":
                    await self._send(
                        {"type": "flush_done", "done": False, "flush_done": True, "flush_id": value}
                    )
                else:
                    await self._send({"type": "done", "done": True})
                    self.session.done.append(self.id)
                    return
        except (ConnectionError, RuntimeError):
            pass

    async def _send(self, message: dict[str, Any]) -> None:
        await self.session.ws.send_json({**message, "context_id": self.id, "status_code": 206})

    async def _speak(self, text: str, flush_id: int, at: float) -> None:
        fake = self.fake
        fmt = self.fixed["output_format"]
        rate, encoding = int(fmt["sample_rate"]), str(fmt["encoding"])
        tone = speech_tone(text.strip(), rate, fake.tone_hz)
        await fake._first_audio(at)
        async for piece in fake._pieces(tone, rate, fake._take_stall()):
            began = time.perf_counter()
            data = encode(piece, encoding)
            await self._send(
                {
                    "type": "chunk",
                    "data": base64.b64encode(data).decode(),
                    "done": False,
                    "step_time": round((time.perf_counter() - began) * 1000, 3),
                    "flush_id": flush_id,
                }
            )
        if self.fixed.get("add_timestamps"):
            words, starts, ends = word_spans(text, len(tone) / rate, 3)
            stamps = {"words": words, "start": starts, "end": ends}
            await self._send(
                {
                    "type": "timestamps",
                    "done": False,
                    "flush_id": flush_id,
                    "word_timestamps": stamps,
                }
            )


class FakeCartesia(SpeakingServer[FakeCartesiaSession]):
    """Cartesia's TTS WebSocket on 127.0.0.1: `ws_url` is the full socket URL and
    `websocket_base_url` what the cartesia SDK takes (it appends `/tts/websocket`).

    For assertions: `sessions` (one per socket), `rejected` (HTTP statuses refused).
    """

    _max_msg = 16 * 1024 * 1024

    def __init__(
        self,
        api_key: str = "sk_car_test",
        *,
        idle_timeout: float = 300.0,
        **knobs: Unpack[SpeakingKnobs],
    ) -> None:
        super().__init__(api_key, **knobs)
        self.idle_timeout = idle_timeout
        self.refuse_with: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def websocket_base_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{self.websocket_base_url}/tts/websocket"

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/tts/websocket", self._socket)]

    def stall_next(self, after_chunks: int = 0) -> None:
        """The next generation goes silent after `after_chunks` chunks (0: before any audio;
        more: mid-sentence), with no `flush_done` or `done`, the socket left open: a stalled
        generation."""
        super().stall_next(after_chunks)

    # --- the socket ----------------------------------------------------------------------

    def _refuse(self, status: int, title: str, message: str, code: str) -> web.Response:
        self.rejected.append(status)
        body = {
            "title": title,
            "message": message,
            "error_code": code,
            "status_code": status,
            "request_id": secrets.token_hex(8),
        }
        return web.json_response(body, status=status)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        key = (
            (bearer.strip() if scheme.lower() == "bearer" else "")
            or request.headers.get("X-API-Key", "")
            or request.query.get("api_key", "")
        )
        if key != self.api_key:
            message = "Invalid API key" if key else "Missing API key: send Authorization: Bearer"
            return self._refuse(401, "Unauthorized", message, "invalid_api_key")
        version = request.headers.get("Cartesia-Version") or request.query.get("cartesia_version")
        if not version or not _VERSION.fullmatch(version):
            return self._refuse(
                400,
                "Bad Request",
                "Cartesia-Version header (YYYY-MM-DD) is required",
                "invalid_version",
            )
        if self.refuse_with is not None:
            return self._refuse(
                self.refuse_with,
                "Too Many Requests",
                "Concurrency limit reached",
                "concurrency_limited",
            )
        ws = await self._accept(request)
        session = FakeCartesiaSession(dict(request.headers), version, ws, request)
        contexts: dict[str, _Context] = {}

        async def cleanup() -> None:
            for context in contexts.values():
                context.cancel()

        return await self._hold(session, self._converse(session, contexts), cleanup)

    async def _error(
        self, session: FakeCartesiaSession, context_id: Any, status: int, message: str
    ) -> None:
        error = {
            "type": "error",
            "done": True,
            "context_id": context_id,
            "status_code": status,
            "title": "Invalid request" if status == 400 else "Error",
            "message": message,
            "error_code": "invalid_request" if status == 400 else "error",
            "request_id": secrets.token_hex(8),
        }
        session.errors.append(error)
        await session.ws.send_json(error)

    async def _converse(self, session: FakeCartesiaSession, contexts: dict[str, _Context]) -> None:
        ws = session.ws
        while True:
            try:
                msg = await asyncio.wait_for(ws.receive(), self.idle_timeout)
            except TimeoutError:
                await ws.close(code=1000, message=b"idle timeout")
                return
            if msg.type != WSMsgType.TEXT:
                return
            try:
                request = json.loads(msg.data)
                assert isinstance(request, dict)
            except (json.JSONDecodeError, AssertionError):
                await self._error(session, None, 400, "the message is not a JSON object")
                continue
            session.received.append(request)
            context_id = request.get("context_id")
            if request.get("cancel"):
                if (context := contexts.pop(str(context_id), None)) is not None:
                    context.cancel()
                    session.cancelled.append(str(context_id))
                continue
            problem = self._problem(request)
            if problem:
                await self._error(session, context_id, 400, problem)
                continue
            context = contexts.get(str(context_id))
            if context is None:
                context = contexts[str(context_id)] = _Context(self, session, request)
            elif context.finished:
                await self._error(
                    session, context_id, 400, f"context {context_id} has already finished"
                )
                continue
            else:
                changed = {
                    k
                    for k in request.keys() | context.fixed.keys()
                    if k not in _MAY_CHANGE and request.get(k) != context.fixed.get(k)
                }
                if changed:
                    await self._error(
                        session,
                        context_id,
                        400,
                        "inputs on a context must keep every field but transcript and continue "
                        f"the same; changed: {', '.join(sorted(changed))}",
                    )
                    continue
            context.take(request)

    @staticmethod
    def _problem(request: dict[str, Any]) -> str | None:
        if not request.get("context_id"):
            return "context_id is required"
        if not request.get("model_id"):
            return "model_id is required"
        if not isinstance(request.get("transcript"), str):
            return "transcript is required"
        if not _voice_ok(request.get("voice")):
            return "voice must be {'mode': 'id', 'id': <voice id>}"
        return _format_problem(request.get("output_format"))

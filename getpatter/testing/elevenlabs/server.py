"""A fake ElevenLabs text-to-speech API on 127.0.0.1, for testing TTS clients over real sockets.

`FakeElevenLabs` serves what protocols.md §5 and ElevenLabs' API reference describe, written
from those rather than from any client:

- `GET /v1/text-to-speech/{voice_id}/stream-input` (WebSocket, one generation): the first
  message is the BOS `{"text": " ", ...}`; text chunks are buffered and generated at `flush`,
  when the buffer passes the `chunk_length_schedule`, or at EOS `{"text": ""}`, after which
  the server sends `{"isFinal": true}` and closes with 1000;
- `GET /v1/text-to-speech/{voice_id}/multi-stream-input` (WebSocket, up to 5 contexts):
  messages carry `context_id`; `flush`, `close_context` (the server finishes the context's
  audio, then sends `{"isFinal": true, "contextId": …}`) and `close_socket`; a sixth live
  context is refused with `max_active_conversations`;
- `POST /v1/text-to-speech/{voice_id}/stream` (and the non-streaming `POST …/{voice_id}`): a
  chunked body of raw audio.

Auth is the `xi-api-key` header (a wrong one is refused with HTTP 401
`{"detail": {"status": "invalid_api_key", "message": …}}`) or, on the sockets, a key in the
first message, spelled `xi_api_key` or `xi-api-key`. `voice_settings` may come in the first
message only, and may not change later (1008, as the service does). With no text for
`inactivity_timeout` seconds (query parameter, default 20) the socket is closed with 1008 and
the service's message, cut to the 123 bytes a close reason can hold. Socket errors are
`{"message", "error", "code"}` followed by a close with that code.

Audio is a tone as long as the text would take to say (`speech_tone`), in exactly the requested
`output_format`: `ulaw_8000`, `alaw_8000` or `pcm_<rate>`. The fake cannot make MP3 or Opus;
asking for them is refused with 422 (the real service would answer). Knobs:
`first_audio_delay` (per generation), `chunk_ms`, `audio_speed` (× real time; 0 = unpaced).
Faults: `quota_exceeded = True` (HTTP 401 `quota_exceeded`, or a 1008 on the socket at the first
text), `refuse_sockets = 503` (sockets refused with that status; HTTP still works),
`stall_next()` (a generation goes silent), `drop_connections()`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.core.audio import alaw_encode, pcm16_bytes, ulaw_encode
from getpatter.testing._loopback import LoopbackServer
from getpatter.testing.engines import speech_tone

__all__ = ["FakeElevenLabs", "FakeElevenLabsSession", "audio_format"]

MAX_CONTEXTS = 5
_SCHEDULE = (120, 160, 250, 290)
_PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
_INACTIVITY = (
    "Have not received a new text input within the timeout of {n} seconds. Streaming input "
    "terminated. Please make sure to either feed the input in the timely manner, or to send "
    'the end of input text (empty string "") when done.'
)
_QUOTA = (
    "This request exceeds your quota of 10000. You have 0 credits remaining, while 40 credits "
    "are required for this request."
)


def audio_format(output_format: str) -> tuple[int, str] | None:
    """`(sample_rate, "ulaw" | "alaw" | "pcm")` for a format the fake can make, else None."""
    if output_format in ("ulaw_8000", "alaw_8000"):
        return 8000, output_format[:4]
    kind, _, rate = output_format.partition("_")
    if kind == "pcm" and rate.isdigit() and int(rate) in _PCM_RATES:
        return int(rate), "pcm"
    return None


def _encode(samples: np.ndarray, kind: str) -> bytes:
    if kind == "ulaw":
        return ulaw_encode(samples)
    if kind == "alaw":
        return alaw_encode(samples)
    return pcm16_bytes(samples)


def _close_reason(message: str) -> bytes:
    return message.encode()[:123]


@dataclass(eq=False)
class FakeElevenLabsSession:
    """One socket: what the client sent (`received`), what it got, and how it ended."""

    endpoint: str
    voice_id: str
    query: dict[str, str]
    headers: dict[str, str]
    ws: web.WebSocketResponse
    request: web.Request
    received: list[dict[str, Any]] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)  # contexts (or "" for stream-input) ended
    audio_bytes: dict[str, int] = field(default_factory=dict)  # per context
    close_code: int | None = None
    closed: bool = False
    stalled: bool = False


class _Context:
    """One generation stream: buffered text → audio messages, in order, by one worker."""

    def __init__(self, fake: FakeElevenLabs, session: FakeElevenLabsSession, name: str) -> None:
        self.fake, self.session, self.name = fake, session, name
        self.buffer = ""
        self.schedule = 0
        self.closing = False
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    def add(self, text: str, flush: bool) -> None:
        self.buffer += text
        if flush or len(self.buffer) >= _SCHEDULE[min(self.schedule, len(_SCHEDULE) - 1)]:
            self.schedule += 0 if flush else 1
            self.flush()

    def flush(self) -> None:
        if self.buffer.strip():
            self.queue.put_nowait(self.buffer)
        self.buffer = ""

    def close(self) -> None:
        """Generate what is left, then the final message."""
        if not self.closing:
            self.closing = True
            self.flush()
            self.queue.put_nowait(None)

    async def _work(self) -> None:
        try:
            await self._generate()
        except (ConnectionError, RuntimeError):
            pass  # the socket went away under us

    async def _generate(self) -> None:
        session, fake = self.session, self.fake
        rate, kind = audio_format(session.query.get("output_format", "mp3_44100_128")) or (0, "")
        while (text := await self.queue.get()) is not None:
            tone = speech_tone(text.strip(), rate, fake.tone_hz)
            step = max(1, rate * fake.chunk_ms // 1000)
            per_char = len(tone) / rate * 1000 / max(len(text), 1)
            if fake.first_audio_delay:
                await asyncio.sleep(fake.first_audio_delay)
            stall = fake._stalls.pop(0) if fake._stalls else None
            for start in range(0, len(tone), step):
                if stall is not None and start >= stall * step:
                    session.stalled = True  # a dead peer: silent, reads nothing more
                    await asyncio.Event().wait()
                piece = tone[start : start + step]
                first, last = start / rate * 1000, (start + len(piece)) / rate * 1000
                chars = [i for i in range(len(text)) if first <= i * per_char < last]
                alignment = {
                    "chars": [text[i] for i in chars],
                    "charStartTimesMs": [int(i * per_char) for i in chars],
                    "charDurationsMs": [int(per_char)] * len(chars),
                }
                audio = _encode(piece, kind)
                message: dict[str, Any] = {
                    "audio": base64.b64encode(audio).decode(),
                    "isFinal": None,
                    "normalizedAlignment": alignment,
                    "alignment": alignment,
                }
                if session.endpoint == "multi-stream-input":
                    message["contextId"] = self.name
                session.audio_bytes[self.name] = session.audio_bytes.get(self.name, 0) + len(audio)
                await session.ws.send_json(message)
                if fake.audio_speed:
                    await asyncio.sleep(len(piece) / rate / fake.audio_speed)
        final: dict[str, Any] = {"isFinal": True}
        if session.endpoint == "multi-stream-input":
            final["contextId"] = self.name
        await session.ws.send_json(final)
        session.finals.append(self.name)


class FakeElevenLabs(LoopbackServer):
    """ElevenLabs TTS on 127.0.0.1: `base_url` (http) / `ws_url` (ws), both without a path.

    For assertions: `sessions` (one per socket), `http_requests` (`{voice_id, query, body}`),
    `rejected` (HTTP statuses refused), `http_cancelled` (streams the client closed early).
    """

    _on_stop = "drop"

    def __init__(
        self,
        api_key: str = "el-test",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        first_audio_delay: float = 0.0,
        chunk_ms: int = 100,
        audio_speed: float = 0.0,
        tone_hz: float = 440.0,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.first_audio_delay = first_audio_delay
        self.chunk_ms = chunk_ms
        self.audio_speed = audio_speed
        self.tone_hz = tone_hz
        self.quota_exceeded = False
        self.refuse_sockets: int | None = None
        self._stalls: list[int] = []
        self.sessions: list[FakeElevenLabsSession] = []
        self.http_requests: list[dict[str, Any]] = []
        self.rejected: list[int] = []
        self.http_cancelled = 0
        self._http_live: dict[int, web.Request] = {}

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def live_sessions(self) -> list[FakeElevenLabsSession]:
        return [s for s in self.sessions if not s.closed]

    def _routes(self) -> list[web.RouteDef]:
        base = "/v1/text-to-speech/{voice_id}"
        return [
            web.get(base + "/stream-input", self._socket),
            web.get(base + "/multi-stream-input", self._socket),
            web.post(base + "/stream", self._http),
            web.post(base, self._http),
        ]

    def stall_next(self, after_chunks: int) -> None:
        """The next generation goes silent after `after_chunks` chunks, socket left open: a
        peer that died without closing the connection."""
        self._stalls.append(after_chunks)

    async def drop_connections(self) -> int:
        """Kill every live socket and HTTP stream at the TCP level: a network failure."""
        transports = [s.request.transport for s in self.live_sessions]
        transports += [r.transport for r in self._http_live.values()]
        for session in self.live_sessions:
            session.closed = True
        for transport in transports:
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)
        return sum(t is not None for t in transports)

    # --- shared -----------------------------------------------------------------------------

    def _refuse(self, status: int, detail: Any) -> web.Response:
        self.rejected.append(status)
        return web.json_response({"detail": detail}, status=status)

    def _check(self, request: web.Request, *, http: bool) -> web.Response | None:
        key = request.headers.get("xi-api-key")
        if key is None and http:
            return self._refuse(
                401, {"status": "invalid_api_key", "message": "Missing the xi-api-key header."}
            )
        if key is not None and key != self.api_key:
            return self._refuse(401, {"status": "invalid_api_key", "message": "Invalid API key"})
        if self.quota_exceeded and http:
            return self._refuse(401, {"status": "quota_exceeded", "message": _QUOTA})
        fmt = request.query.get("output_format", "mp3_44100_128")
        if audio_format(fmt) is None:
            return self._refuse(
                422,
                {
                    "status": "invalid_output_format",
                    "message": f"output_format {fmt!r}: this fake makes only ulaw_8000, "
                    "alaw_8000 and pcm_<rate> audio",
                },
            )
        return None

    # --- HTTP ------------------------------------------------------------------------------

    async def _http(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._check(request, http=True)) is not None:
            return refused
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
            detail = [{"type": "missing", "loc": ["body", "text"], "msg": "Field required"}]
            return self._refuse(422, detail)
        voice_id = request.match_info["voice_id"]
        self.http_requests.append(
            {"voice_id": voice_id, "query": dict(request.query), "body": body}
        )
        rate, kind = audio_format(request.query.get("output_format", "mp3_44100_128")) or (0, "")
        audio = _encode(speech_tone(body["text"].strip(), rate, self.tone_hz), kind)
        content_type = {"ulaw": "audio/basic", "alaw": "audio/x-alaw-basic"}.get(kind, "audio/pcm")
        if not request.path.endswith("/stream"):
            return web.Response(body=audio, content_type=content_type)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        self._http_live[id(request)] = request
        step = max(1, rate * self.chunk_ms // 1000) * (1 if kind != "pcm" else 2)
        try:
            if self.first_audio_delay:
                await asyncio.sleep(self.first_audio_delay)
            for start in range(0, len(audio), step):
                await response.write(audio[start : start + step])
                if self.audio_speed:
                    await asyncio.sleep(self.chunk_ms / 1000 / self.audio_speed)
            await response.write_eof()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self.http_cancelled += 1
        finally:
            self._http_live.pop(id(request), None)
        return response

    # --- WebSocket ---------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._check(request, http=False)) is not None:
            return refused
        if self.refuse_sockets is not None:
            detail = {"status": "service_unavailable", "message": "Try again later."}
            return self._refuse(self.refuse_sockets, detail)
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        session = FakeElevenLabsSession(
            endpoint=request.path.rsplit("/", 1)[-1],
            voice_id=request.match_info["voice_id"],
            query=dict(request.query),
            headers=dict(request.headers),
            ws=ws,
            request=request,
        )
        self.sessions.append(session)
        contexts: dict[str, _Context] = {}
        try:
            await self._converse(session, contexts, "xi-api-key" in request.headers)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            session.closed = True
            for context in contexts.values():
                context.worker.cancel()
            if not ws.closed:
                try:
                    await ws.close()
                except (ConnectionError, RuntimeError):
                    pass
            session.close_code = ws.close_code
        return ws

    async def _fail(self, session: FakeElevenLabsSession, message: str, error: str) -> None:
        await session.ws.send_json({"message": message, "error": error, "code": 1008})
        await session.ws.close(code=1008, message=_close_reason(message))

    async def _converse(
        self, session: FakeElevenLabsSession, contexts: dict[str, _Context], authed: bool
    ) -> None:
        multi = session.endpoint == "multi-stream-input"
        try:
            timeout = float(session.query.get("inactivity_timeout", "20"))
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 180:
            await self._fail(session, "inactivity_timeout must be 1 to 180 seconds", "invalid")
            return
        ws = session.ws
        voice_settings: Any = None
        first = True
        while True:
            try:
                msg = await asyncio.wait_for(ws.receive(), timeout)
            except TimeoutError:
                reason = _INACTIVITY.format(n=int(timeout))
                await ws.close(code=1008, message=_close_reason(reason))
                return
            if msg.type != WSMsgType.TEXT:
                return
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError:
                await self._fail(session, "Invalid message: not JSON", "invalid_message")
                return
            session.received.append(data)
            if session.stalled:
                continue
            if first:
                first = False
                key = data.get("xi_api_key") or data.get("xi-api-key")
                if not authed and key != self.api_key:
                    message = "Invalid API key" if key else "No API key: send xi-api-key"
                    await self._fail(session, message, "invalid_api_key")
                    return
                if not multi and data.get("text") != " ":
                    await self._fail(
                        session,
                        'The first message must be the BOS {"text": " "}',
                        "invalid_message",
                    )
                    return
                voice_settings = data.get("voice_settings")
            elif "voice_settings" in data and data["voice_settings"] != voice_settings:
                await self._fail(
                    session,
                    "voice_settings field must be provided in the first message and then "
                    "either be not provided or not change.",
                    "invalid_message",
                )
                return
            text = data.get("text")
            if self.quota_exceeded and isinstance(text, str) and text.strip():
                await self._fail(session, _QUOTA, "quota_exceeded")
                return
            done = await (
                self._multi(session, contexts, data)
                if multi
                else self._single(session, contexts, data)
            )
            if done:
                return

    async def _single(
        self, session: FakeElevenLabsSession, contexts: dict[str, _Context], data: dict[str, Any]
    ) -> bool:
        context = contexts.get("") or contexts.setdefault("", _Context(self, session, ""))
        text = data.get("text")
        if text == "":  # EOS: finish, send isFinal, close
            context.close()
            await context.worker
            await session.ws.close(code=1000)
            return True
        if isinstance(text, str) and text != " ":
            context.add(text, bool(data.get("flush") or data.get("try_trigger_generation")))
        elif data.get("flush"):
            context.flush()
        return False

    async def _multi(
        self, session: FakeElevenLabsSession, contexts: dict[str, _Context], data: dict[str, Any]
    ) -> bool:
        if data.get("close_socket"):
            for each in contexts.values():
                each.close()
            await asyncio.gather(*(c.worker for c in contexts.values()))
            await session.ws.close(code=1000)
            return True
        name = str(data.get("context_id") or "default")
        context: _Context | None = contexts.get(name)
        if data.get("close_context"):
            if context is not None:
                context.close()
                context.worker.add_done_callback(lambda _: contexts.pop(name, None))
            return False
        text = data.get("text")
        if context is None:
            if not isinstance(text, str) or text == "":
                return False  # a flush or keep-alive for no context: nothing to do
            if len(contexts) >= MAX_CONTEXTS:
                await self._fail(
                    session,
                    f"Maximum simultaneous contexts per WebSocket connection exceeded "
                    f"({MAX_CONTEXTS}). Please close an existing context before opening a new one.",
                    "max_active_conversations",
                )
                return True
            context = contexts[name] = _Context(self, session, name)
        if context.closing:
            return False
        if isinstance(text, str) and text.strip():
            context.add(text, bool(data.get("flush")))
        elif data.get("flush"):
            context.flush()
        return False

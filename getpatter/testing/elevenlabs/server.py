"""A fake ElevenLabs text-to-speech API on 127.0.0.1, for testing TTS clients over real sockets.

`FakeElevenLabs` serves what protocols.md §5 and ElevenLabs' API reference describe, written
from those rather than from any client:

- `GET /v1/text-to-speech/{voice_id}/stream-input` (WebSocket, one generation): the first
  message is the BOS `{"text": " ", ...}`; text chunks are buffered and generated at `flush`,
  when the buffer passes the `chunk_length_schedule`, or at EOS `{"text": ""}`, after which
  the server sends `{"isFinal": true}` and closes with 1000;
- `GET /v1/text-to-speech/{voice_id}/multi-stream-input` (WebSocket, up to 5 contexts): the
  rules of `multi.py` (contexts, flush, close_context, keep-alive, inactivity, close_socket);
- `POST /v1/text-to-speech/{voice_id}/stream` (and the non-streaming `POST …/{voice_id}`): a
  chunked body of raw audio.

Auth is the `xi-api-key` header (a wrong one is refused with HTTP 401
`{"detail": {"status": "invalid_api_key", "message": …}}`) or, on the sockets, a key in the
first message, spelled `xi_api_key` or `xi-api-key`. On stream-input `voice_settings` may come
in the first message only, and may not change later (1008, as the service does). With no
message at all for `inactivity_timeout` seconds (query parameter, default 20) the socket is
closed with 1008 and the service's message, cut to the 123 bytes a close reason can hold.
Socket errors are `{"message", "error", "code"}` followed by a close with that code.

Audio is a tone as long as the text would take to say (`speech_tone`), in exactly the requested
`output_format`: `ulaw_8000`, `alaw_8000` or `pcm_<rate>`. The fake cannot make MP3 or Opus;
asking for them is refused with 422 (the real service would answer). Knobs:
`first_audio_delay` (per generation), `chunk_ms`, `audio_speed` (× real time; 0 = unpaced).
Faults: `quota_exceeded = True` (HTTP 401 `quota_exceeded`, or a 1008 on the socket at the first
text), `refuse_sockets = 503` (sockets refused with that status; HTTP still works),
`stall_next()` (a generation, socket or HTTP, takes its text and goes silent), `empty_next()`
(a generation ends with no audio), `close_race` (see `multi.py`), `drop_connections()`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, Unpack

from aiohttp import WSMsgType, web

from getpatter.testing.elevenlabs.generation import (
    FakeElevenLabsSession,
    Generation,
    audio_format,
    encode,
)
from getpatter.testing.elevenlabs.multi import MAX_CONTEXTS, MultiContexts
from getpatter.testing.engines import speech_tone
from getpatter.testing.pacing import Pace
from getpatter.testing.speaking import SpeakingKnobs, SpeakingServer, StallAt

__all__ = ["MAX_CONTEXTS", "FakeElevenLabs", "FakeElevenLabsSession", "audio_format"]

_INACTIVITY = (
    "Have not received a new text input within the timeout of {n} seconds. Streaming input "
    "terminated. Please make sure to either feed the input in the timely manner, or to send "
    'the end of input text (empty string "") when done.'
)
_QUOTA = (
    "This request exceeds your quota of 10000. You have 0 credits remaining, while 40 credits "
    "are required for this request."
)


def _close_reason(message: str) -> bytes:
    return message.encode()[:123]


class FakeElevenLabs(SpeakingServer[FakeElevenLabsSession]):
    """ElevenLabs TTS on 127.0.0.1: `base_url` (http) / `ws_url` (ws), both without a path.

    For assertions: `sessions` (one per socket), `http_requests` (`{voice_id, query, body,
    at}`), `rejected` (HTTP statuses refused), `http_cancelled` (streams the client closed
    early).
    """

    _max_msg = 16 * 1024 * 1024

    def __init__(self, api_key: str = "el-test", **knobs: Unpack[SpeakingKnobs]) -> None:
        super().__init__(api_key, **knobs)
        self.quota_exceeded = False
        self.refuse_sockets: int | None = None
        #: multi-stream-input: what a context closed before its audio started gets, when set
        self.close_race: Literal["silent", "empty_final"] | None = None
        self._empties = 0
        self.http_requests: list[dict[str, Any]] = []
        self.http_cancelled = 0
        self._http_live: dict[int, web.Request] = {}

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _routes(self) -> list[web.RouteDef]:
        base = "/v1/text-to-speech/{voice_id}"
        return [
            web.get(base + "/stream-input", self._socket),
            web.get(base + "/multi-stream-input", self._socket),
            web.post(base + "/stream", self._http),
            web.post(base, self._http),
        ]

    def stall_next(self, after_chunks: int = 0, *, whole_socket: bool = True) -> None:
        """The next generation (a socket's text or an HTTP request) goes silent after
        `after_chunks` chunks (0: before any audio; more: mid-sentence) and stays open.
        `whole_socket`: a peer that died without closing the connection (from then on its
        socket reads nothing and sends nothing, for any context); else only that generation is
        stuck and the socket carries on (accepted text, nothing sent: a stalled context)."""
        self._stalls.append(StallAt(after_chunks, whole_socket))

    def empty_next(self) -> None:
        """The next generation makes no audio: a socket context ends with its final message
        only, an HTTP stream with an empty body."""
        self._empties += 1

    def _take_empty(self) -> bool:
        if self._empties:
            self._empties -= 1
            return True
        return False

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
        loop = asyncio.get_running_loop()
        self.http_requests.append(
            {"voice_id": voice_id, "query": dict(request.query), "body": body, "at": loop.time()}
        )
        rate, kind = audio_format(request.query.get("output_format", "mp3_44100_128")) or (0, "")
        audio = encode(speech_tone(body["text"].strip(), rate, self.tone_hz), kind)
        if self._take_empty():
            audio = b""
        content_type = {"ulaw": "audio/basic", "alaw": "audio/x-alaw-basic"}.get(kind, "audio/pcm")
        if not request.path.endswith("/stream"):
            return web.Response(body=audio, content_type=content_type)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        self._http_live[id(request)] = request
        step = max(1, rate * self.chunk_ms // 1000) * (1 if kind != "pcm" else 2)
        stall = self._take_stall()
        try:
            await self._first_audio()
            pace = Pace(self.audio_speed)
            for n, start in enumerate(range(0, len(audio), step)):
                while stall is not None and n >= stall.after_chunks:  # headers sent, then nothing
                    if request.transport is None or request.transport.is_closing():
                        raise ConnectionResetError  # until the client gives up on it
                    await asyncio.sleep(0.05)
                await response.write(audio[start : start + step])
                await pace.sent(self.chunk_ms / 1000)
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
        ws = await self._accept(request)
        session = FakeElevenLabsSession(
            endpoint=request.path.rsplit("/", 1)[-1],
            voice_id=request.match_info["voice_id"],
            query=dict(request.query),
            headers=dict(request.headers),
            ws=ws,
            request=request,
        )
        streams: list[Generation | MultiContexts] = []

        async def cleanup() -> None:
            for stream in streams:
                stream.stop()

        authed = "xi-api-key" in request.headers
        try:
            return await self._hold(session, self._converse(session, streams, authed), cleanup)
        finally:
            session.close_code = ws.close_code

    async def _fail(self, session: FakeElevenLabsSession, message: str, error: str) -> None:
        await session.ws.send_json({"message": message, "error": error, "code": 1008})
        await session.ws.close(code=1008, message=_close_reason(message))

    async def _converse(
        self,
        session: FakeElevenLabsSession,
        streams: list[Generation | MultiContexts],
        authed: bool,
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
        loop = asyncio.get_running_loop()
        contexts = MultiContexts(self, session, timeout) if multi else None
        single: Generation | None = None
        if contexts is not None:
            streams.append(contexts)
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
            if not isinstance(data, dict):
                await self._fail(session, "Invalid message: not an object", "invalid_message")
                return
            session.received.append(data)
            session.received_at.append(loop.time())
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
            elif (
                not multi and "voice_settings" in data and data["voice_settings"] != voice_settings
            ):
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
            if contexts is not None:
                problem = await contexts.handle(data)
                if problem is not None:
                    await self._fail(session, *problem)
                    return
                if data.get("close_socket"):
                    await ws.close(code=1000)
                    return
                continue
            if single is None:
                single = Generation(self, session, "")
                streams.append(single)
            if text == "":  # EOS: finish, send isFinal, close
                single.close(generate_buffer=True)
                await single.worker
                await ws.close(code=1000)
                return
            if isinstance(text, str) and text != " ":
                single.add(text, bool(data.get("flush") or data.get("try_trigger_generation")))
            elif data.get("flush"):
                single.flush()

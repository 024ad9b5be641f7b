"""A fake OpenAI Realtime API (GA) on 127.0.0.1, for testing realtime engines over real sockets.

`FakeRealtime` is an aiohttp server speaking the Realtime WebSocket protocol as documented
(protocols.md §3), written from the wire protocol only, so it checks a client rather than
agreeing with it. The "model" is a script: each response is either text (spoken as a tone as
long as the text would take to say, with its transcript) or a function call.

    async with FakeRealtime(responses=["Sure, booked.", FunctionCall("lookup", {"id": 7})]) as f:
        client = AsyncOpenAI(api_key="sk-test", base_url=f.base_url, websocket_base_url=f.ws_url)
        async with client.realtime.connect(model="gpt-realtime") as conn: ...

Behaviour, where the real service is not pinned down:
- Server VAD is an energy detector: speech starts after `vad_start_ms` of 20 ms frames whose
  RMS is above `threshold * vad_rms_scale`, and stops after `silence_duration_ms` below it.
  `audio_start_ms` includes `prefix_padding_ms`; `audio_end_ms` is the position at which the
  silence was long enough (as the docs describe it).
- A caller turn is: speech_started → speech_stopped → committed → conversation.item.added/done
  → input transcription (if configured; the next of `transcripts`) → a response (if
  `create_response`).
- A response without instructions takes the next scripted reply (`default_reply` once the
  script runs out). A `response.create` whose `response.instructions` holds a quoted passage
  ("…" or “…”) says that passage verbatim, otherwise it says the instructions themselves.
- Audio is generated faster than real time (`audio_speed`), in `chunk_ms` pieces, each
  preceded by its share of the transcript.
- `response.cancel` with no response in flight, `conversation.item.truncate` past the end of
  an item's audio, a `response.create` while a response is active, an invalid voice or audio
  format in `session.update` (which is then not applied): each answers an `error` event.

Layout: this module is the server (auth, connections, script, faults); one connection's
protocol is in `_openai_realtime_session`, the response lifecycle in
`_openai_realtime_responses`, and the session rules, items and audio in `_openai_realtime_wire`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Unpack

from aiohttp import web

from getpatter.testing.conversing import ConversingKnobs, ConversingServer
from getpatter.testing.model_script import FunctionCall, Reply

from .session import FakeRealtimeSession

log = logging.getLogger(__name__)

__all__ = ["FakeRealtime", "FakeRealtimeSession", "FunctionCall", "Reply"]


class FakeRealtime(ConversingServer[FakeRealtimeSession]):
    """The OpenAI Realtime API on 127.0.0.1: `ws_url` + `/realtime?model=...`.

    Script: `responses` (consumed in order, across sessions), `transcripts` (what the caller
    "said", one per turn, when input transcription is on). Knobs: `audio_speed` (× real time;
    0 = no pacing), `chunk_ms`, `first_audio_delay`, `session_delay`, `seconds_per_char`.
    Faults: `drop_connections()` kills every live socket; `accepting = False` refuses new ones
    with HTTP 503.

    For assertions: `sessions` (one per connection, in order), `received` (every client
    event of every session), `truncates` (every truncate, with the item's audio length and
    whether it was accepted), `rejected` (HTTP statuses of refused upgrades).
    """

    def __init__(
        self,
        api_key: str = "sk-test",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_ms: int = 100,
        first_audio_delay: float = 0.05,
        session_delay: float = 0.0,
        tone_hz: float = 440.0,
        vad_rms_scale: float = 1000.0,
        **knobs: Unpack[ConversingKnobs],
    ) -> None:
        super().__init__(api_key, host=host, port=port, **knobs)
        self.chunk_ms = chunk_ms
        self.first_audio_delay = first_audio_delay
        self.session_delay = session_delay
        self.tone_hz = tone_hz
        self.vad_rms_scale = vad_rms_scale
        self.received: list[dict[str, Any]] = []
        self.truncates: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1"

    # --- lifecycle -------------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/realtime", self._realtime)]

    async def _close_sockets(self) -> None:
        """Goes by each WebSocket's own state, not `closed`: a session cut by
        `drop_connections()` whose handler has not finished yet still gets 1001."""
        for session in self.sessions:
            if not session.ws.closed:
                try:
                    await session.ws.close(code=1001, message=b"server shutting down")
                except (ConnectionError, RuntimeError):
                    pass

    # --- the endpoint ----------------------------------------------------------------------

    def _refuse(
        self, status: int, message: str, code: str | None, param: str | None = None
    ) -> web.Response:
        self.rejected.append(status)
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": code,
                "param": param,
            }
        }
        return web.json_response(body, status=status)

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return self._refuse(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                None,
            )
        scheme, _, key = auth.partition(" ")
        if scheme != "Bearer" or key != self.api_key:
            shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
            return self._refuse(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_api_key",
            )
        if request.headers.get("OpenAI-Beta"):
            return self._refuse(
                400, "This fake speaks the GA Realtime protocol only.", "beta_not_supported"
            )
        model = request.query.get("model", "")
        if not model:
            return self._refuse(
                400, "Missing required parameter: 'model'.", "missing_required_parameter", "model"
            )
        if not self.accepting:
            return self._refuse(503, "The service is temporarily unavailable.", "unavailable")
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        return await self._hold(FakeRealtimeSession(self, ws, request, model))

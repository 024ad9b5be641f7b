"""A fake Ultravox Realtime API on 127.0.0.1: call creation over REST, then the call's WebSocket.

Written from Ultravox's documentation (docs.ultravox.ai: "WebSocket Integration", "Protocol &
Data Messages", the Create Call reference), not from our client:

- `POST /api/calls` with the `X-API-Key` header (missing or wrong: HTTP 403 with a `detail`)
  and a JSON call definition; `medium.serverWebSocket.inputSampleRate` is required,
  `outputSampleRate` defaults to it, `clientBufferSizeMs` to 60. Answers 201 with the call,
  its `callId` and a one-time `joinUrl`. `accepting = False` answers 503.
- The `joinUrl` WebSocket carries audio as binary frames of s16le PCM (caller audio at the
  input rate in, agent audio at the output rate out) and data messages as JSON text frames:
  server → client `call_started`, `state` (listening / thinking / speaking), `transcript`
  (`role`, `medium`, `text` or `delta`, `final`, `ordinal`), `playback_clear_buffer`,
  `client_tool_invocation` (`toolName`, `invocationId`, `parameters`), `pong`; client →
  server `user_text_message` (`text`, `urgency`), `forced_agent_message` (`content`),
  `client_tool_result` (`invocationId`, `result`, `agentReaction`), `hang_up`, `ping`.
- The agent's audio is sent as fast as it is generated (`audio_speed` × real time) but never
  more than `clientBufferSizeMs` ahead of what the client can have played; when the caller
  talks over it (an energy VAD on the input), the server sends `playback_clear_buffer` and
  stops. With `firstSpeakerSettings.user` the agent waits for the caller; otherwise it greets.
"""

from __future__ import annotations

import secrets
from typing import Any, Unpack

from aiohttp import web

from getpatter.testing.conversing import ConversingKnobs, ConversingServer
from getpatter.testing.model_script import FunctionCall, Reply

from .call import FakeUltravoxCall

__all__ = ["FakeUltravox", "FakeUltravoxCall", "FunctionCall", "Reply"]


class FakeUltravox(ConversingServer[FakeUltravoxCall]):
    """Ultravox on 127.0.0.1: point a client's base URL at `base_url`.

    Script: `responses` (text or `FunctionCall`), `transcripts` (what the caller said, per
    turn). Knobs: `audio_speed`, `seconds_per_char`, `vad_start_ms`, `silence_ms`, `vad_rms`.
    Faults: `drop_connections()`, `accepting = False`. For assertions: `created` (every call
    definition posted), `calls` (one per joined socket), `rejected` (HTTP statuses).
    """

    def __init__(
        self,
        api_key: str = "test-ultravox-key",
        *,
        greeting: str = "Hello, how can I help?",
        silence_ms: int = 500,
        vad_rms: float = 500.0,
        **knobs: Unpack[ConversingKnobs],
    ) -> None:
        super().__init__(api_key, **knobs)
        self.greeting = greeting
        self.silence_ms = silence_ms
        self.vad_rms = vad_rms
        self.created: list[dict[str, Any]] = []
        self._pending: dict[str, tuple[str, dict[str, Any]]] = {}  # call id → (token, def)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def calls(self) -> list[FakeUltravoxCall]:
        """One per joined socket, in order."""
        return self.sessions

    @property
    def live_calls(self) -> list[FakeUltravoxCall]:
        return self.live_sessions

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/calls", self._create),
            web.get("/calls/{call_id}/join", self._join),
        ]

    def _refuse(self, status: int, detail: str) -> web.Response:
        self.rejected.append(status)
        return web.json_response({"detail": detail}, status=status)

    async def _create(self, request: web.Request) -> web.Response:
        key = request.headers.get("X-API-Key")
        if not key:
            return self._refuse(403, "Authentication credentials were not provided.")
        if key != self.api_key:
            return self._refuse(403, "Invalid API key.")
        if not self.accepting:
            return self._refuse(503, "Service temporarily unavailable.")
        try:
            body = await request.json()
        except ValueError:
            return self._refuse(400, "JSON parse error.")
        medium = (body.get("medium") or {}) if isinstance(body, dict) else {}
        ws = medium.get("serverWebSocket") if isinstance(medium, dict) else None
        rate = ws.get("inputSampleRate") if isinstance(ws, dict) else None
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            return web.json_response(
                {"medium": {"serverWebSocket": {"inputSampleRate": ["This field is required."]}}},
                status=400,
            )
        call_id = f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}"
        token = secrets.token_urlsafe(16)
        self._pending[call_id] = (token, body)
        self.created.append(body)
        join = f"ws://{self.host}:{self.port}/calls/{call_id}/join?token={token}"
        return web.json_response(
            {
                "callId": call_id,
                "joinUrl": join,
                "systemPrompt": body.get("systemPrompt", ""),
                "medium": medium,
                "voice": body.get("voice"),
                "model": body.get("model", "fixie-ai/ultravox"),
            },
            status=201,
        )

    async def _join(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call_id"]
        pending = self._pending.pop(call_id, None)
        if pending is None or request.query.get("token") != pending[0]:
            return self._refuse(404, "Not found.")
        ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        return await self._hold(FakeUltravoxCall(self, ws, request, call_id, pending[1]))

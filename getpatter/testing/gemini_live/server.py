"""A fake Gemini Live API (`BidiGenerateContent` over a WebSocket) on 127.0.0.1, with TLS.

Written from Google's Live API reference (ai.google.dev/api/live), not from our client:

- Endpoint `wss://HOST/ws/google.ai.generativelanguage.{v1beta|v1alpha}.GenerativeService.
  BidiGenerateContent`; the API key comes as the `key` query parameter or the
  `x-goog-api-key` header. TLS only: the official SDK turns any base URL into `wss://`, so the
  fake serves TLS with a throwaway CA (`trustme`); `client_ssl()` is the context that trusts it.
- The first client message must be `setup`; the server answers `setupComplete`. A bad key, a
  setup that is not first or is malformed, and an unknown model close the socket with the
  codes the service uses (1007 invalid argument or key, 1008 model not found / policy), the
  reason in the close frame. `accepting = False` refuses the upgrade with HTTP 503.
- Messages are ProtoJSON: field names in lowerCamelCase or snake_case are both accepted (the
  service's parser takes both; the Python SDK sends `realtime_input`, `tool_response`, ...),
  and `bytes` fields in standard or URL-safe base64 (the SDK sends URL-safe).
- `realtimeInput.audio` is `audio/pcm;rate=N` (16 kHz natively). With automatic activity
  detection on (the default) an energy VAD finds the caller's turns: a turn that starts while
  the model speaks interrupts it (`serverContent.interrupted`, then `turnComplete`, no
  `generationComplete`). With it off, `activityStart` / `activityEnd` bound the turns (and are
  refused while it is on).
- A model turn: `inputTranscription` of the caller (if configured), `modelTurn` parts with
  `inlineData` audio `audio/pcm;rate=24000` (a tone as long as the text would take to say,
  generated `audio_speed` times faster than real time), `outputTranscription` pieces (if
  configured), `generationComplete`, then `turnComplete` with `usageMetadata`.
- A scripted `FunctionCall` reply sends `toolCall.functionCalls`; the model goes on once every
  call has its `toolResponse.functionResponses` (matched by id; an unknown id closes 1007).
- `clientContent` with `turnComplete` makes the model answer; a quoted passage in its text is
  said verbatim (how getpatter makes a model say a fixed line), else the next scripted reply.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Unpack

from aiohttp import web

from getpatter.testing.conversing import ConversingKnobs, ConversingServer
from getpatter.testing.model_script import FunctionCall, Reply

from .session import FakeLiveSession

__all__ = ["FakeGeminiLive", "FakeLiveSession", "FunctionCall", "Reply"]

VERSIONS = ("v1beta", "v1alpha")
PATH = "/ws/google.ai.generativelanguage.{}.GenerativeService.BidiGenerateContent"


class FakeGeminiLive(ConversingServer[FakeLiveSession]):
    """The Gemini Live API on 127.0.0.1 (TLS). Point the SDK at `base_url` with `client_ssl()`.

    Script: `responses` (text or `FunctionCall`, consumed in order across sessions),
    `transcripts` (what the caller "said", one per turn). Knobs: `audio_speed`, `chunk_ms`,
    `seconds_per_char`, `first_audio_delay`, `vad_start_ms`, `silence_ms`, `vad_rms`.
    Faults: `drop_connections()`, `accepting = False` (HTTP 503).
    For assertions: `sessions`, `rejected` (HTTP statuses), `closes` (close codes sent).
    """

    def __init__(
        self,
        api_key: str = "test-gemini-key",
        *,
        models: Sequence[str] = ("gemini-2.5-flash-native-audio-preview-12-2025",),
        chunk_ms: int = 100,
        first_audio_delay: float = 0.05,
        silence_ms: int = 500,
        vad_rms: float = 500.0,
        **knobs: Unpack[ConversingKnobs],
    ) -> None:
        super().__init__(api_key, **knobs)
        self.models = set(models)
        self.chunk_ms = chunk_ms
        self.first_audio_delay = first_audio_delay
        self.silence_ms = silence_ms
        self.vad_rms = vad_rms
        self.closes: list[tuple[int, str]] = []
        import trustme  # a test-only dependency, like the fake itself

        self._ca = trustme.CA()
        cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._server_ssl)

    def client_ssl(self) -> ssl.SSLContext:
        """A client context that trusts this fake's certificate (and nothing else)."""
        ctx = ssl.create_default_context()
        self._ca.configure_trust(ctx)
        return ctx

    def ca_pem(self) -> str:
        """The fake's CA certificate (PEM), for a client in another process."""
        return str(self._ca.cert_pem.bytes().decode())

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _routes(self) -> list[web.RouteDef]:
        return [web.get(PATH.format(v), self._live) for v in VERSIONS]

    async def _live(self, request: web.Request) -> web.StreamResponse:
        if not self.accepting:
            self.rejected.append(503)
            return web.json_response(
                {
                    "error": {
                        "code": 503,
                        "message": "The service is currently unavailable.",
                        "status": "UNAVAILABLE",
                    }
                },
                status=503,
            )
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        key = request.query.get("key") or request.headers.get("x-goog-api-key", "")
        return await self._hold(FakeLiveSession(self, ws, request, authorized=key == self.api_key))

    def recorded_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

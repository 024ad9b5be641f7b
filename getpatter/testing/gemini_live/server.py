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

import asyncio
import ssl
from collections.abc import Sequence

from aiohttp import web

from getpatter.testing._loopback import LoopbackServer
from getpatter.testing.model_script import FunctionCall, Reply

from .session import FakeLiveSession

__all__ = ["FakeGeminiLive", "FakeLiveSession", "FunctionCall", "Reply"]

VERSIONS = ("v1beta", "v1alpha")
PATH = "/ws/google.ai.generativelanguage.{}.GenerativeService.BidiGenerateContent"


class FakeGeminiLive(LoopbackServer):
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
        responses: Sequence[Reply] = (),
        transcripts: Sequence[str] = (),
        default_reply: str = "Okay.",
        default_transcript: str = "Hello.",
        audio_speed: float = 4.0,
        chunk_ms: int = 100,
        seconds_per_char: float = 0.06,
        first_audio_delay: float = 0.05,
        vad_start_ms: int = 100,
        silence_ms: int = 500,
        vad_rms: float = 500.0,
    ) -> None:
        self.api_key = api_key
        self.host = "127.0.0.1"
        self.port = 0
        self.models = set(models)
        self.responses: list[Reply] = list(responses)
        self.transcripts: list[str] = list(transcripts)
        self.default_reply = default_reply
        self.default_transcript = default_transcript
        self.audio_speed = audio_speed
        self.chunk_ms = chunk_ms
        self.seconds_per_char = seconds_per_char
        self.first_audio_delay = first_audio_delay
        self.vad_start_ms = vad_start_ms
        self.silence_ms = silence_ms
        self.vad_rms = vad_rms
        self.accepting = True
        self.sessions: list[FakeLiveSession] = []
        self.rejected: list[int] = []
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

    @property
    def live_sessions(self) -> list[FakeLiveSession]:
        return [s for s in self.sessions if not s.closed]

    def next_reply(self) -> Reply:
        return self.responses.pop(0) if self.responses else self.default_reply

    def next_transcript(self) -> str:
        return self.transcripts.pop(0) if self.transcripts else self.default_transcript

    def _routes(self) -> list[web.RouteDef]:
        return [web.get(PATH.format(v), self._live) for v in VERSIONS]

    def _open_sockets(self) -> list[FakeLiveSession]:
        return self.live_sessions

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
        session = FakeLiveSession(self, ws, request, authorized=key == self.api_key)
        self.sessions.append(session)
        try:
            await session.run()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            session.closed = True
            session.stop_turn()
            if not ws.closed:
                try:
                    await ws.close()
                except (ConnectionError, RuntimeError):
                    pass
        return ws

    def recorded_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

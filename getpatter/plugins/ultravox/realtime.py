"""Ultravox Realtime as a getpatter engine: the options, creating the call, joining its socket.

A call is created over REST (`POST /api/calls`, `X-API-Key`) with the `serverWebSocket`
medium at 8 kHz both ways, so the carrier's audio needs no resampling, only μ-law ↔ PCM (in the
C core); then its `joinUrl` WebSocket carries PCM frames and JSON data messages
(`wire.py`). What every realtime engine does (barge-in, what was heard, guardrails, tools,
reconnect, the goodbye) is `getpatter.core.realtime`'s.

Spoken with aiohttp: Ultravox's Python SDK (`ultravox-client`) joins calls over WebRTC for
apps with a microphone; it has no server-WebSocket client and no REST client to point at.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from getpatter.core.credentials import Secret, credential, validate_http_url
from getpatter.core.realtime_wire import FAILURE_MESSAGE, RealtimeOptions
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError

if TYPE_CHECKING:
    from getpatter.core.realtime_wire import EventHandler, SessionSetup
    from getpatter.core.session import CallSession
    from getpatter.plugins.ultravox.wire import UltravoxWire

__all__ = ["UltravoxRealtime"]

RATE = 8000  # both ways: the carrier's own rate


@dataclass(repr=False, eq=False)
class UltravoxRealtime(RealtimeOptions):
    """Speech to speech with Ultravox Realtime, one call (and WebSocket) per phone call.

    - `api_key`: defaults to `ULTRAVOX_API_KEY`.
    - `model`, `voice`, `temperature`: the call's; `base_url`: the REST API (a proxy, a fake).
    - `barge_in`, `failure_message`, `connect_timeout`: as `OpenAIRealtime`.
    - `buffer_ms`: how far ahead Ultravox may send audio (its `clientBufferSizeMs`); a large
      buffer is fine because a barge-in clears it (`playback_clear_buffer`).
    """

    model: str = "fixie-ai/ultravox"
    voice: str | None = None
    api_key: str | None = None
    base_url: str = "https://api.ultravox.ai"
    temperature: float | None = None
    barge_in: bool = True
    buffer_ms: int = 30_000
    connect_timeout: float = 10.0
    failure_message: str = FAILURE_MESSAGE
    _secret: Secret = field(init=False, repr=False)
    name: ClassVar[str] = "ultravox_realtime"
    display_name: ClassVar[str] = "Ultravox"
    server_turns: ClassVar[bool] = True  # Ultravox always detects the caller's turns itself

    def __post_init__(self) -> None:
        key = credential(self.api_key, "ULTRAVOX_API_KEY", "Ultravox API key", "api_key=...")
        self._secret = Secret(key)
        self.api_key = None  # kept only as a Secret, so no repr, asdict or log can show it
        if not isinstance(self.model, str) or not self.model.strip():
            raise PatterConfigError("UltravoxRealtime model must be a model name")
        if self.voice is not None and (not isinstance(self.voice, str) or not self.voice.strip()):
            raise PatterConfigError("UltravoxRealtime voice must be a voice name or None")
        self.base_url = validate_http_url(self.base_url, "UltravoxRealtime base_url")
        if isinstance(self.buffer_ms, bool) or not isinstance(self.buffer_ms, int):
            raise PatterConfigError("UltravoxRealtime buffer_ms must be an int")
        self._check_options()

    # --- the engine protocol -----------------------------------------------------------

    def wire(self, call: CallSession, handle: EventHandler) -> UltravoxWire:
        from getpatter.plugins.ultravox.wire import UltravoxWire

        return UltravoxWire(self, call, handle)

    def call_definition(self, setup: SessionSetup) -> dict[str, Any]:
        """The Create Call body: 8 kHz PCM both ways, the caller speaks first (our greeting
        is a forced agent message), the agent's tools as client tools."""
        body: dict[str, Any] = {
            "systemPrompt": setup.instructions,
            "model": self.model,
            "languageHint": setup.language,
            "medium": {
                "serverWebSocket": {
                    "inputSampleRate": RATE,
                    "outputSampleRate": RATE,
                    "clientBufferSizeMs": self.buffer_ms,
                }
            },
            "firstSpeakerSettings": {"user": {}},
            "selectedTools": [_client_tool(schema) for schema in setup.tools],
        }
        if self.voice:
            body["voice"] = self.voice
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    # --- connecting --------------------------------------------------------------------

    async def connect(
        self, http: aiohttp.ClientSession, setup: SessionSetup
    ) -> aiohttp.ClientWebSocketResponse:
        """Create a call and join it. Raises PatterConnectionError or ProviderError."""
        url = f"{self.base_url}/api/calls"
        headers = {"X-API-Key": self._secret.reveal()}
        try:
            async with asyncio.timeout(self.connect_timeout):
                async with http.post(url, json=self.call_definition(setup), headers=headers) as r:
                    text = await r.text()
                    if r.status in (401, 403):
                        raise PatterConnectionError(
                            f"Ultravox refused the API key (HTTP {r.status}): check "
                            "ULTRAVOX_API_KEY or UltravoxRealtime(api_key=...)"
                        )
                    if r.status == 400:
                        raise ProviderError(f"Ultravox refused the call settings: {text[:200]}")
                    if r.status >= 300:
                        raise PatterConnectionError(
                            f"Ultravox could not create the call (HTTP {r.status})"
                        )
                    join = (await r.json()).get("joinUrl")
                if not isinstance(join, str) or not join:
                    raise ProviderError("Ultravox created a call without a joinUrl")
                return await http.ws_connect(join, heartbeat=20, max_msg_size=4 * 1024 * 1024)
        except (PatterConnectionError, ProviderError):
            raise
        except TimeoutError:
            raise PatterConnectionError(
                f"Ultravox did not answer within {self.connect_timeout:g}s ({self.base_url})"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise PatterConnectionError(
                f"could not connect to Ultravox at {self.base_url}: {type(exc).__name__}"
            ) from None


def _client_tool(schema: dict[str, Any]) -> dict[str, Any]:
    """A getpatter tool schema as an Ultravox temporary client tool."""
    params = schema.get("parameters") or {}
    required = set(params.get("required") or [])
    dynamic = [
        {
            "name": name,
            "location": "PARAMETER_LOCATION_BODY",
            "schema": prop,
            "required": name in required,
        }
        for name, prop in (params.get("properties") or {}).items()
    ]
    return {
        "temporaryTool": {
            "modelToolName": schema["name"],
            "description": schema.get("description", ""),
            "dynamicParameters": dynamic,
            "client": {},
        }
    }

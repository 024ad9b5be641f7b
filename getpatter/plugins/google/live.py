"""Gemini Live as a getpatter realtime engine: the options, and opening the Live session.

Everything a caller notices (barge-in, what was heard, guardrails, tools, reconnect, the
goodbye) is in `getpatter.core.realtime`; `live_wire.py` translates Gemini's messages.
The official `google-genai` SDK opens the socket (`client.aio.live.connect`). It turns any
`base_url` into `wss://`, so a proxy or a test fake must speak TLS: `ssl` takes the context
that trusts it. The SDK is imported the first time a call connects, in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from getpatter.core.credentials import Secret, credential, validate_http_url
from getpatter.core.realtime_wire import FAILURE_MESSAGE, RealtimeOptions
from getpatter.core.sdk_import import in_sdk_thread, preload
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError

if TYPE_CHECKING:
    from google.genai import Client
    from google.genai.live import AsyncSession

    from getpatter.core.realtime import EventHandler, SessionSetup
    from getpatter.core.session import CallSession
    from getpatter.plugins.google.live_wire import GeminiLiveWire

__all__ = ["GeminiLive"]


@dataclass(repr=False, eq=False)
class GeminiLive(RealtimeOptions):
    """Speech to speech with Google's Gemini Live API, over one WebSocket per call.

    - `api_key`: defaults to `GOOGLE_API_KEY` (or `GEMINI_API_KEY`).
    - `voice`: a prebuilt Gemini voice (`Puck`, `Kore`, `Charon`, ...).
    - `base_url` / `api_version`: point the SDK elsewhere (a proxy, a test fake); `ssl` is the
      TLS context that trusts it.
    - `turn_detection`: Gemini's automatic activity detection; False: getpatter's VAD tells
      Gemini when the caller starts and stops (`activityStart` / `activityEnd`).
    - `input_transcription`: user transcripts from Gemini.
    - `barge_in`, `failure_message`, `connect_timeout`, `temperature`: as `OpenAIRealtime`.
    """

    model: str = "gemini-2.5-flash-native-audio-preview-12-2025"
    voice: str = "Puck"
    api_key: str | None = None
    base_url: str = "https://generativelanguage.googleapis.com"
    api_version: str = "v1beta"
    ssl: ssl.SSLContext | None = None
    temperature: float | None = None
    turn_detection: bool = True
    input_transcription: bool = True
    barge_in: bool = True
    connect_timeout: float = 10.0
    failure_message: str = FAILURE_MESSAGE
    _secret: Secret = field(init=False, repr=False)
    _client: Client | None = field(init=False, repr=False, default=None)
    name: ClassVar[str] = "gemini_live"
    display_name: ClassVar[str] = "Gemini Live"
    pricing_name: ClassVar[str] = "google"

    def __post_init__(self) -> None:
        gemini_only = "GOOGLE_API_KEY" not in os.environ and "GEMINI_API_KEY" in os.environ
        env = "GEMINI_API_KEY" if gemini_only else "GOOGLE_API_KEY"
        key = credential(self.api_key, env, "Google API key", "GeminiLive(api_key=...)")
        self._secret = Secret(key)
        self.api_key = None  # kept only as a Secret, so no repr, asdict or log can show it
        for name in ("model", "voice", "api_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise PatterConfigError(f"GeminiLive {name} must be a non-empty str")
        self.model = self.model.removeprefix("models/")
        self.base_url = validate_http_url(self.base_url, "GeminiLive base_url")
        if self.ssl is not None and not isinstance(self.ssl, ssl.SSLContext):
            raise PatterConfigError("GeminiLive ssl must be an ssl.SSLContext")
        for flag in ("turn_detection", "input_transcription"):
            if not isinstance(getattr(self, flag), bool):
                raise PatterConfigError(f"GeminiLive {flag} must be True or False")
        self._check_options()
        preload("google.genai.live")  # so the first call does not wait ~1 s for it

    # --- the engine protocol -----------------------------------------------------------

    @property
    def server_turns(self) -> bool:
        return self.turn_detection

    def wire(self, call: CallSession, handle: EventHandler) -> GeminiLiveWire:
        from getpatter.plugins.google.live_wire import GeminiLiveWire

        return GeminiLiveWire(self, call, handle)

    def live_config(self, setup: SessionSetup) -> dict[str, Any]:
        """The session's `LiveConnectConfig`: audio out, the voice, prompt, tools, VAD."""
        config: dict[str, Any] = {
            "response_modalities": ["AUDIO"],
            "speech_config": {
                "voice_config": {"prebuilt_voice_config": {"voice_name": self.voice}},
            },
            "system_instruction": setup.instructions,
            "output_audio_transcription": {},
            "realtime_input_config": {
                "automatic_activity_detection": {"disabled": not self.turn_detection},
            },
        }
        if self.input_transcription:
            config["input_audio_transcription"] = {}
        if setup.tools:
            config["tools"] = [{"function_declarations": setup.tools}]
        if self.temperature is not None:
            config["temperature"] = self.temperature
        return config

    # --- connecting --------------------------------------------------------------------

    def _new_client(self) -> Client:
        from google import genai
        from google.genai import types

        # no permessage-deflate: base64 PCM hardly compresses, and each socket's zlib
        # contexts cost ~190 KiB and CPU per message (benchmarks/load.py --memory)
        client_args: dict[str, Any] = {"compression": None}
        if self.ssl is not None:
            client_args["ssl"] = self.ssl
        options = types.HttpOptions(
            base_url=self.base_url, api_version=self.api_version, async_client_args=client_args
        )
        return genai.Client(api_key=self._secret.reveal(), http_options=options)

    async def connect(self, setup: SessionSetup, stack: contextlib.AsyncExitStack) -> AsyncSession:
        """Open a Live session (closed with `stack`). Raises PatterConnectionError, or
        ProviderError when the service refuses the settings."""
        if self._client is None:
            self._client = await in_sdk_thread(self._new_client)
        from google.genai.errors import APIError
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        config: Any = self.live_config(setup)  # a LiveConnectConfigDict, checked by the SDK
        manager = self._client.aio.live.connect(model=self.model, config=config)
        try:
            async with asyncio.timeout(self.connect_timeout):
                session = await stack.enter_async_context(manager)
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise PatterConnectionError(
                f"Gemini Live refused the connection (HTTP {status})"
            ) from None
        except APIError as exc:
            raise self._refusal(exc.code, str(exc.message or exc)) from None
        except TimeoutError:
            raise PatterConnectionError(
                f"Gemini Live did not answer within {self.connect_timeout:g}s ({self.base_url})"
            ) from None
        except (OSError, InvalidHandshake) as exc:
            raise PatterConnectionError(
                f"could not connect to Gemini Live at {self.base_url}: {exc}"
            ) from None
        if session.setup_complete is None:
            await stack.aclose()
            raise PatterConnectionError("Gemini Live never confirmed the session setup")
        return session

    def _refusal(self, code: int, reason: str) -> Exception:
        """The close code and reason the service ended the setup with, as an error to act on."""
        if "API key" in reason:  # never echo anything key-like back into a log
            return PatterConnectionError(
                f"Gemini Live refused the API key (close {code}): check GOOGLE_API_KEY or "
                "GeminiLive(api_key=...)"
            )
        if code in (1007, 1008):
            return ProviderError(f"Gemini Live refused the session (close {code}): {reason[:200]}")
        return PatterConnectionError(
            f"Gemini Live closed the session (close {code}): {reason[:200]}"
        )

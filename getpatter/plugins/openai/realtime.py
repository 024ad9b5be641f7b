"""OpenAI Realtime as a getpatter engine: the options, and opening the model's WebSocket.

The call's G.711 μ-law goes to the model as `audio/pcmu` and the model answers in `audio/pcmu`,
so audio crosses this engine untouched in both directions. What every realtime engine does
(barge-in, truncation, tools, guardrails, reconnect) is in `getpatter.core.realtime`; the wire
(the socket's outbox and translating OpenAI's events) is in `realtime_link.py`.

The `openai` SDK is imported the first time a call connects, in a worker thread (importing it
and building a client takes about a second and would otherwise stall every call on the loop).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit

from getpatter.core.credentials import Secret, credential, validate_http_url
from getpatter.core.realtime_wire import FAILURE_MESSAGE, RealtimeOptions
from getpatter.core.sdk_import import in_sdk_thread, preload
from getpatter.errors import PatterConfigError, PatterConnectionError

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.resources.realtime.realtime import AsyncRealtimeConnection

    from getpatter.core.realtime import EventHandler, SessionSetup
    from getpatter.core.session import CallSession
    from getpatter.plugins.openai.realtime_link import OpenAIRealtimeWire

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TURN_DETECTION", "REALTIME_VOICES", "OpenAIRealtime"]

#: The voices the Realtime API accepts (a custom voice id, `voice_…`, is accepted too).
REALTIME_VOICES: Final = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
#: Text-to-speech voices the Realtime API refuses, and the closest voice it has.
TTS_VOICE_MAP: Final = {"nova": "marin", "fable": "ballad", "onyx": "cedar"}
FALLBACK_VOICE: Final = "marin"
#: what `client.realtime.connect()` imports when it first runs, if not before (on the loop)
_LAZY: Final = ("websockets.asyncio.client", "openai.lib._websocket")

DEFAULT_TURN_DETECTION: Final[dict[str, Any]] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}


def _default_turn_detection() -> dict[str, Any]:
    return dict(DEFAULT_TURN_DETECTION)


def realtime_voice(voice: str) -> str:
    """`voice` if the Realtime API takes it, else the closest voice it has (with a warning).

    A voice the API refuses makes its session.update fail, and the call would be silent.
    """
    if voice in REALTIME_VOICES or voice.startswith("voice_"):
        return voice
    mapped = TTS_VOICE_MAP.get(voice.lower(), FALLBACK_VOICE)
    message = (
        f"OpenAIRealtime: the Realtime API has no voice {voice!r} (it is a text-to-speech "
        f"voice or unknown); using {mapped!r}. Realtime voices: {', '.join(REALTIME_VOICES)}"
    )
    warnings.warn(message, UserWarning, stacklevel=4)
    log.warning("%s", message)
    return mapped


@dataclass(repr=False, eq=False)
class OpenAIRealtime(RealtimeOptions):
    """Speech to speech with OpenAI's Realtime API (GA), over one WebSocket per call.

    - `voice`: a Realtime voice (`marin`, `cedar`, …); a text-to-speech voice such as `nova`
      is mapped to the closest Realtime voice, with a warning, so a call is never silent.
    - `api_key`: defaults to `OPENAI_API_KEY`.
    - `base_url` / `websocket_base_url`: point the SDK elsewhere (a proxy, a test fake).
    - `turn_detection`: the model's own VAD (`server_vad` or `semantic_vad` settings); `None`
      turns it off, and getpatter's VAD then decides when the caller has finished.
    - `input_transcription`: the model that transcribes the caller; `None` for no user
      transcripts.
    - `barge_in`: the caller may interrupt the agent.
    - `failure_message`: what the caller hears (in the carrier's own voice) before the call
      ends when the model cannot be reached, even after a reconnect; "" hangs up silently.
    - `temperature`: the GA Realtime API has no temperature; it is accepted and ignored.
    """

    voice: str = "marin"
    model: str = "gpt-realtime"
    api_key: str | None = None
    base_url: str = "https://api.openai.com/v1"
    websocket_base_url: str | None = None
    temperature: float | None = None
    turn_detection: dict[str, Any] | None = field(default_factory=_default_turn_detection)
    input_transcription: str | None = "gpt-4o-transcribe"
    barge_in: bool = True
    connect_timeout: float = 10.0
    failure_message: str = FAILURE_MESSAGE
    _secret: Secret = field(init=False, repr=False)
    _client: AsyncOpenAI | None = field(init=False, repr=False, default=None)
    name: ClassVar[str] = "openai_realtime"
    display_name: ClassVar[str] = "OpenAI Realtime"

    def __post_init__(self) -> None:
        self._secret = Secret(
            credential(
                self.api_key, "OPENAI_API_KEY", "OpenAI API key", "OpenAIRealtime(api_key=...)"
            )
        )
        self.api_key = None  # kept only as a Secret, so no repr, asdict or log can show it
        if not isinstance(self.voice, str) or not self.voice.strip():
            raise PatterConfigError(
                f"OpenAIRealtime voice must be a voice name such as 'marin', got {self.voice!r}"
            )
        self.requested_voice = self.voice
        self.voice = realtime_voice(self.voice.strip())
        if not isinstance(self.model, str) or not self.model.strip():
            raise PatterConfigError(
                "OpenAIRealtime model must be a model name, e.g. 'gpt-realtime'"
            )
        self.base_url = validate_http_url(self.base_url, "OpenAIRealtime base_url")
        if self.websocket_base_url is not None:
            ws = self.websocket_base_url
            if not isinstance(ws, str) or urlsplit(ws).scheme not in ("ws", "wss", "http", "https"):
                raise PatterConfigError(
                    f"OpenAIRealtime websocket_base_url must be a ws:// or wss:// URL, got {ws!r}"
                )
            self.websocket_base_url = ws.rstrip("/")
        self.turn_detection = self._check_turn_detection(self.turn_detection)
        if self.input_transcription is not None and (
            not isinstance(self.input_transcription, str) or not self.input_transcription.strip()
        ):
            raise PatterConfigError(
                "OpenAIRealtime input_transcription must be a model name such as "
                "'gpt-4o-transcribe', or None for no caller transcripts"
            )
        self._check_options()
        if self.temperature is not None:
            log.info("OpenAIRealtime: the GA Realtime API has no temperature; it is ignored")
        preload("openai")  # so the first call does not wait ~1 s for it

    def _check_turn_detection(self, value: object) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad"):
            raise PatterConfigError(
                "OpenAIRealtime turn_detection must be None or a dict with type 'server_vad' "
                "or 'semantic_vad', e.g. {'type': 'server_vad', 'silence_duration_ms': 500}"
            )
        try:
            settings: dict[str, Any] = json.loads(json.dumps(value))
        except (TypeError, ValueError) as exc:
            raise PatterConfigError(f"OpenAIRealtime turn_detection: {exc}") from None
        settings.setdefault("create_response", True)
        settings.setdefault("interrupt_response", self.barge_in)
        return settings

    # --- the engine protocol -----------------------------------------------------------

    @property
    def server_turns(self) -> bool:
        return self.turn_detection is not None

    def wire(self, call: CallSession, handle: EventHandler) -> OpenAIRealtimeWire:
        from getpatter.plugins.openai.realtime_link import OpenAIRealtimeWire

        return OpenAIRealtimeWire(self, call, handle)

    def session_config(self, setup: SessionSetup) -> dict[str, Any]:
        """The `session` of a session.update: μ-law both ways, the voice, VAD and tools."""
        audio_in: dict[str, Any] = {
            "format": {"type": "audio/pcmu"},
            "turn_detection": self.turn_detection,
        }
        if self.input_transcription:
            transcription: dict[str, str] = {"model": self.input_transcription}
            language = setup.language.replace("_", "-").split("-")[0].lower()
            if len(language) == 2:
                transcription["language"] = language
            audio_in["transcription"] = transcription
        voice: str | dict[str, str] = self.voice
        if self.voice.startswith("voice_"):
            voice = {"id": self.voice}
        return {
            "type": "realtime",
            "instructions": setup.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": audio_in,
                "output": {"format": {"type": "audio/pcmu"}, "voice": voice},
            },
            "tools": [{"type": "function", **schema} for schema in setup.tools],
            "tool_choice": "auto",
        }

    # --- connecting --------------------------------------------------------------------

    def _new_client(self) -> AsyncOpenAI:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            api_key=self._secret.reveal(),
            base_url=self.base_url,
            websocket_base_url=self.websocket_base_url,
            max_retries=0,
        )
        _ = client.realtime  # imported on first access: here, not on the loop
        for module in _LAZY:
            importlib.import_module(module)
        return client

    async def connect(self) -> AsyncRealtimeConnection:
        """Open a Realtime WebSocket. Raises PatterConnectionError, with a message to act on."""
        if self._client is None:
            self._client = await in_sdk_thread(self._new_client)
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        manager = self._client.realtime.connect(model=self.model)
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await manager.enter()
        except InvalidStatus as exc:
            raise PatterConnectionError(self._refusal(exc)) from None
        except TimeoutError:
            raise PatterConnectionError(
                f"OpenAI Realtime did not answer within {self.connect_timeout:g}s ({self._where()})"
            ) from None
        except (OSError, InvalidHandshake) as exc:
            raise PatterConnectionError(
                f"could not connect to OpenAI Realtime at {self._where()}: {exc}"
            ) from None
        except Exception as exc:  # e.g. the SDK's own OpenAIError
            raise PatterConnectionError(
                f"could not connect to OpenAI Realtime: {type(exc).__name__}: {exc}"
            ) from None

    def _where(self) -> str:
        return self.websocket_base_url or self.base_url

    def _refusal(self, exc: Any) -> str:
        status = exc.response.status_code
        code, message = "", ""
        try:
            error = json.loads(exc.response.body or b"{}").get("error") or {}
            code, message = str(error.get("code") or ""), str(error.get("message") or "")
        except (ValueError, AttributeError):
            pass
        if status == 401:  # OpenAI's message quotes part of the key: never log it
            return (
                f"OpenAI Realtime refused the API key (HTTP 401 {code or 'unauthorized'}): "
                "check OPENAI_API_KEY or OpenAIRealtime(api_key=...)"
            )
        return f"OpenAI Realtime refused the connection (HTTP {status} {code}): {message[:200]}"

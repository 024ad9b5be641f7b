"""The contract between a call and its conversation engine, and the carrier-neutral media events.

An engine (OpenAI Realtime, the STT→LLM→TTS pipeline, a test engine) is agent-level config;
`open(call)` makes its per-call half, which receives the caller's audio and answers through
the call: `call.play(...)`, `call.clear()`, `call.add_transcript(...)`, `call.hangup()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from getpatter.core.audio import AudioFrame, ulaw_decode

if TYPE_CHECKING:
    from getpatter.core.session import CallSession


@dataclass(slots=True)
class InboundAudio:
    """20 ms of caller audio as the carrier sent it (G.711 μ-law, 8 kHz).

    Engines that take G.711 use `payload` untouched; the rest use `frame`, decoded once.
    """

    payload: bytes
    timestamp: float
    _frame: AudioFrame | None = field(default=None, repr=False)

    @property
    def frame(self) -> AudioFrame:
        if self._frame is None:
            self._frame = AudioFrame(ulaw_decode(self.payload), 8000, self.timestamp)
        return self._frame


# --- media socket events, produced by carrier adapters -------------------------------------


@dataclass(slots=True, frozen=True)
class StreamStarted:
    stream_id: str
    call_id: str
    parameters: dict[str, str]


@dataclass(slots=True, frozen=True)
class MarkPlayed:
    name: str


@dataclass(slots=True, frozen=True)
class DtmfReceived:
    digit: str


@dataclass(slots=True, frozen=True)
class StreamStopped:
    reason: str = "stop"


@dataclass(slots=True, frozen=True)
class Ignored:
    """A message we understood and have nothing to do with (e.g. `connected`)."""

    event: str


MediaEvent = StreamStarted | InboundAudio | MarkPlayed | DtmfReceived | StreamStopped | Ignored


class MalformedMessage(ValueError):
    """A media message that breaks the carrier's protocol (bad JSON, base64, fields)."""


# --- engines -------------------------------------------------------------------------------


@runtime_checkable
class EngineCall(Protocol):
    """One call's half of an engine."""

    async def start(self) -> None:
        """Connect to providers and speak the first message; long loops go in `call.spawn`."""

    def push_audio(self, audio: InboundAudio) -> None:
        """Called for every inbound frame, in order; must not block."""

    async def on_dtmf(self, digit: str) -> None: ...

    async def aclose(self) -> None:
        """Release provider connections; the call's tasks are cancelled by the session."""


@runtime_checkable
class Engine(Protocol):
    """Agent-level engine config; makes one `EngineCall` per call."""

    def open(self, call: CallSession) -> EngineCall: ...

"""The contract between a call and its conversation engine, and what an engine may offer.

An engine (OpenAI Realtime, the STT→LLM→TTS pipeline, a test engine) is agent-level config;
`open(call)` makes its per-call half, which receives the caller's audio and answers through
the call: `call.play(...)`, `call.clear()`, `call.add_transcript(...)`, `call.hangup()`.

Beyond the four required methods, an engine's call may declare optional capabilities
(`ReportsTurns`, `HearsCaller` below); the session checks for them once, when the media starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from getpatter.core.media import InboundAudio

if TYPE_CHECKING:
    from getpatter.core.session import CallSession


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


# --- optional capabilities of an engine's call ---------------------------------------------


@runtime_checkable
class ReportsTurns(Protocol):
    """An engine call that times its own turns (`call.complete_turn`), e.g. with its own VAD.

    Without it the session runs a VAD over the caller's audio to time the turns for metrics.
    """

    reports_turns: bool


@runtime_checkable
class HearsCaller(Protocol):
    """An engine call that wants to know when the caller starts or stops talking, as heard by
    the session's VAD (e.g. to barge in sooner than its model would notice)."""

    def on_caller_speech(self, kind: str, at: float) -> None:
        """`kind` is "speech_started" or "speech_ended"; `at` the loop time it
        happened, after the frame was pushed to the engine."""

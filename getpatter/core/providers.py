"""The small async protocols every STT, LLM and TTS provider implements.

A provider object is agent-level configuration (keys, model, options); `open()` makes the
per-call half that holds the call's connection. Audio crosses these interfaces as raw bytes in
the encoding and rate the provider declares, so a provider that takes or makes the carrier's
8 kHz μ-law is never transcoded. LLM messages use the Chat Completions shape (role, content,
tool_calls, tool_call_id); an adapter for another API converts at its own edge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

AudioEncoding = Literal["pcm16", "mulaw"]


# --- STT -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transcript:
    """A piece of recognised speech. `is_final`: this span will not change again;
    `speech_final`: the provider's own endpointing says the utterance is over."""

    text: str
    is_final: bool
    speech_final: bool = False
    confidence: float | None = None
    start: float | None = None  # seconds of stream audio
    end: float | None = None


@runtime_checkable
class STTStream(Protocol):
    async def send(self, audio: bytes) -> None:
        """Caller audio in the STT's declared encoding and rate, in order."""

    async def finalize(self) -> None:
        """Flush: turn audio not yet finalized into a final transcript now."""

    def transcripts(self) -> AsyncIterator[Transcript]:
        """Interim and final transcripts, as they come; ends when the stream closes."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class STT(Protocol):
    sample_rate: int
    encoding: AudioEncoding

    async def open(self, *, language: str = "en") -> STTStream: ...


# --- LLM -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    details: dict[str, Any] = field(default_factory=dict)


LLMEvent = TextDelta | ToolCallRequest | Usage


@runtime_checkable
class LLM(Protocol):
    def chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[LLMEvent]:
        """Stream one completion. `tools` are {name, description, parameters} schemas.
        Cancelling the consumer (or `aclose()` on the iterator) cancels the request."""
        ...


# --- TTS -----------------------------------------------------------------------------------


@runtime_checkable
class TTSStream(Protocol):
    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Audio for `text` in the TTS's declared encoding and rate, streamed as it is made.
        Closing the iterator early cancels that synthesis; the stream stays usable."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class TTSFallback(Protocol):
    """Optional, on a TTSStream: a second way to the same audio (another endpoint, a fresh
    connection). When `synthesize()` gives no audio in time, the pipeline retries the
    sentence once through this; a stream without it is retried through `synthesize()`."""

    def synthesize_fallback(self, text: str) -> AsyncIterator[bytes]: ...


@runtime_checkable
class TTS(Protocol):
    sample_rate: int
    encoding: AudioEncoding

    async def open(self) -> TTSStream: ...

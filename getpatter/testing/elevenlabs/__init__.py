"""A fake ElevenLabs TTS (HTTP stream, stream-input, multi-stream-input) on 127.0.0.1."""

from .server import (
    FakeElevenLabs,
    FakeElevenLabsSession,
    audio_format,
)

__all__ = [
    "FakeElevenLabs",
    "FakeElevenLabsSession",
    "audio_format",
]

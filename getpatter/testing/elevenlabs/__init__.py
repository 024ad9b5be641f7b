"""A fake ElevenLabs TTS (HTTP stream, stream-input, multi-stream-input) on 127.0.0.1."""

from .generation import FakeElevenLabsSession, audio_format
from .server import MAX_CONTEXTS, FakeElevenLabs

__all__ = [
    "MAX_CONTEXTS",
    "FakeElevenLabs",
    "FakeElevenLabsSession",
    "audio_format",
]

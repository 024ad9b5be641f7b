"""A fake Cartesia TTS (WebSocket and /tts/bytes) on 127.0.0.1."""

from .server import (
    FakeCartesia,
    FakeCartesiaSession,
)

__all__ = [
    "FakeCartesia",
    "FakeCartesiaSession",
]

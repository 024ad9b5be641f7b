"""A fake Speechmatics real-time API on 127.0.0.1."""

from .server import (
    FakeSpeechmatics,
    SpeechmaticsSession,
)

__all__ = [
    "FakeSpeechmatics",
    "SpeechmaticsSession",
]

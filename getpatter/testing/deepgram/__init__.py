"""A fake Deepgram live transcription (/v1/listen) on 127.0.0.1."""

from .server import (
    NET0001_REASON,
    DeepgramConnection,
    FakeDeepgram,
)

__all__ = [
    "NET0001_REASON",
    "DeepgramConnection",
    "FakeDeepgram",
]

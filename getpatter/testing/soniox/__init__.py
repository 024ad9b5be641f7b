"""A fake Soniox real-time speech-to-text (/transcribe-websocket) on 127.0.0.1."""

from .server import MODELS, FakeSoniox, SonioxConnection

__all__ = ["MODELS", "FakeSoniox", "SonioxConnection"]

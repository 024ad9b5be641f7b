"""A fake Gemini Live API (BidiGenerateContent WebSocket, TLS) on 127.0.0.1."""

from getpatter.testing.model_script import FunctionCall, Reply

from .server import FakeGeminiLive
from .session import FakeLiveSession

__all__ = ["FakeGeminiLive", "FakeLiveSession", "FunctionCall", "Reply"]

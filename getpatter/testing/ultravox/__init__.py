"""A fake Ultravox Realtime API (REST call creation + the call's WebSocket) on 127.0.0.1."""

from getpatter.testing.model_script import FunctionCall, Reply

from .call import FakeUltravoxCall
from .server import FakeUltravox

__all__ = ["FakeUltravox", "FakeUltravoxCall", "FunctionCall", "Reply"]

"""A fake OpenAI Realtime API (GA WebSocket protocol) on 127.0.0.1."""

from .server import (
    FakeRealtime,
    FakeRealtimeSession,
    FunctionCall,
    Reply,
)

__all__ = [
    "FakeRealtime",
    "FakeRealtimeSession",
    "FunctionCall",
    "Reply",
]

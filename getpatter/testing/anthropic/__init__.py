"""A fake Anthropic Messages API (streaming SSE) on 127.0.0.1."""

from .server import (
    FakeAnthropic,
    Reply,
    ToolUse,
)

__all__ = [
    "FakeAnthropic",
    "Reply",
    "ToolUse",
]

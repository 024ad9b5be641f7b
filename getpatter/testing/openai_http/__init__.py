"""A fake OpenAI HTTP API (chat completions, transcriptions, speech) on 127.0.0.1."""

from .server import (
    FakeOpenAI,
    ToolCall,
)

__all__ = [
    "FakeOpenAI",
    "ToolCall",
]

"""A fake of the Gemini API (streamGenerateContent over SSE) on 127.0.0.1."""

from .server import FakeGemini, FunctionCall

__all__ = ["FakeGemini", "FunctionCall"]

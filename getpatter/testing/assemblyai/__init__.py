"""A fake AssemblyAI Universal Streaming v3 on 127.0.0.1."""

from .server import (
    AssemblyAISession,
    FakeAssemblyAI,
)

__all__ = [
    "AssemblyAISession",
    "FakeAssemblyAI",
]

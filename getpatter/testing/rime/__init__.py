"""A fake of Rime's JSON text-to-speech WebSocket (/ws3) on 127.0.0.1."""

from .server import FakeRime, FakeRimeSession, rime_audio

__all__ = ["FakeRime", "FakeRimeSession", "rime_audio"]

"""A fake of LMNT's speech session WebSocket on 127.0.0.1."""

from .server import FakeLmnt, FakeLmntSession, lmnt_audio, ulaw_wav_header

__all__ = ["FakeLmnt", "FakeLmntSession", "lmnt_audio", "ulaw_wav_header"]

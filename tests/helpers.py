"""Constants and audio shared by the end-to-end tests."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
NUMBER = "+15550001234"
CALLER = "+15557654321"
HOST = "agent.example.test"


def speech(name: str = "hello.wav", lead: float = 0.5, tail: float = 1.5) -> np.ndarray:
    """A committed test recording padded with silence, as int16 at 8 kHz."""
    with wave.open(str(DATA / name)) as w:
        assert w.getframerate() == 8000
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    z = np.zeros
    return np.concatenate([z(int(lead * 8000), np.int16), pcm, z(int(tail * 8000), np.int16)])

"""A TTS provider in ~30 lines: one beep per word, as 8 kHz mu-law (the carrier's format)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from getpatter.core.audio import ulaw_encode


@dataclass
class BeepTTS:
    pitch_hz: float = 660.0
    sample_rate: int = 8000
    encoding: str = "mulaw"

    async def open(self) -> BeepStream:
        return BeepStream(self)


class BeepStream:
    def __init__(self, tts: BeepTTS) -> None:
        self.tts = tts

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        t = np.arange(int(0.15 * self.tts.sample_rate)) / self.tts.sample_rate
        beep = (np.sin(2 * np.pi * self.tts.pitch_hz * t) * 8000).astype(np.int16)
        gap = np.zeros(int(0.1 * self.tts.sample_rate), np.int16)
        for _word in text.split():
            yield ulaw_encode(np.concatenate([beep, gap]))

    async def aclose(self) -> None:
        return None

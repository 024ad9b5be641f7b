"""What the fake models say: a script of replies (text, or a tool call) and the audio that
stands in for speech. Shared by the fakes of every speech-to-speech model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from getpatter.core.audio import alaw_encode, pcm16_bytes, ulaw_encode

FORMATS = {"audio/pcmu": 8000, "audio/pcma": 8000, "audio/pcm": 24000}


@dataclass(frozen=True)
class FunctionCall:
    """A scripted response that calls a tool instead of speaking."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)

    @property
    def arguments_json(self) -> str:
        args = self.arguments
        return args if isinstance(args, str) else json.dumps(args)


Reply = str | FunctionCall


def spoken_text(instructions: str) -> str:
    """What an obedient model says for `instructions`: its quoted passage, if it has one."""
    for pattern in (r"“(.+)”", r'"(.+)"'):
        if match := re.search(pattern, instructions, re.S):
            return match[1]
    return instructions


def tone(text: str, fmt: str, seconds_per_char: float, hz: float) -> tuple[bytes, int]:
    """Speech stand-in for `text` in output format `fmt`: (audio bytes, bytes per ms)."""
    rate = FORMATS[fmt]
    seconds = max(len(text) * seconds_per_char, 0.1)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    samples = (np.sin(2 * np.pi * hz * t) * envelope * 8000).astype(np.int16)
    if fmt == "audio/pcmu":
        return ulaw_encode(samples), rate // 1000
    if fmt == "audio/pcma":
        return alaw_encode(samples), rate // 1000
    return pcm16_bytes(samples), 2 * rate // 1000

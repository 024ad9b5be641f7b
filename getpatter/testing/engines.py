"""Small engines for tests, benchmarks and trying a carrier without any provider keys.

`ScriptedEngine` talks like a very simple agent: it speaks its first message and one scripted
reply per caller utterance (as tones — no TTS needed), stops when interrupted, and reacts to
DTMF. `EchoEngine` plays the caller's audio straight back (a load generator for playout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from getpatter.core.audio import AudioFrame
from getpatter.core.media import InboundAudio
from getpatter.core.vad import VAD

if TYPE_CHECKING:
    from getpatter.core.session import CallSession

SPEECH_SECONDS_PER_CHAR = 0.03


def speech_tone(text: str, sample_rate: int = 8000, freq: float = 440.0) -> np.ndarray:
    """A stand-in for synthesized speech: a tone as long as the text would take to say."""
    n = max(int(len(text) * SPEECH_SECONDS_PER_CHAR * sample_rate), sample_rate // 10)
    t = np.arange(n) / sample_rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)  # a syllable-rate wobble
    return (np.sin(2 * np.pi * freq * t) * envelope * 6000).astype(np.int16)


@dataclass
class ScriptedEngine:
    """Replies from a script; `replies[i]` answers the caller's i-th utterance."""

    replies: Sequence[str] = ("I heard you.",)
    hangup_digit: str = "#"
    transfer_digit: str = "0"
    transfer_to: str = ""
    goodbye: str = ""  # spoken by the carrier when the hang-up digit ends the call
    calls: list[ScriptedCall] = field(default_factory=list)

    def open(self, call: CallSession) -> ScriptedCall:
        engine_call = ScriptedCall(self, call)
        self.calls.append(engine_call)
        return engine_call


class ScriptedCall:
    def __init__(self, engine: ScriptedEngine, call: CallSession) -> None:
        self.engine = engine
        self.call = call
        self.vad = VAD()
        self.turn = 0
        self.speaking: str | None = None
        self.interrupted: list[str] = []
        self.dtmf: list[str] = []
        self.frames = 0
        self.closed = False

    async def start(self) -> None:
        if self.call.first_message:
            await self.say(self.call.first_message)

    async def say(self, text: str) -> None:
        label = f"turn-{self.turn}-{len(self.interrupted)}"
        self.speaking = label
        self.call.begin_utterance(label)
        self.call.play(AudioFrame(speech_tone(text), 8000))
        done = self.call.end_utterance(label)
        await self.call.add_transcript("assistant", text)
        self.call.spawn(self._finish(label, done), "finish")

    async def _finish(self, label: str, done: asyncio.Future[bool]) -> None:
        await done
        if self.speaking == label:
            self.speaking = None

    def push_audio(self, audio: InboundAudio) -> None:
        self.frames += 1
        for event in self.vad.process(audio.frame):
            if event.kind == "speech_started" and self.speaking is not None:
                self.call.spawn(self._barge_in(self.speaking), "barge-in")
            elif event.kind == "speech_ended":
                self.call.spawn(self._reply(), "reply")

    async def _barge_in(self, label: str) -> None:
        self.speaking = None
        await self.call.clear()
        self.interrupted.append(label)

    async def _reply(self) -> None:
        self.turn += 1
        await self.call.add_transcript("user", f"<utterance {self.turn}>")
        replies = self.engine.replies
        if replies:
            await self.say(replies[min(self.turn - 1, len(replies) - 1)])

    async def on_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)
        if digit == self.engine.hangup_digit:
            goodbye = self.engine.goodbye
            self.call.spawn(self.call.hangup("dtmf_hangup", goodbye=goodbye), "hangup")
        elif digit == self.engine.transfer_digit and self.engine.transfer_to:
            self.call.spawn(self.call.transfer(self.engine.transfer_to), "transfer")

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class EchoEngine:
    """Plays the caller's audio back as it arrives: continuous two-way media for load tests."""

    def open(self, call: CallSession) -> EchoCall:
        return EchoCall(call)


class EchoCall:
    reports_turns = True  # an echo has no turns: the session need not look for them

    def __init__(self, call: CallSession) -> None:
        self.call = call

    async def start(self) -> None:
        self.call.begin_utterance("echo")

    def push_audio(self, audio: InboundAudio) -> None:
        self.call.play(audio.payload)

    async def on_dtmf(self, digit: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


__all__ = ["EchoEngine", "ScriptedEngine", "speech_tone"]

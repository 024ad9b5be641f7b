"""What the speech-to-speech model fakes share, so each keeps only what its API documents.

Per provider (in the fake): the URL, auth, the session's messages and rules. Here: the script
(`responses` the model says, `transcripts` the caller "said", consumed in order across
sessions), the knobs they all take, refusing new sockets (`accepting = False`), the record of
every session, the energy VAD that finds the caller's turns in 20 ms frames, and the model's
turn as one task that a barge-in cancels. What a reply sounds like is in `model_script`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Sequence
from typing import Any, Generic, Literal, Protocol, TypedDict, TypeVar

import numpy as np
from aiohttp import web

from getpatter.testing._loopback import LoopbackServer
from getpatter.testing.model_script import Reply

__all__ = ["ConversingKnobs", "ConversingServer", "EnergyVad", "ModelTurn", "said_by"]

FRAME_MS = 20


def said_by(words: Sequence[str], piece: int, pieces: int) -> int:
    """How many of a reply's words its first `piece` of `pieces` audio pieces have said."""
    return min(len(words), math.ceil(len(words) * piece / pieces))


class EnergyVad:
    """Turns by energy: 20 ms frames are loud at RMS >= the threshold; a turn starts once
    `start_ms` of loud frames ran in a row and stops after `silence_ms` of quiet ones.
    `loud_since` is where the run of loud frames that started it began (in `at` units)."""

    def __init__(self) -> None:
        self.speaking = False
        self.loud_ms = 0.0
        self.quiet_ms = 0.0
        self.loud_since = 0.0
        self._pending = np.zeros(0, np.int16)

    def frames(self, samples: np.ndarray, rate: int) -> list[np.ndarray]:
        """The whole frames `samples` completes; the rest waits for the next audio."""
        frame = rate * FRAME_MS // 1000
        pending = np.concatenate((self._pending, samples))
        count = len(pending) // frame
        self._pending = pending[count * frame :]
        return [pending[i * frame : (i + 1) * frame] for i in range(count)]

    @staticmethod
    def loud(samples: np.ndarray, threshold: float) -> bool:
        f = samples.astype(np.float64)
        return math.sqrt(float(np.dot(f, f)) / len(f)) >= threshold

    def step(
        self, loud: bool, start_ms: float, silence_ms: float, at: float = 0.0
    ) -> Literal["started", "stopped"] | None:
        """One frame: whether a turn started or stopped with it (state updated)."""
        if not self.speaking:
            if not loud:
                self.loud_ms = 0
                return None
            if self.loud_ms == 0:
                self.loud_since = at
            self.loud_ms += FRAME_MS
            if self.loud_ms >= start_ms:
                self.started()
                return "started"
            return None
        if loud:
            self.quiet_ms = 0
            return None
        self.quiet_ms += FRAME_MS
        if self.quiet_ms >= silence_ms:
            self.stopped()
            return "stopped"
        return None

    def started(self) -> None:
        self.speaking, self.quiet_ms = True, 0

    def stopped(self) -> None:
        self.speaking, self.loud_ms = False, 0


class ModelTurn:
    """The model's turn in flight: one task, replaced by the next turn, cancelled by a
    barge-in or the end of the socket. Subclasses say how a reply is spoken (`_speak`)."""

    _turn: asyncio.Task[None] | None = None

    def _speak(self, reply: Reply) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    @property
    def turn_in_flight(self) -> bool:
        return self._turn is not None and not self._turn.done()

    def stop_turn(self) -> None:
        if self._turn is not None and not self._turn.done():
            self._turn.cancel()

    def _start_turn(self, reply: Reply) -> None:
        self.stop_turn()
        self._turn = asyncio.get_running_loop().create_task(self._speak(reply))


class _Session(Protocol):
    closed: bool

    @property
    def ws(self) -> web.WebSocketResponse: ...

    @property
    def request(self) -> web.Request: ...

    async def run(self) -> None: ...

    def stop_turn(self) -> None: ...


S = TypeVar("S", bound=_Session)


class ConversingKnobs(TypedDict, total=False):
    """Constructor arguments every model fake takes, with the same defaults."""

    responses: Sequence[Reply]
    transcripts: Sequence[str]
    default_reply: str
    default_transcript: str
    audio_speed: float
    seconds_per_char: float
    vad_start_ms: int


class ConversingServer(LoopbackServer, Generic[S]):
    """A speech-to-speech fake: its script and knobs, `sessions`, `rejected` (HTTP statuses)."""

    def __init__(
        self,
        api_key: str,
        *,
        responses: Sequence[Reply] = (),
        transcripts: Sequence[str] = (),
        default_reply: str = "Okay.",
        default_transcript: str = "Hello.",
        audio_speed: float = 4.0,
        seconds_per_char: float = 0.06,
        vad_start_ms: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.responses: list[Reply] = list(responses)
        self.transcripts: list[str] = list(transcripts)
        self.default_reply = default_reply
        self.default_transcript = default_transcript
        self.audio_speed = audio_speed  # × real time; 0: no pacing
        self.seconds_per_char = seconds_per_char
        self.vad_start_ms = vad_start_ms
        self.accepting = True
        self.sessions: list[S] = []
        self.rejected: list[int] = []

    @property
    def live_sessions(self) -> list[S]:
        return [s for s in self.sessions if not s.closed]

    def _open_sockets(self) -> list[S]:
        return self.live_sessions

    def next_reply(self) -> Reply:
        return self.responses.pop(0) if self.responses else self.default_reply

    def next_transcript(self) -> str:
        return self.transcripts.pop(0) if self.transcripts else self.default_transcript

    async def _hold(self, session: S) -> web.WebSocketResponse:
        """Record the session and run it; however it ends, its turn stops and it closes."""
        self.sessions.append(session)
        ws = session.ws
        try:
            await session.run()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            session.closed = True
            session.stop_turn()
            if not ws.closed:
                try:
                    await ws.close()
                except (ConnectionError, RuntimeError):
                    pass
        return ws

"""What the TTS fakes share, so each fake keeps only what its provider documents.

Per provider (in the fake): the URL, auth, the message shapes, when text becomes audio and
how audio is framed on the wire. Here: the knobs every TTS fake takes, the record of its
sockets, the stall fault (`stall_next`), the audio itself (a tone as long as the text would
take to say, in a raw encoding) and its pacing: the first audio `first_audio_delay` after
its cause, then `chunk_ms` pieces at `audio_speed` × real time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Protocol, TypedDict, TypeVar

import numpy as np
from aiohttp import web

from getpatter.core.audio import alaw_encode, pcm16_bytes, ulaw_encode
from getpatter.testing._loopback import LoopbackServer
from getpatter.testing.pacing import Pace

__all__ = ["Encoding", "SpeakingKnobs", "SpeakingServer", "StallAt", "encode", "word_spans"]

Encoding = Literal["ulaw", "alaw", "f32", "pcm16"]


def encode(samples: np.ndarray, kind: Encoding) -> bytes:
    """int16 samples in a raw encoding (no header)."""
    if kind == "ulaw":
        return ulaw_encode(samples)
    if kind == "alaw":
        return alaw_encode(samples)
    if kind == "f32":
        return (samples.astype("<f4") / 32768.0).astype("<f4").tobytes()
    return pcm16_bytes(samples)


Spans = tuple[list[str], list[float], list[float]]


def word_spans(text: str, seconds: float, digits: int) -> Spans:
    """Words spread evenly over `seconds`: each word's start and end, rounded."""
    words = text.split()
    starts = [round(i * seconds / max(len(words), 1), digits) for i in range(len(words))]
    ends = [*starts[1:], round(seconds, digits)] if words else []
    return words, starts, ends


@dataclass(frozen=True)
class StallAt:
    """A stall fault: the generation goes silent after `after_chunks` chunks. `whole_socket`:
    its peer died without closing (only fakes that say so read it)."""

    after_chunks: int
    whole_socket: bool = False


class _Record(Protocol):
    closed: bool
    received: list[dict[str, Any]]

    @property
    def request(self) -> web.Request: ...

    @property
    def ws(self) -> web.WebSocketResponse: ...


S = TypeVar("S", bound=_Record)


class SpeakingKnobs(TypedDict, total=False):
    """Constructor arguments every TTS fake takes, with the same defaults."""

    host: str
    port: int
    first_audio_delay: float
    chunk_ms: int
    audio_speed: float
    tone_hz: float


class SpeakingServer(LoopbackServer, Generic[S]):
    """A TTS fake: its knobs, its sockets (`sessions`), refused statuses, stall faults."""

    _on_stop = "drop"
    _max_msg: ClassVar[int] = 4 * 1024 * 1024  # the largest client frame a socket takes

    def __init__(
        self,
        api_key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        first_audio_delay: float = 0.0,
        chunk_ms: int = 100,
        audio_speed: float = 0.0,
        tone_hz: float = 440.0,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.first_audio_delay = first_audio_delay
        self.chunk_ms = chunk_ms
        self.audio_speed = audio_speed  # × real time; 0: unpaced
        self.tone_hz = tone_hz
        self.sessions: list[S] = []
        self.rejected: list[int] = []  # HTTP statuses of refused upgrades
        self._stalls: list[StallAt] = []

    @property
    def live_sessions(self) -> list[S]:
        return [s for s in self.sessions if not s.closed]

    @property
    def received(self) -> list[dict[str, Any]]:
        return [m for s in self.sessions for m in s.received]

    def _open_sockets(self) -> list[S]:
        return self.live_sessions

    def stall_next(self, after_chunks: int = 0) -> None:
        """The next generation sends `after_chunks` chunks of audio (0: none; more: it stops
        mid-sentence) and then nothing: no more audio, no end of it, the socket open."""
        self._stalls.append(StallAt(after_chunks))

    def _take_stall(self) -> StallAt | None:
        return self._stalls.pop(0) if self._stalls else None

    async def _accept(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self._max_msg)
        await ws.prepare(request)
        return ws

    async def _hold(
        self,
        session: S,
        body: Awaitable[None],
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> web.WebSocketResponse:
        """Record the socket and run `body`; however it ends, `cleanup`, then close."""
        self.sessions.append(session)
        try:
            await body
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            if cleanup is not None:
                await cleanup()
            session.closed = True
            if not session.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await session.ws.close()
        return session.ws

    async def _first_audio(self, at: float | None = None) -> None:
        """Wait until `first_audio_delay` after `at` (the cause; default now)."""
        if self.first_audio_delay and at is None:
            await asyncio.sleep(self.first_audio_delay)
        elif self.first_audio_delay and at is not None:
            now = asyncio.get_running_loop().time()
            await asyncio.sleep(max(0.0, at + self.first_audio_delay - now))

    async def _pieces(
        self,
        tone: np.ndarray,
        rate: int,
        stall: StallAt | None,
        on_stall: Callable[[StallAt], None] | None = None,
    ) -> AsyncIterator[np.ndarray]:
        """`tone` in `chunk_ms` pieces, each yielded to be sent and then paced; at a stall,
        silent until the socket is gone."""
        step = max(1, rate * self.chunk_ms // 1000)
        pace = Pace(self.audio_speed)
        for n, start in enumerate(range(0, len(tone), step)):
            if stall is not None and n >= stall.after_chunks:
                if on_stall is not None:
                    on_stall(stall)
                await asyncio.Event().wait()
            piece = tone[start : start + step]
            yield piece
            await pace.sent(len(piece) / rate)

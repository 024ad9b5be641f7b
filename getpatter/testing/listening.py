"""What the STT fakes share, so each fake keeps only what its provider documents.

Per provider (in the fake): the URL, how a socket is accepted and authorized, the message
shapes and the rules. Here: the script of transcripts (the i-th utterance across all sockets
says ``transcripts[i]``; one whose socket ends before its final goes back to the script),
decoding the audio and finding speech in it by energy (20 ms frames), the outbox that sends
each message `latency` seconds after its cause and in order, the ``stall`` modes
(``"no_final"``: finals never come; ``"silent"``: nothing is sent), the idle watchdog, and
the record of every socket for assertions.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Final, Generic, Literal, Protocol, TypedDict, TypeVar

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.core.audio import alaw_decode, ulaw_decode
from getpatter.testing._loopback import LoopbackServer

__all__ = [
    "CLOSE",
    "EnergyFrames",
    "Heard",
    "Listener",
    "ListeningKnobs",
    "ListeningServer",
    "Sample",
    "Stall",
    "accept",
    "decode",
    "masked",
]

CLOSE: Final = object()  # on an outbox: close the socket (1000) after what precedes it
Stall = Literal["no_final", "silent"] | None
Sample = Literal["ulaw", "alaw", "pcm16", "f32"]


def masked(headers: Any, secret: Sequence[str] = ("authorization",)) -> dict[str, str]:
    """Request headers for the record, credentials starred out."""
    return {k: ("***" if k.lower() in secret else v) for k, v in headers.items()}


async def accept(request: web.Request, protocols: Sequence[str] = ()) -> web.WebSocketResponse:
    """Upgrade to a WebSocket that takes frames of up to 4 MiB (no heartbeat of its own)."""
    ws = web.WebSocketResponse(
        heartbeat=None, max_msg_size=4 * 1024 * 1024, protocols=tuple(protocols)
    )
    await ws.prepare(request)
    return ws


def decode(data: bytes, kind: Sample) -> np.ndarray:
    """Audio bytes as int16 samples; a trailing partial sample is dropped."""
    if kind == "ulaw":
        return np.asarray(ulaw_decode(data), dtype=np.int16)
    if kind == "alaw":
        return np.asarray(alaw_decode(data), dtype=np.int16)
    if kind == "f32":
        f = np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4")
        return (np.clip(f, -1, 1) * 32767).astype(np.int16)
    return np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.int16)


class EnergyFrames:
    """Splits a stream into 20 ms frames, each speech or not by its RMS; the part of a frame
    that has not arrived yet waits in `carry` for the next data."""

    def __init__(self, rate: int, *, inclusive: bool = False) -> None:
        self.step = max(1, rate // 50)
        self.inclusive = inclusive  # speech at RMS >= threshold (else >)
        self.carry = np.zeros(0, np.int16)

    def feed(self, samples: np.ndarray, threshold: float) -> list[bool]:
        samples = np.concatenate([self.carry, samples])
        whole = len(samples) // self.step * self.step
        self.carry = samples[whole:]
        loud: list[bool] = []
        for i in range(0, whole, self.step):
            frame = samples[i : i + self.step].astype(np.float64)
            rms = float(np.sqrt(np.mean(frame * frame)))
            loud.append(rms >= threshold if self.inclusive else rms > threshold)
        return loud


@dataclass
class Heard:
    """One accepted socket, as the fake saw it: client text messages and messages sent."""

    request: web.Request
    ws: web.WebSocketResponse
    _: KW_ONLY
    headers: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)  # client text messages
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None

    def count(self, kind: str) -> int:
        """How many client messages of this type arrived."""
        return sum(1 for m in self.messages if m.get("type") == kind)

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == kind]


class _Record(Protocol):
    closed: bool

    @property
    def request(self) -> web.Request: ...

    @property
    def ws(self) -> web.WebSocketResponse: ...


H = TypeVar("H", bound=_Record)


class ListeningKnobs(TypedDict, total=False):
    """Constructor arguments every STT fake takes, with the same defaults."""

    host: str
    port: int
    transcripts: Sequence[str]
    default_transcript: str
    latency: float
    speech_rms: float
    stall: Stall


class ListeningServer(LoopbackServer, Generic[H]):
    """An STT fake: its knobs, its script of transcripts, its sockets (`connections`)."""

    _path: ClassVar[str] = ""  # what `ws_url` ends with
    idle_timeout: float = math.inf

    def __init__(
        self,
        api_key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        transcripts: Sequence[str] = (),
        default_transcript: str = "Hello.",
        latency: float = 0.05,
        speech_rms: float = 300.0,
        stall: Stall = None,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.transcripts = list(transcripts)
        self.default_transcript = default_transcript
        self.latency = latency
        self.speech_rms = speech_rms
        self.stall: Stall = stall  # read when a socket opens: a test can stall the first only
        self.connections: list[H] = []
        self.rejected: list[int] = []  # HTTP statuses of refused upgrades
        self._given: list[str] = []  # the texts handed out, in order

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{self._path}"

    @property
    def live(self) -> list[H]:
        return [c for c in self.connections if not c.closed]

    def _open_sockets(self) -> list[H]:
        return self.live

    def next_transcript(self) -> str:
        text = self.transcripts.pop(0) if self.transcripts else self.default_transcript
        self._given.append(text)
        return text

    def give_back(self, text: str) -> None:
        """An utterance that never got its final: the same audio again says the same words."""
        self.transcripts.insert(0, text)
        self._given.pop()

    async def _serve(
        self, listener: Listener, body: Awaitable[None] | None = None
    ) -> web.WebSocketResponse:
        """Record the socket, run `body` (the listener by default), close the record."""
        conn = listener.conn
        self.connections.append(conn)  # type: ignore[arg-type]
        try:
            await (listener.run() if body is None else body)
        finally:
            conn.closed = True
            conn.close_code = conn.ws.close_code
            await listener.stop()
        return conn.ws


class Listener:
    """One socket's recogniser: reads the client's frames, and sends what they cause in order,
    `latency` after the cause. `utterance` (a dict with its ``"text"``) is the one in flight."""

    opening: ClassVar[int] = 0  # messages that go out even when "silent" (a session's Begin)

    def __init__(self, fake: ListeningServer[Any], conn: Heard) -> None:
        self.fake = fake
        self.conn = conn
        self.stall: Stall = fake.stall
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.ending = False  # the end was asked for: the client's frames are ignored
        self.utterance: dict[str, Any] | None = None
        self.outbox: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self.tasks = [self.loop.create_task(self._write())]
        self._passed = 0

    async def run(self) -> None:
        async for msg in self.conn.ws:
            self.last_activity = self.loop.time()
            if self.ending:
                continue
            if msg.type == WSMsgType.BINARY:
                await self.on_audio(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await self.on_text(msg.data)
            else:
                break

    async def on_audio(self, data: bytes) -> None:
        raise NotImplementedError

    async def on_text(self, data: str) -> None:
        raise NotImplementedError

    async def on_idle(self) -> None:
        """No frame for `idle_timeout`: the provider's way of ending the socket."""

    async def stop(self) -> None:
        if self.utterance is not None:  # never finalized: the words are still to come
            self.fake.give_back(self.utterance["text"])
            self.utterance = None
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def watch_idle(self) -> None:
        self.tasks.append(self.loop.create_task(self._watch()))

    async def _watch(self) -> None:
        while True:
            left = self.last_activity + self.fake.idle_timeout - self.loop.time()
            if left <= 0:
                await self.on_idle()
                return
            await asyncio.sleep(left)

    def emit(self, message: Any, delay: float = 0.0) -> None:
        """Send `message` (or `CLOSE`) `latency` + `delay` from now, after what is queued."""
        if self.stall == "silent" and self._passed >= self.opening and message is not CLOSE:
            return
        self._passed += 1
        self.outbox.put_nowait((self.loop.time() + self.fake.latency + delay, message))

    async def _write(self) -> None:
        ws = self.conn.ws
        while True:
            due, message = await self.outbox.get()
            await asyncio.sleep(max(0.0, due - self.loop.time()))
            if ws.closed:
                continue
            try:
                if message is CLOSE:
                    await ws.close(code=1000)
                else:
                    await ws.send_str(json.dumps(message))
                    self.conn.sent.append(message)
            except (ConnectionError, RuntimeError):
                pass

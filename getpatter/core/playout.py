"""Paced audio out to the carrier, marks, and what the caller has actually heard.

Agent audio is queued as 8 kHz G.711 and sent in 20 ms frames at real time, a small lead
ahead of what the carrier is playing, so a barge-in `clear` throws away at most the lead.
Marks go out after each chunk and every `mark_interval`; the carrier echoes a mark once the
audio before it has played, which tells us what the caller heard.

One `PlayoutScheduler` per server drives every call's playout from a single 20 ms tick: one
wakeup for all calls instead of one task per call. While it runs, the loop's socket reads are
batched (core/iobatch.py): the loop wakes for the calls' incoming messages a few times per
tick instead of once per message, and the tick itself still fires on time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from getpatter.core.audio import AudioFrame, ulaw_encode
from getpatter.core.iobatch import batch_io
from getpatter.core.resample import Resampler

log = logging.getLogger(__name__)

RATE = 8000  # G.711 on the phone network
BYTES_PER_SECOND = RATE  # one μ-law byte per sample


class MediaEncoder(Protocol):
    """The carrier's outbound wire messages (the carrier adapter implements this)."""

    def media(self, payload: bytes) -> str: ...
    def mark(self, name: str) -> str: ...
    def clear(self) -> str: ...


class MediaSink(Protocol):
    """Where encoded messages go: the media socket."""

    def writable(self) -> bool: ...
    async def send(self, message: str) -> None: ...


@dataclass(slots=True)
class PlayoutOptions:
    frame_ms: int = 20
    lead: float = 0.1
    mark_interval: float = 0.25

    @property
    def frame_bytes(self) -> int:
        return RATE * self.frame_ms // 1000


@dataclass(slots=True)
class _Utterance:
    label: str
    start: int  # byte position on the call's outbound timeline
    end: int | None = None  # set once the utterance is complete
    done: asyncio.Future[bool] | None = None  # True: fully played; False: cut by a clear


@dataclass(slots=True)
class _Mark:
    name: str
    position: int
    utterance: _Utterance | None = None


@dataclass(slots=True)
class PlayoutStats:
    frames_sent: int = 0
    marks_sent: int = 0
    clears: int = 0
    underruns: int = 0
    stalls: int = 0
    # the latest frames' lateness against their schedule (bounded: calls can run for hours)
    send_lateness: deque[float] = field(default_factory=lambda: deque(maxlen=500))


class Playout:
    """One call's outbound audio. Positions count μ-law bytes (1 byte = 125 µs)."""

    def __init__(
        self,
        encoder: MediaEncoder,
        sink: MediaSink,
        options: PlayoutOptions | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.options = options or PlayoutOptions()
        self._encoder = encoder
        self._sink = sink
        self._clock = clock or asyncio.get_running_loop().time
        self._pending = bytearray()
        self._queued = 0  # position of the end of everything queued
        self._sent = 0  # position of the end of everything sent
        self._carrier_end = 0.0  # clock time at which the carrier runs out of audio
        self._marks_to_send: deque[_Mark] = deque()
        self._marks_in_flight: deque[_Mark] = deque()
        self._heard = 0  # position confirmed by the latest echoed mark
        self._heard_at = 0.0
        self._generation = 0
        self._mark_seq = 0
        self._next_interval_mark = 0
        self._utterances: dict[str, _Utterance] = {}
        self._current: _Utterance | None = None
        self._resamplers: dict[int, Resampler] = {}
        self._wake: Callable[[], None] | None = None
        self.stats = PlayoutStats()
        self.closed = False
        self._pumping = False
        self._kick_task: asyncio.Task[None] | None = None

    # --- feeding audio -------------------------------------------------------------------

    def begin(self, label: str) -> None:
        """Start an utterance; the audio played until `end(label)` belongs to it."""
        if self._current is not None:
            self.end(self._current.label)
        utt = _Utterance(label, self._queued, done=asyncio.get_running_loop().create_future())
        self._utterances[label] = utt
        self._current = utt

    def play(self, audio: bytes | AudioFrame) -> None:
        """Queue μ-law bytes (8 kHz) or an int16 frame at any rate (converted once here)."""
        if self.closed:
            return
        if isinstance(audio, AudioFrame):
            audio = self._to_ulaw(audio)
        if not audio:
            return
        if self._current is None:
            self.begin(f"u{self._mark_seq}")
        idle = not self._pending and self._carrier_end <= self._clock()
        self._pending += audio
        self._queued += len(audio)
        if self._wake is not None:
            self._wake()
            if idle and not self._pumping:
                # The line is silent: send now rather than on the next tick (up to 20 ms
                # later). Once per utterance start, not per frame.
                loop = asyncio.get_running_loop()
                self._kick_task = loop.create_task(self._kick(), name="playout-kick")

    def _to_ulaw(self, frame: AudioFrame) -> bytes:
        if frame.sample_rate != RATE:
            rs = self._resamplers.get(frame.sample_rate)
            if rs is None:
                rs = self._resamplers[frame.sample_rate] = Resampler(frame.sample_rate, RATE)
            frame = rs.process(frame)
        return ulaw_encode(frame.samples) if len(frame.samples) else b""

    def end(self, label: str) -> asyncio.Future[bool]:
        """Close an utterance; the returned future resolves when its audio has played."""
        utt = self._utterances[label]
        if self._current is utt:
            for rate, rs in list(self._resamplers.items()):
                tail = rs.flush()
                del self._resamplers[rate]
                if len(tail.samples):
                    self._pending += ulaw_encode(tail.samples)
                    self._queued += len(tail.samples)
            self._current = None
        if utt.end is None:
            utt.end = self._queued
            self._marks_to_send.append(self._new_mark(utt.end, utt))
            if self._wake is not None:
                self._wake()
        assert utt.done is not None
        return utt.done

    def _new_mark(self, position: int, utterance: _Utterance | None = None) -> _Mark:
        self._mark_seq += 1
        return _Mark(f"g{self._generation}-{self._mark_seq}", position, utterance)

    # --- barge-in ------------------------------------------------------------------------

    async def clear(self) -> None:
        """Drop everything not yet played and tell the carrier to drop its buffer too."""
        heard = self.heard_position()
        self._pending.clear()
        self._queued = self._sent = heard
        self._carrier_end = self._clock()
        self._heard, self._heard_at = heard, self._clock()
        self._generation += 1  # echoes of marks sent before the clear are ignored
        self._marks_to_send.clear()
        self._marks_in_flight.clear()
        self._next_interval_mark = heard
        for utt in self._utterances.values():
            if utt.done is not None and not utt.done.done():
                fully_heard = utt.end is not None and utt.end <= heard
                utt.end = heard if utt.end is None else min(utt.end, heard)
                utt.done.set_result(fully_heard)
        self._current = None
        self._resamplers.clear()
        self.stats.clears += 1
        try:
            await self._sink.send(self._encoder.clear())
        except (ConnectionError, RuntimeError) as exc:  # the caller hung up as they spoke
            log.debug("clear not sent: %s", exc)

    # --- what was heard ------------------------------------------------------------------

    def on_mark(self, name: str) -> None:
        """The carrier echoed a mark: the audio before it has played."""
        if not name.startswith(f"g{self._generation}-"):
            return
        while self._marks_in_flight:
            mark = self._marks_in_flight.popleft()
            self._heard, self._heard_at = max(self._heard, mark.position), self._clock()
            utt = mark.utterance
            if utt is not None and utt.done is not None and not utt.done.done():
                utt.done.set_result(True)
            if mark.name == name:
                break

    def heard_position(self) -> int:
        """Best estimate of how far the caller has heard, in bytes of the outbound timeline.

        The last echoed mark is certain; beyond it, audio plays at real time, but never past
        what was sent nor past a mark the carrier has not echoed yet.
        """
        elapsed = max(0.0, self._clock() - self._heard_at)
        estimate = self._heard + int(elapsed * BYTES_PER_SECOND)
        cap = self._sent
        if self._marks_in_flight:
            cap = min(cap, self._marks_in_flight[0].position)
        return max(self._heard, min(estimate, cap))

    def heard_seconds(self, label: str) -> float:
        """How much of utterance `label` the caller has heard, in seconds."""
        utt = self._utterances.get(label)
        if utt is None:
            return 0.0
        end = utt.end if utt.end is not None else self._queued
        heard = min(self.heard_position(), end) - utt.start
        return max(0, heard) / BYTES_PER_SECOND

    def drains_at(self) -> float:
        """Clock time at which the carrier will have played everything queued so far."""
        now = self._clock()
        return max(self._carrier_end, now) + len(self._pending) / BYTES_PER_SECOND

    @property
    def busy(self) -> bool:
        """True while audio is queued or the carrier is still playing it."""
        return bool(self._pending) or self._carrier_end > self._clock()

    # --- pacing --------------------------------------------------------------------------

    async def _kick(self) -> None:
        try:
            await self.pump(self._clock())
        except (ConnectionError, RuntimeError) as exc:
            log.debug("playout send failed: %s", exc)

    async def pump(self, now: float) -> None:
        """Send what is due: frames until the carrier holds `lead` of audio, and due marks."""
        if self._pumping or self.closed:
            return
        if not self._sink.writable():
            self.stats.stalls += 1
            return
        self._pumping = True
        try:
            await self._pump(now)
        finally:
            self._pumping = False

    async def _pump(self, now: float) -> None:
        opts = self.options
        # Half a frame of slack: a tick a few microseconds late must not send two frames
        # in one tick and none in the next (40 ms gaps at the carrier).
        horizon = opts.lead - opts.frame_ms / 2000
        while self._pending and self._carrier_end - now < horizon:
            if len(self._pending) < opts.frame_bytes and self._current is not None:
                break  # hold a partial frame until more audio comes or the utterance ends
            if not self._sink.writable():  # re-checked per frame: never wait on a slow peer
                self.stats.stalls += 1
                break
            frame = bytes(self._pending[: opts.frame_bytes])
            del self._pending[: opts.frame_bytes]
            if self._carrier_end < now - opts.frame_ms / 1000:
                if self._sent:
                    self.stats.underruns += 1
                self._carrier_end = now
            else:
                self.stats.send_lateness.append(max(0.0, now - (self._carrier_end - opts.lead)))
            self._carrier_end = max(self._carrier_end, now) + len(frame) / BYTES_PER_SECOND
            self._sent += len(frame)
            self.stats.frames_sent += 1
            await self._sink.send(self._encoder.media(frame))
            if self._sent >= self._next_interval_mark + opts.mark_interval * BYTES_PER_SECOND:
                self._next_interval_mark = self._sent
                if not self._marks_to_send or self._marks_to_send[0].position > self._sent:
                    self._marks_to_send.appendleft(self._new_mark(self._sent))
            await self._send_due_marks()
        await self._send_due_marks()

    async def _send_due_marks(self) -> None:
        while self._marks_to_send and self._marks_to_send[0].position <= self._sent:
            mark = self._marks_to_send.popleft()
            self._marks_in_flight.append(mark)
            self.stats.marks_sent += 1
            await self._sink.send(self._encoder.mark(mark.name))

    @property
    def has_work(self) -> bool:
        return bool(self._pending) or bool(self._marks_to_send)

    def close(self) -> None:
        self.closed = True
        self._pending.clear()
        for utt in self._utterances.values():
            if utt.done is not None and not utt.done.done():
                utt.done.set_result(False)


class PlayoutScheduler:
    """Drives every call's `Playout` from one drift-free 20 ms tick; idle when nothing plays."""

    def __init__(self, frame_ms: int = 20) -> None:
        self._period = frame_ms / 1000
        self._playouts: set[Playout] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unbatch: Callable[[], None] | None = None
        self.ticks = 0

    def attach(self, playout: Playout) -> None:
        self._playouts.add(playout)
        playout._wake = self._wakeup.set
        if self._task is None or self._task.done():
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="playout")
            if self._unbatch is None:
                self._unbatch = batch_io(loop)

    def detach(self, playout: Playout) -> None:
        self._playouts.discard(playout)
        playout._wake = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            if not any(p.has_work for p in self._playouts):
                self._wakeup.clear()
                await self._wakeup.wait()
                next_tick = loop.time()
            now = loop.time()
            for playout in list(self._playouts):
                try:
                    await playout.pump(now)
                except (ConnectionError, RuntimeError) as exc:
                    # usually a hang-up racing the socket's close; the session ends the call
                    log.debug("playout send failed, dropping that call's audio: %s", exc)
                    playout.close()
                    self.detach(playout)
            self.ticks += 1
            next_tick += self._period
            delay = next_tick - loop.time()
            if delay < -self._period:  # fell behind (a stall): resynchronise, don't burst
                next_tick = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    async def aclose(self) -> None:
        if self._unbatch is not None:
            self._unbatch()
            self._unbatch = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

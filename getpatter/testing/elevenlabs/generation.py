"""One generation stream of the fake ElevenLabs service: a `stream-input` socket, or one
context of a `multi-stream-input` socket. Buffered text becomes audio messages, in order, made
by one worker task, ending with the final message once the stream is closed."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from getpatter.testing import speaking
from getpatter.testing.engines import speech_tone

if TYPE_CHECKING:
    from getpatter.testing.elevenlabs.server import FakeElevenLabs

SCHEDULE = (120, 160, 250, 290)  # the default chunk_length_schedule
_KINDS: dict[str, speaking.Encoding] = {"ulaw": "ulaw", "alaw": "alaw"}
_PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


def audio_format(output_format: str) -> tuple[int, str] | None:
    """`(sample_rate, "ulaw" | "alaw" | "pcm")` for a format the fake can make, else None."""
    if output_format in ("ulaw_8000", "alaw_8000"):
        return 8000, output_format[:4]
    kind, _, rate = output_format.partition("_")
    if kind == "pcm" and rate.isdigit() and int(rate) in _PCM_RATES:
        return int(rate), "pcm"
    return None


def encode(samples: np.ndarray, kind: str) -> bytes:
    """int16 samples as `audio_format`'s kind says."""
    return speaking.encode(samples, _KINDS.get(kind, "pcm16"))


@dataclass(eq=False)
class FakeElevenLabsSession:
    """One socket: what the client sent (`received`, with loop times in `received_at`), what it
    got, and how it ended."""

    endpoint: str
    voice_id: str
    query: dict[str, str]
    headers: dict[str, str]
    ws: web.WebSocketResponse
    request: web.Request
    received: list[dict[str, Any]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)  # contexts (or "" for stream-input) ended
    audio_bytes: dict[str, int] = field(default_factory=dict)  # per context
    first_audio_at: dict[str, float] = field(default_factory=dict)  # per context, loop time
    context_settings: dict[str, Any] = field(default_factory=dict)  # voice_settings per context
    lost: list[str] = field(default_factory=list)  # contexts lost to the close race
    timed_out: list[str] = field(default_factory=list)  # contexts closed for inactivity
    close_code: int | None = None
    closed: bool = False
    stalled: bool = False


class Generation:
    """Buffered text → audio messages, by one worker; `close()` ends it with the final message.

    `pending` counts flushed texts not yet fully spoken, `sent_audio` says whether any audio
    went out: together they tell whether a close arrives before the audio started."""

    def __init__(self, fake: FakeElevenLabs, session: FakeElevenLabsSession, name: str) -> None:
        self.fake, self.session, self.name = fake, session, name
        self.buffer = ""
        self.schedule = 0
        self.closing = False
        self.pending = 0
        self.sent_audio = False
        self.empty = fake._take_empty()  # a fault: this stream ends with no audio at all
        self.timer: asyncio.TimerHandle | None = None  # the multi-context inactivity timer
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    @property
    def multi(self) -> bool:
        return self.session.endpoint == "multi-stream-input"

    def add(self, text: str, flush: bool) -> None:
        self.buffer += text
        if flush or len(self.buffer) >= SCHEDULE[min(self.schedule, len(SCHEDULE) - 1)]:
            self.schedule += 0 if flush else 1
            self.flush()

    def flush(self) -> None:
        if self.buffer.strip():
            self.pending += 1
            self.queue.put_nowait(self.buffer)
        self.buffer = ""

    def close(self, *, generate_buffer: bool) -> None:
        """Speak what was flushed (and the unflushed buffer too if `generate_buffer`), then
        send the final message."""
        if self.closing:
            return
        self.closing = True
        if generate_buffer:
            self.flush()
        self.buffer = ""
        self.queue.put_nowait(None)

    def stop(self) -> None:
        self.worker.cancel()
        if self.timer is not None:
            self.timer.cancel()

    async def _work(self) -> None:
        try:
            while (text := await self.queue.get()) is not None:
                await self._speak(text)
                self.pending -= 1
            while self.session.stalled:  # the peer died: nothing more, final included
                await asyncio.Event().wait()
            final: dict[str, Any] = {"isFinal": True}
            if self.multi:
                final["contextId"] = self.name
            await self.session.ws.send_json(final)
            self.session.finals.append(self.name)
        except (ConnectionError, RuntimeError):
            pass  # the socket went away under us

    async def _speak(self, text: str) -> None:
        session, fake = self.session, self.fake
        rate, kind = audio_format(session.query.get("output_format", "mp3_44100_128")) or (0, "")
        tone = speech_tone(text.strip(), rate, fake.tone_hz)
        per_char = len(tone) / rate * 1000 / max(len(text), 1)
        await fake._first_audio()
        if self.empty:
            return

        def stalled(stall: speaking.StallAt) -> None:  # a dead peer reads nothing more
            session.stalled = session.stalled or stall.whole_socket

        start = 0
        async for piece in fake._pieces(tone, rate, fake._take_stall(), stalled):
            if session.stalled:  # the peer died: no context of it sends anything more
                await asyncio.Event().wait()
            first, last = start / rate * 1000, (start + len(piece)) / rate * 1000
            chars = [i for i in range(len(text)) if first <= i * per_char < last]
            alignment = {
                "chars": [text[i] for i in chars],
                "charStartTimesMs": [int(i * per_char) for i in chars],
                "charDurationsMs": [int(per_char)] * len(chars),
            }
            audio = encode(piece, kind)
            message: dict[str, Any] = {
                "audio": base64.b64encode(audio).decode(),
                "isFinal": None,
                "normalizedAlignment": alignment,
                "alignment": alignment,
            }
            if self.multi:
                message["contextId"] = self.name
            session.audio_bytes[self.name] = session.audio_bytes.get(self.name, 0) + len(audio)
            if not self.sent_audio:
                session.first_audio_at[self.name] = asyncio.get_running_loop().time()
            self.sent_audio = True
            await session.ws.send_json(message)
            start += len(piece)

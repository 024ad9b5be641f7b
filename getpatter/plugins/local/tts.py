"""LocalTTS: offline speech from espeak-ng, with no key, no network and no system package.

espeak-ng makes 22050 Hz int16; each synthesis resamples once (soxr) to the declared
`sample_rate` and encodes to the declared `encoding`, so at the defaults (8 kHz) the audio
needs no conversion on its way to the carrier but μ-law. espeak runs in its own worker thread,
one synthesis at a time (see `_espeak`), and streams: the first chunk is out while the rest of
the sentence is still being made, and closing the iterator stops espeak at its next buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import soxr

from getpatter.core.audio import (
    Int16Array,
    float32_to_int16,
    int16_to_float32,
    pcm16_array,
    pcm16_bytes,
    ulaw_encode,
)
from getpatter.core.providers import AudioEncoding
from getpatter.errors import PatterConfigError, ProviderError

from . import _espeak

__all__ = ["LocalTTS", "LocalTTSStream"]

_CHUNK_SECONDS = 0.2


def speakable(text: str) -> bool:
    """False for text espeak would only turn into silence (empty, spaces, punctuation)."""
    return any(ch.isalnum() for ch in text)


@dataclass(slots=True)
class LocalTTS:
    """espeak-ng voice `voice` at `rate_wpm` words a minute; `pitch` 0–100 (None: the voice's).

    Output is mono at `sample_rate` Hz, as little-endian int16 ("pcm16") or G.711 μ-law.
    """

    voice: str = "en-us"
    rate_wpm: int = 150
    pitch: int | None = None
    sample_rate: int = 8000
    encoding: AudioEncoding = "pcm16"

    def __post_init__(self) -> None:
        if not self.voice:
            raise PatterConfigError("LocalTTS: voice must name an espeak-ng voice, e.g. 'en-us'")
        if not 80 <= self.rate_wpm <= 450:
            raise PatterConfigError(
                f"LocalTTS: rate_wpm must be 80–450 words a minute, got {self.rate_wpm}"
            )
        if self.pitch is not None and not 0 <= self.pitch <= 100:
            raise PatterConfigError(f"LocalTTS: pitch must be 0–100 or None, got {self.pitch}")
        if not 4000 <= self.sample_rate <= 48000:
            raise PatterConfigError(
                f"LocalTTS: sample_rate must be 4000–48000 Hz, got {self.sample_rate}"
            )
        if self.encoding not in ("pcm16", "mulaw"):
            raise PatterConfigError(
                f"LocalTTS: encoding must be 'pcm16' or 'mulaw', got {self.encoding!r}"
            )

    async def open(self) -> LocalTTSStream:
        """Load espeak-ng (once per process) and check the voice exists."""
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(None, _espeak.engine)
            await loop.run_in_executor(
                engine.executor, engine.check_voice, self.voice, self.rate_wpm, self.pitch
            )
        except _espeak.EspeakError as exc:
            raise PatterConfigError(f"LocalTTS: {exc}") from exc
        return LocalTTSStream(self, engine)


class _Converter:
    """22050 Hz int16 from espeak → chunks of `sample_rate` audio in `encoding`, in order."""

    def __init__(self, in_rate: int, tts: LocalTTS) -> None:
        self._stream: soxr.ResampleStream | None = None
        if in_rate != tts.sample_rate:
            self._stream = soxr.ResampleStream(
                in_rate, tts.sample_rate, 1, dtype="float32", quality="HQ"
            )
        self._encoding = tts.encoding
        self._chunk = int(tts.sample_rate * _CHUNK_SECONDS)
        self._pending: list[Int16Array] = []
        self._pending_len = 0

    def push(self, pcm: bytes, last: bool = False) -> list[bytes]:
        samples = pcm16_array(pcm)
        if self._stream is not None:
            # Our own float → int16 conversion: soxr's int16 output dithers silence into noise.
            samples = float32_to_int16(
                self._stream.resample_chunk(int16_to_float32(samples), last=last)
            )
        if len(samples):
            self._pending.append(samples)
            self._pending_len += len(samples)
        if self._pending_len < self._chunk and not (last and self._pending_len):
            return []
        joined = np.concatenate(self._pending)
        cut = len(joined) if last else len(joined) - len(joined) % self._chunk
        rest = joined[cut:]
        self._pending = [rest] if len(rest) else []
        self._pending_len = len(rest)
        return [
            self._encode(joined[i : min(i + self._chunk, cut)]) for i in range(0, cut, self._chunk)
        ]

    def _encode(self, samples: Int16Array) -> bytes:
        return ulaw_encode(samples) if self._encoding == "mulaw" else pcm16_bytes(samples)


@dataclass(eq=False)
class LocalTTSStream:
    """One call's LocalTTS: each `synthesize` is independent, so several may overlap."""

    tts: LocalTTS
    engine: _espeak.Engine
    _running: set[threading.Event] = field(default_factory=set)
    _closed: bool = False

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Audio for `text` in ~200 ms chunks; nothing at all for text with nothing to say."""
        if self._closed:
            raise ProviderError("LocalTTS stream is closed")
        if not speakable(text):
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        stop = threading.Event()
        converter = _Converter(self.engine.sample_rate, self.tts)
        tts = self.tts

        def deliver(chunks: list[bytes] | None) -> None:
            """Hand chunks (None: the end) to the event loop, unless it has gone."""
            put: Callable[[bytes | None], None] = queue.put_nowait
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                if chunks is None:
                    loop.call_soon_threadsafe(put, None)
                else:
                    for chunk in chunks:
                        loop.call_soon_threadsafe(put, chunk)

        def sink(pcm: bytes) -> bool:
            if stop.is_set():
                return False
            deliver(converter.push(pcm))
            return True

        def run() -> None:
            try:
                if stop.is_set():
                    return
                self.engine.synthesize(text, sink, tts.voice, tts.rate_wpm, tts.pitch)
                if not stop.is_set():
                    deliver(converter.push(b"", last=True))
            finally:
                deliver(None)

        self._running.add(stop)
        future = loop.run_in_executor(self.engine.executor, run)
        # An early close does not wait for espeak; its error, if any, is not worth a warning.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
            if not stop.is_set():
                await future  # re-raises espeak's error
        except _espeak.EspeakError as exc:
            raise ProviderError(f"LocalTTS: {exc}") from exc
        finally:
            stop.set()
            self._running.discard(stop)

    async def aclose(self) -> None:
        """Stop every synthesis still running; later `synthesize` calls raise."""
        self._closed = True
        for stop in list(self._running):
            stop.set()

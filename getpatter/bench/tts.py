"""The TTS bench: sentences synthesized one after another on one stream, as a reply is spoken.

Each run is one call's stream: `open()` (timed on its own; the very first, cold one apart, as
`cold_open_ms`), then each sentence. Measured per sentence, from the `synthesize()` call:
- `ttfb_ms`: to the first audio byte;
- `rtf`: the real-time factor, synthesis time (to the last byte) over the audio's length, in
  the provider's declared rate and encoding; under 1 means faster than it plays.

The provider speaks in the carrier's format (8 kHz μ-law) when its constructor lets the bench
ask for it (see `getpatter.bench.providers`); the format used is in the result's info.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from getpatter.bench._jobs import run_jobs
from getpatter.bench.corpus import SENTENCES
from getpatter.bench.results import Result
from getpatter.core.providers import TTS, TTSStream

__all__ = ["bench_tts"]


async def _one_sentence(stream: TTSStream, text: str) -> tuple[float | None, float, int]:
    """(seconds to the first byte or None, seconds to the end, bytes of audio)."""
    started = time.perf_counter()
    first: float | None = None
    size = 0
    async for chunk in stream.synthesize(text):
        if chunk and first is None:
            first = time.perf_counter() - started
        size += len(chunk)
    return first, time.perf_counter() - started, size


async def bench_tts(
    tts: TTS,
    sentences: Sequence[str] = SENTENCES,
    *,
    label: str = "",
    runs: int = 1,
    concurrency: int = 1,
    warmup: int = 1,
    max_wait: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Bench one TTS: `runs` streams, each speaking every sentence, `concurrency` at once,
    after `warmup` streams that speak the first sentence only (not counted)."""
    if not sentences:
        raise ValueError("bench_tts needs at least one sentence")
    result = Result("tts", label or type(tts).__name__)
    width = 1 if tts.encoding == "mulaw" else 2
    bytes_per_s = tts.sample_rate * width
    result.info.update(format=f"{tts.sample_rate} Hz {tts.encoding}", sentences=list(sentences))
    audio_seconds: list[dict[str, Any]] = []

    async def one_run(run: int, items: Sequence[str], counted: bool) -> None:
        opened = time.perf_counter()
        try:
            stream = await asyncio.wait_for(tts.open(), max_wait)
        except Exception as exc:
            where = f"run {run}" if counted else "warm-up"
            result.error(f"{where}: open() failed: {exc!r}")
            if progress is not None and counted:
                progress(len(items))
            return
        open_ms = (time.perf_counter() - opened) * 1000
        if not result.values("cold_open_ms"):
            result.add("cold_open_ms", open_ms, run)
        if counted:
            result.add("open_ms", open_ms, run)
        try:
            for index, text in enumerate(items):
                item = f"sentence{index + 1}"
                try:
                    first, total, size = await asyncio.wait_for(
                        _one_sentence(stream, text), max_wait
                    )
                except Exception as exc:
                    timed_out = isinstance(exc, TimeoutError)
                    why = f"timed out after {max_wait:g} s" if timed_out else repr(exc)
                    if counted:
                        result.error(f"run {run} {item}: {why}")
                    continue
                finally:
                    if progress is not None and counted:
                        progress(1)
                if not counted:
                    continue
                if first is None or size == 0:
                    result.error(f"run {run} {item}: no audio")
                    continue
                seconds = size / bytes_per_s
                audio_seconds.append({"run": run, "item": item, "audio_s": round(seconds, 3)})
                result.add("ttfb_ms", first * 1000, run, item)
                result.add("rtf", total / seconds, run, item)
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    for i in range(warmup):
        await one_run(-(i + 1), sentences[:1], counted=False)
    await run_jobs(runs, concurrency, lambda run: one_run(run, sentences, counted=True))
    result.info["audio"] = audio_seconds
    return result

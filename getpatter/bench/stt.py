"""The STT bench: utterances streamed at real time, as a call streams them.

Each run is one call's stream: `open()` (timed on its own; the very first one, which loads
models or makes the first connection, is reported apart as `cold_open_ms` — with warm-up on,
it is the warm-up's), then the corpus's utterances one after another, each as the pipeline
hands it over — 20 ms frames at real time, a little pre-roll before the speech, the speech,
then `end_silence` of the silence after it (the VAD's end-of-speech wait), then `finalize()`,
as the VAD would. The audio is the carrier's (8 kHz G.711 μ-law), converted once, before the
clock starts, to the STT's declared rate and encoding (the pipeline does that with a
streaming resampler, whose own delay is not the provider's and is not counted here).

Measured per utterance, from the end of speech (known to the sample from the audio, and
reached at real time):
- `final_ms`: to the final transcript, the one the pipeline takes the turn on — the first
  non-empty final after the end of speech. It includes `end_silence`, as a call does.
- `finalize_to_final_ms`: from the `finalize()` call to that final: the provider's own share.
  A provider that ends the utterance itself before `finalize()` has no sample here.
- `wer_pct`: the utterance's finals (until one with `speech_final`, or `settle` seconds with no
  new one) against the reference text.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from getpatter.bench._jobs import run_jobs
from getpatter.bench.corpus import CARRIER_RATE, Utterance
from getpatter.bench.results import Result
from getpatter.bench.wer import WordErrors, word_errors
from getpatter.core.providers import STT, STTStream, Transcript

__all__ = ["PREROLL", "PreparedUtterance", "bench_stt", "prepare", "vad_end_silence"]

FRAME = 0.02  # seconds: the carrier's frame
PREROLL = 0.3  # seconds of audio before the speech: the pipeline's pre-roll


@dataclass(frozen=True)
class PreparedUtterance:
    """An utterance as the STT will get it: 20 ms frames in its format, and where in them
    the speech ends (seconds from the first frame's start)."""

    utterance: Utterance
    frames: tuple[bytes, ...]
    speech_end: float

    @property
    def seconds(self) -> float:
        return len(self.frames) * FRAME


def prepare(
    utterance: Utterance, sample_rate: int, encoding: str, end_silence: float
) -> PreparedUtterance:
    """Cut to pre-roll + speech + `end_silence`, convert once, frame in 20 ms."""
    from getpatter.core.audio import (
        float32_to_int16,
        int16_to_float32,
        pcm16_bytes,
        ulaw_encode,
    )

    audio = utterance.audio
    start = max(0, utterance.speech_start - int(PREROLL * CARRIER_RATE))
    end_s = (utterance.speech_end - start) / CARRIER_RATE
    frames_n = math.ceil(round((end_s + end_silence) / FRAME, 6))
    total = frames_n * CARRIER_RATE // 50
    line = np.zeros(total, np.int16)  # digital silence past the file's own tail
    piece = audio[start : start + total]
    line[: len(piece)] = piece
    if sample_rate != CARRIER_RATE:
        import soxr

        out = soxr.resample(int16_to_float32(line), CARRIER_RATE, sample_rate, quality="HQ")
        line = float32_to_int16(np.asarray(out, dtype=np.float32))
    data = ulaw_encode(line) if encoding == "mulaw" else pcm16_bytes(line)
    step = len(data) // frames_n
    step -= step % (1 if encoding == "mulaw" else 2)
    frames = [data[i * step : (i + 1) * step] for i in range(frames_n)]
    frames[-1] += data[frames_n * step :]
    return PreparedUtterance(utterance, tuple(frames), end_s)


class _Listener:
    """Reads one stream's transcripts, stamping each with its arrival time."""

    def __init__(self, stream: STTStream) -> None:
        self.arrivals: list[tuple[float, Transcript]] = []
        self.changed = asyncio.Event()
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._read(stream))

    async def _read(self, stream: STTStream) -> None:
        try:
            async for transcript in stream.transcripts():
                self.arrivals.append((time.perf_counter(), transcript))
                self.changed.set()
        except Exception as exc:
            self.error = exc
        finally:
            self.changed.set()

    async def wait(self, deadline: float) -> bool:
        """Until something new arrives (True) or `deadline` passes (False)."""
        self.changed.clear()
        remaining = deadline - time.perf_counter()
        if remaining <= 0 or self.task.done():
            return False
        try:
            await asyncio.wait_for(self.changed.wait(), remaining)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), 2.0)
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


@dataclass
class _Heard:
    final_at: float | None  # perf_counter time of the turn-taking final
    text: str


async def _listen_for_final(
    listener: _Listener, mark: int, speech_end: float, timeout_at: float, settle: float
) -> _Heard:
    """The first non-empty final after `speech_end`, then the rest of the utterance's finals."""
    final_at: float | None = None
    while True:
        finals = [(t, tr) for t, tr in listener.arrivals[mark:] if tr.is_final]
        if final_at is None:
            taking = [t for t, tr in finals if tr.text.strip() and t >= speech_end]
            final_at = taking[0] if taking else None
        if final_at is None:
            done, deadline = False, timeout_at
        else:
            done = any(tr.speech_final and t >= final_at for t, tr in finals)
            deadline = min(timeout_at, max(t for t, _ in finals) + settle)
        if done or time.perf_counter() >= deadline or listener.task.done():
            break
        await listener.wait(deadline)
    texts = [tr.text.strip() for _, tr in listener.arrivals[mark:] if tr.is_final]
    return _Heard(final_at, " ".join(t for t in texts if t))


def vad_end_silence() -> float:
    """The pipeline VAD's end-of-speech wait, in seconds: when it would call `finalize()`."""
    from getpatter.core.vad import VADOptions

    return VADOptions().end_silence_ms / 1000


async def _stream_utterance(stream: STTStream, prepared: PreparedUtterance) -> tuple[float, float]:
    """Send the frames at real time, then finalize(); (speech end, finalize sent), perf time."""
    t0 = time.perf_counter()
    for i, frame in enumerate(prepared.frames, 1):
        delay = t0 + i * FRAME - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await stream.send(frame)
    await stream.finalize()
    return t0 + prepared.speech_end, time.perf_counter()


async def bench_stt(
    stt: STT,
    corpus: Sequence[Utterance],
    *,
    label: str = "",
    runs: int = 1,
    concurrency: int = 1,
    warmup: int = 1,
    end_silence: float | None = None,
    max_wait: float = 10.0,
    settle: float = 0.3,
    language: str = "en",
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Bench one STT over `corpus` (see the module docstring). `warmup` runs of the first
    utterance go first, on their own streams, and are not counted. `end_silence`: seconds
    streamed after the speech before `finalize()`; None: the pipeline VAD's default."""
    if not corpus:
        raise ValueError("bench_stt needs at least one utterance")
    if end_silence is None:
        end_silence = vad_end_silence()
    result = Result("stt", label or type(stt).__name__)
    prepared = [prepare(u, stt.sample_rate, stt.encoding, end_silence) for u in corpus]
    result.info.update(
        format=f"{stt.sample_rate} Hz {stt.encoding}",
        end_silence_ms=round(end_silence * 1000),
        utterances=[
            {"name": u.name, "text": u.text, "speech_s": round(u.speech_seconds, 3)} for u in corpus
        ],
        transcripts=[],
        missed=0,
    )
    totals: list[WordErrors] = []

    async def one_run(run: int, items: Sequence[PreparedUtterance], counted: bool) -> None:
        opened = time.perf_counter()
        try:
            stream = await stt.open(language=language)
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
        listener = _Listener(stream)
        try:
            for item in items:
                name = item.utterance.name
                mark = len(listener.arrivals)
                try:
                    speech_end, finalized = await _stream_utterance(stream, item)
                except Exception as exc:
                    where = f"run {run}" if counted else "warm-up"
                    result.error(f"{where} {name}: sending audio failed: {exc!r}")
                    break
                heard = await _listen_for_final(
                    listener, mark, speech_end, finalized + max_wait, settle
                )
                if not counted:
                    continue
                if progress is not None:
                    progress(1)
                errors = word_errors(item.utterance.text, heard.text)
                totals.append(errors)
                result.add("wer_pct", errors.rate * 100, run, name)
                result.add("finalize_at_ms", (finalized - speech_end) * 1000, run, name)
                result.info["transcripts"].append({"run": run, "item": name, "text": heard.text})
                if heard.final_at is None:
                    result.info["missed"] += 1
                    why = f": {listener.error!r}" if listener.error else ""
                    result.error(
                        f"run {run} {name}: no final transcript within {max_wait:g} s{why}"
                    )
                    if listener.error is not None:
                        break
                    continue
                result.add("final_ms", (heard.final_at - speech_end) * 1000, run, name)
                if heard.final_at >= finalized:
                    result.add(
                        "finalize_to_final_ms", (heard.final_at - finalized) * 1000, run, name
                    )
                else:
                    result.info["endpointed_before_finalize"] = (
                        result.info.get("endpointed_before_finalize", 0) + 1
                    )
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
            await listener.stop()

    for i in range(warmup):
        await one_run(-(i + 1), prepared[:1], counted=False)
    await run_jobs(runs, concurrency, lambda run: one_run(run, prepared, counted=True))
    total = sum(totals, WordErrors())
    result.info["wer"] = {
        "rate_pct": round(total.rate * 100, 2),
        "substitutions": total.substitutions,
        "deletions": total.deletions,
        "insertions": total.insertions,
        "reference_words": total.reference_words,
    }
    result.notes.append(
        f"word error rate over the corpus: {total.rate * 100:.1f} % "
        f"({total.edits} errors in {total.reference_words} words: {total.substitutions} "
        f"substituted, {total.deletions} deleted, {total.insertions} inserted)"
    )
    if result.info.get("endpointed_before_finalize"):
        result.notes.append(
            f"{result.info['endpointed_before_finalize']} finals came before finalize(): "
            "the provider ended those utterances itself"
        )
    return result

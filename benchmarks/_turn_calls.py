"""The turns mode of turn_latency.py: the scenario every call plays, and the two child
processes that play it (the server under test and the fake Twilio network).

Imported with `benchmarks/` on sys.path (turn_latency.py puts it there): the children are
started with the "spawn" context and find `CHILD` by this module's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import re
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _harness import (
    CALLER,
    NUMBER,
    Child,
    FakeTwilioSide,
    Handler,
    LogCounter,
    Profiling,
    ServerSide,
)

ROOT = Path(__file__).resolve().parent.parent

HELLO = ROOT / "tests" / "data" / "hello.wav"
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
FRAME_S = 0.020
GREETING = (
    "Thank you for calling Acme Hardware, your neighbourhood store since nineteen ninety. "
    "We are open from nine to six, Monday to Saturday. How can I help you today?"
)  # ~5 s of ScriptedTTS speech (30 ms a character)
REPLY = "We open at nine."  # one sentence, no clause break: one TTS synthesis, 0.48 s
LEAD_SILENCE_S = 1.0  # the caller is silent this long after answering, then speaks
ONSET_DBFS = -40.0  # speech onset: first sample at or above this level
QUIET_S = 0.4  # a reply has played once no agent frame arrived for this long
GAP_S = 0.5  # then the caller waits this long before speaking again
STEP_TIMEOUT_S = 15.0  # per scenario step (clear / reply); a miss is reported as a PROBLEM
TURN_P50_MS, TURN_P99_MS = 2.0, 10.0
BARGE_P50_MS = 150.0
FAKE_SATURATED = 0.90  # share of one core above which the fake is named the bottleneck


# --- the caller's audio (both sides use it) ------------------------------------------------


def hello_pcm() -> np.ndarray:
    with wave.open(str(HELLO)) as w:
        if w.getframerate() != 8000 or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise RuntimeError(f"{HELLO}: expected 8 kHz mono int16")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def caller_audio() -> tuple[bytes, bytes]:
    """(first utterance with its lead silence, the second utterance) as 8 kHz μ-law."""
    from getpatter.core.audio import ulaw_encode

    pcm = hello_pcm()
    lead = np.zeros(int(LEAD_SILENCE_S * 8000), np.int16)
    return ulaw_encode(np.concatenate([lead, pcm])), ulaw_encode(pcm)


@dataclass(frozen=True)
class SpeechMarks:
    onset_sample: int
    onset_chunk: int  # Twilio media `chunk` (1-based) carrying the onset sample
    decide_chunk: int  # the chunk after which the server's VAD starts speech (the barge-in)
    decide_audio_s: float  # audio time at the end of that chunk
    end_audio_s: float  # audio time at which the VAD ends the utterance (600 ms of silence)


def speech_marks(ulaw: bytes) -> SpeechMarks:
    """Where the speech starts in the caller's audio, and when getpatter's VAD decides so.

    The audio is decoded as the server decodes it and fed to the VAD (default options) in the
    20 ms frames and timestamps the fake sends; with barge_in_guard_ms = 0 the pipeline
    barges in on the frame that starts speech."""
    from getpatter.core.audio import AudioFrame, ulaw_decode
    from getpatter.core.vad import VAD

    pcm = ulaw_decode(ulaw)
    level = 32768 * 10 ** (ONSET_DBFS / 20)
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) >= level)
    if not len(loud):
        raise RuntimeError("no speech in the caller audio")
    onset = int(loud[0])
    vad = VAD()
    decide = end = None
    padded = np.concatenate([pcm, np.zeros(8000 * 2, np.int16)])  # the fake pads silence
    for k in range(len(padded) // FRAME_BYTES):
        frame = AudioFrame(padded[k * FRAME_BYTES : (k + 1) * FRAME_BYTES], 8000, k * FRAME_S)
        for event in vad.process(frame):
            if event.kind == "speech_started" and decide is None:
                decide = k + 1
            elif event.kind == "speech_ended" and end is None:
                end = (k + 1) * FRAME_S
    if decide is None or end is None:
        raise RuntimeError("the VAD finds no complete utterance in the caller audio")
    return SpeechMarks(onset, onset // FRAME_BYTES + 1, decide, decide * FRAME_S, end)


# --- workers (child processes) ---------------------------------------------------------------


class _LogCounter(LogCounter):
    """Counts warnings and errors by logger and message; prints the first few errors."""

    PRINTED = 5  # errors printed in full; the rest are only counted

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.errors += 1
            if self.errors <= self.PRINTED:
                print(f"[{self.kind}] {record.levelname} {record.name}: {msg}", flush=True)
        msg = re.sub(r"CA[0-9a-f]{32}", "CA…", msg)  # one line per kind, not per call
        self.counts[f"[{self.kind}] {record.levelname} {record.name}: {msg[:110]}"] += 1


class _LoopHealth:
    """How late this process's event loop wakes a 10 ms sleep (its responsiveness), and the
    pauses of the cyclic garbage collector (gc.callbacks), while measuring."""

    PERIOD = 0.010

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.lags: list[float] = []
        self.gc: list[tuple[int, float]] = []  # (generation, seconds)
        self._gc_start = 0.0

    async def command(self, run: bool) -> dict[str, Any]:
        """Start (run=True) or stop measuring; stopping returns lags and GC pauses in ms."""
        if run:
            self.lags, self.gc = [], []
            gc.callbacks.append(self._on_gc)
            self.task = asyncio.create_task(self._measure())
            return {}
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        pauses = np.asarray([t for _, t in self.gc]) * 1000
        full = [t * 1000 for g, t in self.gc if g == 2]
        return {
            "lag": np.asarray(self.lags) * 1000,
            "gc": {
                "n": len(pauses),
                "total": float(pauses.sum()),
                "max": float(pauses.max()) if len(pauses) else 0.0,
                "full": len(full),
                "full_max": max(full, default=0.0),
            },
        }

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc.append((info["generation"], time.perf_counter() - self._gc_start))

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.PERIOD)
            self.lags.append(loop.time() - t - self.PERIOD)


async def _clock() -> dict[str, Any]:
    """What this process's event loop uses for loop.time(), and a reading of it."""
    loop = asyncio.get_running_loop()
    t1 = loop.time()
    mono = time.monotonic()
    raw = time.clock_gettime(time.CLOCK_MONOTONIC)
    t2 = loop.time()
    import asyncio.base_events as base

    return {
        "loop": t1,
        "loop_class": f"{type(loop).__module__}.{type(loop).__name__}",
        "stdlib_time": type(loop).time is base.BaseEventLoop.time,
        "bracketed": t1 <= mono <= raw <= t2,
        "implementation": time.get_clock_info("monotonic").implementation,
    }


def _handlers(kind: str, args: dict[str, Any]) -> dict[str, Handler]:
    """A child's commands: the server's or the fake's, plus its clock and loop health."""
    side: _ServerSide | _FakeSide = _ServerSide() if kind == "server" else _FakeSide()
    health = _LoopHealth()
    return {**side.handlers(), "clock": _clock, "health": health.command}


CHILD = Child(handlers=_handlers, log_counter=_LogCounter)  # no CPU pinning here


class _ServerSide(ServerSide):
    """The process under test: a Patter serving a pipeline agent with the scripted providers."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []
        self.record_added = asyncio.Event()
        self.profiler = Profiling(lines=45, span="the span")

    def handlers(self) -> dict[str, Handler]:
        return {
            "start": self.start,
            "records": self.take_records,
            "profile": self.profiler.command,
            "exit": self.exit,
        }

    async def start(self, account_sid: str, auth_token: str, base_url: str) -> dict[str, Any]:
        from getpatter.testing.providers import ScriptedSTT, ScriptedTTS

        agent = self.patter(account_sid, auth_token, base_url).agent(
            stt=ScriptedSTT(["what time do you open", "thanks"]),
            tts=ScriptedTTS(),
            first_message=GREETING,
        )

        async def on_message(msg: dict[str, Any]) -> str:
            return REPLY

        def on_call_end(record: dict[str, Any]) -> None:
            keep = ("call_id", "end_reason", "events")
            self.records.append({k: record[k] for k in keep})
            self.record_added.set()

        return await self.serve(agent, on_message=on_message, on_call_end=on_call_end)

    async def take_records(self, n: int, limit: float) -> list[dict[str, Any]]:
        """The records of ended calls once there are n (or `limit` s have passed); forgets them."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while len(self.records) < n:
                    self.record_added.clear()
                    await self.record_added.wait()
        records, self.records = self.records, []
        return records


class _FakeSide(FakeTwilioSide):
    """The FakeTwilio process: places the calls, plays the caller, records what came back."""

    def handlers(self) -> dict[str, Handler]:
        return {"start": self.start, "route": self.route, "run": self.run, "exit": self.exit}

    async def run(self, n: int, rate: float, first: bytes, again: bytes) -> dict[str, Any]:
        """Place n calls, `rate` a second, each playing the scenario; returns once all ended."""
        started = time.monotonic()
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(self._scenario(first, again)))
            if i + 1 < n:
                await asyncio.sleep(1 / rate)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        calls = [r for r in results if isinstance(r, dict)]
        problems = [f"scenario crashed: {r!r}" for r in results if isinstance(r, BaseException)]
        return {"calls": calls, "problems": problems, "seconds": time.monotonic() - started}

    async def _scenario(self, first: bytes, again: bytes) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            call = await self.fake.place_call(from_=CALLER, to=NUMBER, audio=first)
        except Exception as exc:  # a webhook or the stream did not come up in time
            return {"call_sid": "", "problems": [f"place_call failed: {exc!r}"]}
        problems: list[str] = []
        try:
            if not call.stream_open:
                problems.append(f"{call.call_sid}: no stream ({call.status} {call.errors})")
                return self._collect(call, first, problems)
            if not await self._until(lambda: call.clears >= 1):
                problems.append(f"{call.call_sid}: no clear (barge-in) within the step limit")
            elif not await self._reply_played(call, after=loop.time()):
                problems.append(f"{call.call_sid}: reply 1 did not play")
            else:
                await asyncio.sleep(GAP_S)
                t = loop.time()
                await call.send_audio(again)
                if not await self._reply_played(call, after=t):
                    problems.append(f"{call.call_sid}: reply 2 did not play")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.hangup(), 15)
            self.forget(call.call_sid)  # the next wave starts clean
        return self._collect(call, first, problems)

    async def _until(self, predicate: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not predicate():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def _reply_played(self, call: Any, after: float) -> bool:
        """An agent frame arrived after `after`, then none for QUIET_S: the reply has played
        (the fake plays at real time, at most the server's 100 ms lead behind the last frame)."""
        loop = asyncio.get_running_loop()

        def last_media() -> float:
            for t, ev, _ in reversed(call.received):
                if ev == "media":
                    return t
            return -math.inf

        return await self._until(lambda: after < last_media() < loop.time() - QUIET_S)

    def _collect(self, call: Any, first: bytes, problems: list[str]) -> dict[str, Any]:
        import base64

        sent = sorted(
            (int(m["media"]["chunk"]), t, m["media"]["payload"])
            for t, ev, m in call.sent
            if ev == "media"
        )
        sent_bytes = b"".join(base64.b64decode(p) for _, _, p in sent[: len(first) // 160 + 1])
        rx_t, rx_audio = [], []
        for t, ev, m in call.received:
            if ev == "media":
                rx_t.append(t)
                rx_audio.append(base64.b64decode(m["media"]["payload"]))
        return {
            "call_sid": call.call_sid,
            "problems": problems,
            "sent_chunks": [c for c, _, _ in sent],
            "sent_t": np.array([t for _, t, _ in sent]),
            "sent_as_given": sent_bytes[: len(first)] == first,
            "rx_t": np.array(rx_t),
            "rx_audio": rx_audio,
            "clears": [t for t, ev, _ in call.received if ev == "clear"],
            "errors": [str(e) for e in call.errors],
        }

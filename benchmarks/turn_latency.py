"""Turn and barge-in latency: N concurrent pipeline calls through the fake Twilio network.

Run: .venv/bin/python benchmarks/turn_latency.py            N = 1, 50, 200 (~2 min)
     .venv/bin/python benchmarks/turn_latency.py --quick    N = 1, 5: a smoke run (~40 s)
     .venv/bin/python benchmarks/turn_latency.py --calls 100 --profile /tmp/turn.prof

Processes (all on 127.0.0.1), as in load.py:
  this one   the orchestrator: spawns the others, waits (up to `--wait-quiet` s) for the other
             processes on the machine to leave the CPUs idle, samples /proc while the calls
             run, then analyses and prints.
  server     `Patter.serve()` of a pipeline agent with the zero-latency in-process test
             providers (ScriptedSTT, ScriptedTTS), `on_message` returning a short sentence,
             and `on_call_end` keeping each call's record (its `events`) for the orchestrator.
  fake       `FakeTwilio` placing the calls at `--rate` a second and playing the caller.

Every call plays one scenario:
  answer     the agent starts a long greeting (`first_message`, ~5 s of speech);
  barge-in   the caller is silent for 1 s, then says tests/data/hello.wav (2.8 s) over it: the
             server clears the carrier's audio (a `clear` message);
  turn 1     after the VAD's 600 ms of end silence the STT's final transcript arrives at once,
             `on_message` answers "We open at nine." (0.5 s of speech), which plays in full;
  turn 2     0.5 s after that reply has played the caller says hello.wav again; a second reply;
  hang-up    once that reply has played.
A fresh server and fake are started for every N, and one warm-up call (not measured) runs
first. Fewer than `--min-calls` concurrent calls are repeated in waves (N = 1: five calls one
after another) so the figures rest on more than one or two samples.

Figures (times on CLOCK_MONOTONIC, which asyncio's loop.time() reads in every process, so
server and fake timestamps compare directly; the script checks this, see "clock" below):
  turn latency   the server's `turn` event gives `final_at` (loop time the final transcript
                 was taken) and `first_audio_at` (its reply's first audio queued to playout).
                 Total: final_at -> the first `media` frame of that reply received by the fake
                 (FakeCall.received), p50 / p99 / max. Targets p50 <= 2 ms, p99 <= 10 ms.
                 Split into in-server (final_to_first_audio: until the audio is queued) and
                 queued -> received at the fake (playout kick, socket, the fake's read).
  barge-in       caller speech onset: the first sample of the caller audio at or above
                 -40 dBFS (|x| >= 328); the fake sends it in a known 20 ms frame, and
                 FakeCall.sent gives the loop time that frame left the fake. Latency: that time
                 -> the `clear` received by the fake, p50 / p99 / max. Target p50 <= 150 ms.
                 The VAD needs ~120 ms of voiced audio first; replaying the same audio through
                 getpatter's VAD here gives the frame whose arrival decides it, so the latency
                 is split into audio the VAD needs (fixed) and deciding frame -> clear.
  after clear    media frames the fake received after the clear and before the first frame of
                 the next reply (the reply of that utterance's turn event). Must be 0. Cross-
                 check: the audio received from the reply's first frame to the next turn is
                 byte for byte the reply's TTS audio (no stray frame of the greeting inside).
  CPU            server and fake, from /proc/<pid>/stat sampled every 0.25 s by this process:
                 the average over the measured calls and the busiest 1 s; the fake is named
                 the bottleneck when its busiest second reached 90 % of a core. The fake's own
                 send lag (its 20 ms media sends behind their grid) shows its loop's health.
  loop health    in the server and the fake, how late a 10 ms asyncio.sleep wakes (a stalled
                 or saturated loop delays every hop of a turn), and the server's cyclic-GC
                 pauses (gc.callbacks), over the measured calls.

Exit status 1 when a target is missed. `--profile PATH` profiles the server over the measured
calls (pyinstrument if installed, else cProfile) and prints its hottest frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import multiprocessing as mp
import os
import re
import sys
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(HERE))  # _harness, here and in the spawned children

from _harness import (  # noqa: E402
    CALLER,
    NUMBER,
    Child,
    FakeTwilioSide,
    Handler,
    LogCounter,
    Profiling,
    ServerSide,
    Worker,
    busy_cores,
    machine_busy,
    machine_lines,
    quantiles,
)

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


# --- orchestrator ------------------------------------------------------------------------------


class CpuSampler(threading.Thread):
    """Reads /proc/<pid>/stat of the server and the fake, and /proc/stat, every `period`."""

    def __init__(self, pids: dict[str, int], period: float = 0.25) -> None:
        super().__init__(daemon=True, name="cpu-sampler")
        self.pids, self.period = pids, period
        self.samples: list[tuple[float, dict[str, float], tuple[float, float]]] = []
        self._stop_event = threading.Event()
        self._hz = os.sysconf("SC_CLK_TCK")

    def _read(self) -> tuple[float, dict[str, float], tuple[float, float]]:
        cpu = {}
        for name, pid in self.pids.items():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu[name] = (int(fields[11]) + int(fields[12])) / self._hz  # utime + stime
        return time.monotonic(), cpu, machine_busy()

    def run(self) -> None:
        while True:
            self.samples.append(self._read())
            if self._stop_event.wait(self.period):
                self.samples.append(self._read())
                return

    def stop(self) -> dict[str, Any]:
        """Average share of a core per process, its busiest 1 s, and the machine's busy cores."""
        self._stop_event.set()
        self.join()
        s = self.samples
        span = s[-1][0] - s[0][0]
        out: dict[str, Any] = {"span": span}
        step = max(1, round(1.0 / self.period))
        for name in self.pids:
            avg = (s[-1][1][name] - s[0][1][name]) / span
            peaks = [
                (s[i + step][1][name] - s[i][1][name]) / (s[i + step][0] - s[i][0])
                for i in range(len(s) - step)
            ]
            out[name] = (avg, max(peaks, default=avg))
        out["machine"] = busy_cores(s[0][2], s[-1][2])
        return out


def wait_quiet(limit: float, below: float = 0.15) -> tuple[float, float]:
    """Wait (up to `limit` s) until the machine's busy cores stay under `below` for 1 s;
    returns (seconds waited, busy cores in the last second)."""
    started = time.monotonic()
    while True:
        a = machine_busy()
        time.sleep(1.0)
        b = machine_busy()
        busy = busy_cores(a, b)
        waited = time.monotonic() - started
        if busy < below or waited >= limit:
            return waited, busy


def check_clocks(workers: list[Worker]) -> tuple[bool, list[str]]:
    """Are loop times comparable across processes? Each child's loop.time() must be the
    stdlib's time.monotonic() (clock_gettime(CLOCK_MONOTONIC)) and fall inside this
    process's time.monotonic() bracket around the request."""
    ok, lines = True, []
    for w in workers:
        widths, inside = [], 0
        info: dict[str, Any] = {}
        for _ in range(5):
            a = time.monotonic()
            info = w.call("clock")
            b = time.monotonic()
            widths.append(b - a)
            inside += a <= info["loop"] <= b
        good = info["stdlib_time"] and info["bracketed"] and inside == 5
        good &= "CLOCK_MONOTONIC" in info["implementation"]
        ok &= good
        lines.append(
            f"{w.kind}: {info['loop_class']}.time() is time.monotonic() = "
            f"{info['implementation']}: {'yes' if info['stdlib_time'] else 'NO'}; "
            f"its loop time fell inside this process's monotonic bracket {inside}/5 times "
            f"(bracket {1000 * min(widths):.2f}-{1000 * max(widths):.2f} ms)"
        )
    return ok, lines


@dataclass
class Result:
    n: int
    waves: int
    calls: int
    seconds: float
    turn_total: dict[str, float]
    turn_server: dict[str, float]
    turn_wire: dict[str, float]
    turn_speech_end: dict[str, float]
    barge: dict[str, float]
    barge_decide: dict[str, float]
    decide_after_onset: dict[str, float]
    stale_frames: int
    stale_calls: int
    stale_checked: int
    reply_exact: int
    reply_checked: int
    cpu: dict[str, Any]
    loop_lag: dict[str, dict[str, float]]  # server, fake: lateness of a 10 ms sleep
    gc_server: dict[str, float]  # the server's GC pauses: n, total, max, full, full_max (ms)
    fake_lag: dict[str, float]
    logs: dict[str, int]
    profile: str
    problems: list[str] = field(default_factory=list)

    @property
    def fake_bottleneck(self) -> bool:
        return self.cpu["fake"][1] >= FAKE_SATURATED

    def verdicts(self) -> list[tuple[str, bool, str]]:
        t, b = self.turn_total, self.barge
        return [
            ("turn latency p50", t["p50"] <= TURN_P50_MS, f"<= {TURN_P50_MS:g} ms"),
            ("turn latency p99", t["p99"] <= TURN_P99_MS, f"<= {TURN_P99_MS:g} ms"),
            ("barge-in p50", b["p50"] <= BARGE_P50_MS, f"<= {BARGE_P50_MS:g} ms"),
            ("frames after a clear", self.stale_frames == 0 and self.stale_checked > 0, "= 0"),
        ]


def analyse(
    calls: list[dict[str, Any]], records: list[dict[str, Any]], marks: SpeechMarks
) -> dict[str, Any]:
    """Join the fake's view of every call with the server's record of it."""
    from getpatter.core.audio import ulaw_encode
    from getpatter.testing.engines import speech_tone

    reply_audio = ulaw_encode(speech_tone(REPLY))
    by_id = {r["call_id"]: r for r in records}
    out: dict[str, list[float]] = {
        k: [] for k in ("total", "server", "wire", "speech_end", "barge", "decide", "decide_gap")
    }
    problems: list[str] = []
    stale = stale_calls = stale_checked = exact = checked = 0
    lag: list[np.ndarray] = []
    for c in calls:
        sid = c["call_sid"]
        problems += c["problems"] + [f"{sid}: fake error {e}" for e in c.get("errors", ())]
        if not sid:
            continue
        rec = by_id.get(sid)
        if rec is None:
            problems.append(f"{sid}: no record from the server")
            continue
        sent_t, rx_t = c["sent_t"], c["rx_t"]
        if len(sent_t) >= 2:
            grid = sent_t - FRAME_S * np.arange(len(sent_t))
            lag.append((grid - grid.min()) * 1000)
        if c["sent_chunks"][: marks.decide_chunk] != list(range(1, marks.decide_chunk + 1)):
            problems.append(f"{sid}: the fake's media chunks are not numbered 1, 2, ...")
            continue
        if not c["sent_as_given"]:
            problems.append(f"{sid}: the fake did not send the caller audio from chunk 1")
        turns = [e for e in rec["events"] if e["kind"] == "turn"]
        if len(turns) != 2 or len(c["clears"]) != 1:
            at = ", ".join(f"+{1000 * (t - c['clears'][0]):.1f}" for t in c["clears"])
            problems.append(
                f"{sid}: {len(turns)} turn events and {len(c['clears'])} clears (expected 2 and "
                f"1; clears at {at or '-'} ms)"
            )
        firsts = []  # index in rx of each turn's first reply frame
        for e in turns:
            i = int(np.searchsorted(rx_t, e["first_audio_at"], side="right"))
            firsts.append(i)
            if i >= len(rx_t):
                problems.append(f"{sid}: no agent frame after a turn's first_audio_at")
                continue
            out["total"].append(1000 * (rx_t[i] - e["final_at"]))
            out["server"].append(1000 * e["final_to_first_audio"])
            out["wire"].append(1000 * (rx_t[i] - e["first_audio_at"]))
            if "speech_end_to_first_audio" in e:
                out["speech_end"].append(1000 * e["speech_end_to_first_audio"])
        if c["clears"]:
            clear = c["clears"][0]
            onset_t = sent_t[marks.onset_chunk - 1]
            decide_t = sent_t[marks.decide_chunk - 1]
            out["barge"].append(1000 * (clear - onset_t))
            out["decide"].append(1000 * (clear - decide_t))
            out["decide_gap"].append(1000 * (decide_t - onset_t))
            if turns and firsts[0] < len(rx_t):
                after = int(np.searchsorted(rx_t, clear, side="right"))
                count = max(0, firsts[0] - after)
                stale += count
                stale_calls += count > 0
                stale_checked += 1
                # cross-check: reply 1 as received is exactly its TTS audio
                end = len(rx_t)
                if len(turns) > 1:
                    end = int(np.searchsorted(rx_t, turns[1]["final_at"], side="left"))
                got = b"".join(c["rx_audio"][firsts[0] : end])
                checked += 1
                exact += got == reply_audio
    return {
        "q": {k: quantiles(v) for k, v in out.items()},
        "stale": stale,
        "stale_calls": stale_calls,
        "stale_checked": stale_checked,
        "exact": exact,
        "checked": checked,
        "fake_lag": quantiles(np.concatenate(lag) if lag else []),
        "problems": problems,
    }


def run_round(ctx: Any, n: int, args: argparse.Namespace, clock_lines: list[str]) -> Result:
    """One N: fresh fake and server, a warm-up call, then the measured waves of n calls."""
    first, again = caller_audio()
    marks = speech_marks(first)
    fake = Worker(ctx, CHILD, "fake")
    server: Worker | None = None
    problems: list[str] = []
    try:
        creds = fake.call("start")
        server = Worker(ctx, CHILD, "server")
        keys = ("account_sid", "auth_token", "base_url")
        up = server.call("start", timeout=60, **{k: creds[k] for k in keys})
        fake.call("route", public_host=up["public_host"], local=f"127.0.0.1:{up['port']}")
        print(f"   server pid {up['pid']}, fake pid {creds['pid']}", flush=True)
        if not clock_lines:
            ok, lines = check_clocks([server, fake])
            clock_lines += lines
            if not ok:
                raise RuntimeError("loop clocks are not comparable:\n" + "\n".join(lines))

        # One warm-up call (first-call imports and allocations), not measured.
        warm = fake.call("run", timeout=60, n=1, rate=args.rate, first=first, again=again)
        server.call("records", timeout=30, n=1, limit=20)
        problems += [f"warm-up: {p}" for c in warm["calls"] for p in c["problems"]]
        fake.call("logs")
        server.call("logs")

        waves = max(1, math.ceil(args.min_calls / n))
        limit = n / args.rate + 60
        sampler = CpuSampler({"server": up["pid"], "fake": creds["pid"]})
        if args.profile:
            server.call("profile")
        server.call("health", run=True)
        fake.call("health", run=True)
        sampler.start()
        calls: list[dict[str, Any]] = []
        started = time.monotonic()
        for _ in range(waves):
            out = fake.call("run", timeout=limit, n=n, rate=args.rate, first=first, again=again)
            calls += out["calls"]
            problems += out["problems"]
        seconds = time.monotonic() - started
        cpu = sampler.stop()
        health = {
            "server": server.call("health", run=False),
            "fake": fake.call("health", run=False),
        }
        profile = ""
        if args.profile:
            path = f"{args.profile}.{n}"
            profile = f"server profile over the measured calls, saved to {path}:\n"
            profile += server.call("profile", timeout=60, path=path)
        records = server.call("records", timeout=40, n=len(calls), limit=30)
        logs = {**fake.call("logs"), **server.call("logs")}
    finally:
        if server is not None:
            server.close()
        fake.close()

    a = analyse(calls, records, marks)
    q = a["q"]
    return Result(
        n=n,
        waves=waves,
        calls=len(calls),
        seconds=seconds,
        turn_total=q["total"],
        turn_server=q["server"],
        turn_wire=q["wire"],
        turn_speech_end=q["speech_end"],
        barge=q["barge"],
        barge_decide=q["decide"],
        decide_after_onset=q["decide_gap"],
        stale_frames=a["stale"],
        stale_calls=a["stale_calls"],
        stale_checked=a["stale_checked"],
        reply_exact=a["exact"],
        reply_checked=a["checked"],
        cpu=cpu,
        loop_lag={k: quantiles(h["lag"]) for k, h in health.items()},
        gc_server=health["server"]["gc"],
        fake_lag=a["fake_lag"],
        logs=logs,
        profile=profile,
        problems=problems + a["problems"],
    )


# --- report ------------------------------------------------------------------------------------


def machine_facts(args: argparse.Namespace) -> list[str]:
    return [
        *machine_lines(),
        "setup     server: 1 process (pipeline agent, ScriptedSTT + ScriptedTTS, on_message); "
        f"fake Twilio: 1 process; asyncio loops; calls placed at {args.rate:g}/s; "
        f"at least {args.min_calls} calls per N (in waves); one warm-up call per N; loopback",
    ]


def fmt(q: dict[str, float], width: int = 7) -> str:
    return f"{q['p50']:{width}.2f} / {q['p99']:{width}.2f} / {q['max']:{width}.2f} ms"


def report(
    results: list[Result], args: argparse.Namespace, marks: SpeechMarks, clock: list[str]
) -> bool:
    print()
    print(
        f"caller audio: speech onset at sample {marks.onset_sample} "
        f"({1000 * marks.onset_sample / 8000:.1f} ms, first |x| >= {ONSET_DBFS:g} dBFS), sent in "
        f"media chunk {marks.onset_chunk}; the VAD starts speech on chunk {marks.decide_chunk} "
        f"(audio up to {1000 * marks.decide_audio_s:.0f} ms, "
        f"{1000 * marks.decide_audio_s - 1000 * marks.onset_sample / 8000:.0f} ms after the "
        f"onset) and ends it at {1000 * marks.end_audio_s:.0f} ms"
    )
    print()
    ok = True
    for r in results:
        lines = [
            f"== N = {r.n} concurrent calls: {r.calls} calls in {r.waves} wave(s), "
            f"{r.turn_total['n']} turns, {r.barge['n']} barge-ins, {r.seconds:.1f} s",
            "                                               p50 /     p99 /     max",
            f"  turn latency   final -> 1st frame at fake {fmt(r.turn_total)}",
            f"    in server    final -> audio queued      {fmt(r.turn_server)}",
            f"    after        queued -> frame at fake    {fmt(r.turn_wire)}",
            f"    (server's    speech end -> queued       {fmt(r.turn_speech_end)})",
            f"  barge-in       onset frame -> clear       {fmt(r.barge)}",
            f"    VAD's audio  onset frame -> deciding fr {fmt(r.decide_after_onset)}",
            f"    after        deciding frame -> clear    {fmt(r.barge_decide)}",
            f"  after a clear  {r.stale_frames} agent frames before the next reply "
            f"({r.stale_calls} of {r.stale_checked} calls had any); the reply arrived byte-exact "
            f"in {r.reply_exact} of {r.reply_checked} calls",
            f"  CPU            server {100 * r.cpu['server'][0]:.0f} % of a core on average, "
            f"{100 * r.cpu['server'][1]:.0f} % in its busiest second; fake "
            f"{100 * r.cpu['fake'][0]:.0f} % / {100 * r.cpu['fake'][1]:.0f} %; machine "
            f"{r.cpu['machine']:.2f} of {os.cpu_count()} cores busy",
            f"  loop lag       server (10 ms sleep late) {fmt(r.loop_lag['server'])}",
            f"                 fake                      {fmt(r.loop_lag['fake'])}",
            f"  server GC      {r.gc_server['n']} collections, {r.gc_server['total']:.0f} ms in "
            f"all, longest {r.gc_server['max']:.1f} ms; {r.gc_server['full']} full "
            f"(longest {r.gc_server['full_max']:.1f} ms)",
            f"  fake's sends   lag behind their 20 ms grid {fmt(r.fake_lag)}",
        ]
        for name, passed, target in r.verdicts():
            lines.append(f"  {'PASS' if passed else 'FAIL'}  {name} {target}")
            ok &= passed
        for what, count in sorted(r.logs.items()):
            lines.append(f"  log {count:5} x {what}")
        if r.fake_bottleneck:
            lines.append(
                f"  NOTE the fake was the bottleneck ({100 * r.cpu['fake'][1]:.0f} % of a core "
                "in its busiest second): its timestamps are late at this N"
            )
        other = r.cpu["machine"] - r.cpu["server"][0] - r.cpu["fake"][0]
        if other > 0.15:
            lines.append(
                f"  NOTE other processes used {100 * other:.0f} % of a core: the figures may "
                "be disturbed"
            )
        shown = r.problems[:10]
        lines += [f"  PROBLEM {p}" for p in shown]
        if len(r.problems) > len(shown):
            lines.append(f"  PROBLEM ... and {len(r.problems) - len(shown)} more")
        print("\n".join(lines) + "\n")
        if r.profile:
            print(r.profile + "\n")

    for name, target in (
        ("turn latency p50", f"<= {TURN_P50_MS:g} ms"),
        ("turn latency p99", f"<= {TURN_P99_MS:g} ms"),
        ("barge-in p50", f"<= {BARGE_P50_MS:g} ms"),
        ("frames after a clear", "= 0"),
    ):
        per_n = [(r.n, dict((v[0], v[1]) for v in r.verdicts())[name]) for r in results]
        good = all(p for _, p in per_n)
        detail = ", ".join(f"N={n}: {'ok' if p else 'MISSED'}" for n, p in per_n)
        print(f"VERDICT {name} {target}: {'PASS' if good else 'FAIL'} ({detail})")
    healthy = not any(r.problems for r in results)
    if not healthy:
        print("VERDICT run health: FAIL (see the PROBLEM lines)")
    print()
    for line in machine_facts(args):
        print(line)
    for line in clock:
        print(f"clock     {line}")
    return ok and healthy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--calls", type=int, nargs="+", default=[1, 50, 200], metavar="N")
    p.add_argument("--rate", type=float, default=50.0, help="calls placed per second")
    p.add_argument(
        "--min-calls",
        type=int,
        default=5,
        help="at least this many calls per N: smaller N run in waves, one after another",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        metavar="S",
        help="before each N, wait up to S seconds for other processes to leave the CPUs idle",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: N = 1 and 5, one wave")
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="profile the server over the measured calls (pyinstrument if installed, else "
        "cProfile), save to PATH.<N>; inflates the latencies",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.min_calls = [1, 5], 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = mp.get_context("spawn")  # no event loop or sockets inherited by the children
    for line in machine_facts(args):
        print(line)
    results: list[Result] = []
    clock: list[str] = []
    started = time.monotonic()
    for n in args.calls:
        t = time.monotonic()
        waited, busy = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else (0.0, 0.0)
        quiet = "quiet" if busy < 0.15 else "STILL BUSY"
        print(
            f"-- N = {n}: starting (machine {quiet}: {busy:.2f} cores busy after waiting "
            f"{waited:.0f} s)",
            flush=True,
        )
        results.append(run_round(ctx, n, args, clock))
        print(f"-- N = {n}: done in {time.monotonic() - t:.1f} s", flush=True)
    ok = report(results, args, speech_marks(caller_audio()[0]), clock)
    print(f"run time  {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

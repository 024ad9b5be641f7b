"""Load benchmark: N concurrent Twilio calls against the getpatter server, echoing audio back.

Run: .venv/bin/python benchmarks/load.py            N = 10, 100, 300; 10 s windows (~1.5 min)
     .venv/bin/python benchmarks/load.py --quick    N = 5, 3 s window: a smoke run (~10 s)
     .venv/bin/python benchmarks/load.py --calls 50 200 --seconds 20 --fakes 2
     .venv/bin/python benchmarks/load.py --engine both --calls 10 100 --seconds 10 --repeat 3

Processes (all on 127.0.0.1):
  this one   the orchestrator: spawns the others, marks the measuring window, reads /proc and
             prints. It sleeps while the calls run.
  server     `Patter.serve(agent(engine=EchoEngine()), host="127.0.0.1", port=0)`: the process
             measured. EchoEngine plays each caller frame straight back, so every call has
             50 inbound and 50 outbound media messages a second, plus marks and their echoes.
  fake       `FakeTwilio` (the testing fake of the Twilio network) placing the inbound calls at
             `--rate` calls/s, streaming quiet noise and recording when each agent frame
             arrived. `--fakes 2` splits the calls across two fake processes (same account).
  model      with `--engine realtime`: `FakeRealtime` (the testing fake of the OpenAI Realtime
             API); the server then runs `OpenAIRealtime(voice="marin")` pointed at it, and the
             callers say a 0.4 s loud burst every 4 s, which the fake's energy VAD takes as a
             turn and answers with 2.7 s of audio. `--engine both` runs echo then realtime at
             each N and judges realtime / echo, CPU per call-second and RSS per call, <= 1.5x.
A fresh server and fresh fakes are started for every N, so RSS and CPU of one N do not leak
into the next. The measuring window opens `--warmup` seconds after every call is streaming.

Two groups of calls: a plain echo cannot build the 100 ms lead the playout keeps (its audio
arrives in real time, each frame is sent at the first tick after it came in), so half the
calls (`--prime-share`) get `--prime-ms` of silence queued ahead of the echo through the
public `CallSession.play`: their playout then runs as it does behind a TTS that is ahead of
real time, the lead full and audio always queued. That "lead full" group is the one judged.

Figures:
  CPU        server process CPU (user+sys, time.process_time() in the server) over the window
             / (N x window): "% of one core per active call". Target <= 0.25 %.
  RSS        (server VmRSS at the end of the window - VmRSS before the calls) / N, in KiB. The
             baseline is taken after two warm-up calls, so one-off imports are not counted.
  pacing     at the fake, |inter-arrival - 20 ms| of consecutive agent `media` frames of each
             call within the window, p50 / p99 / max, and how far frames lag behind a 20 ms
             grid. Target: p99 <= 10 ms at the largest N, lead-full calls.
             The fake stamps a frame when its event loop reads it, so a busy fake inflates
             the figure: its own CPU and the jitter of its own 20 ms sends are printed, and a
             fake using >= 90 % of a core is named as the bottleneck.
  server     the server's own view: Playout.stats.send_lateness over the window (how long
             after the carrier's buffer fell below the lead each frame left; with the lead
             full that is about one tick, 20 ms, and its spread is the server's own send
             jitter; with a plain echo ~80-100 ms, meaningless), the share of lead-full
             frames sent in the same tick as the frame before, underruns, and scheduler
             ticks achieved against the 50 a second it aims for.
  msg/s      media + mark messages through the server's sockets, both directions.
  log        warnings the server and the fake logged, counted by phase (ramp, window, hangup).

The machine is read from /proc/stat over the window too: CPU used by anything but the server
and the fakes is printed, and flagged when it could have disturbed the figures. Exit status 1
when a target is missed. `--profile PATH` profiles the server over each window.

The fake's cyclic GC is off (it keeps every message it sent or received; collections of that
heap would stall its loop and distort the timestamps it takes). The server is left as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing as mp
import os
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout
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
    all_call,
    busy_cores,
    machine_busy,
    machine_lines,
    quantiles,
    rss_kib,
)

FRAME_S = 0.020
CPU_TARGET = 0.25  # % of one core per active call
JITTER_TARGET_MS = 10.0
FAKE_SATURATED = 0.90  # share of one core above which the fake is called the bottleneck
RATIO_TARGET = 1.5  # realtime / echo, CPU per call and RSS per call (--engine both)
MODEL_KEY = "sk-bench-fake-realtime"
# Realtime callers: every PERIOD_S a SPEECH_S burst of loud noise (well over the fake model's
# energy VAD threshold, RMS 500), the rest quiet noise (RMS 300); the model's turn detection
# ends the turn SILENCE_S after the burst and it answers with REPLY_S of audio, which ends
# before the next burst (no barge-in).
PERIOD_S, SPEECH_S, SILENCE_S, REPLY_S = 4.0, 0.4, 0.5, 2.7
SECONDS_PER_CHAR = 0.06  # the fake's speaking rate (its default)
MAX_GAP_S = 0.2  # realtime pacing: longer gaps between agent frames are pauses between replies


# --- workers (child processes) ---------------------------------------------------------------


class _LogCounter(LogCounter):
    """Counts warnings by logger and message (up to its first colon) for the report; errors
    are printed as well."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().split(":", 1)[0][:80]
        self.counts[f"{record.levelname} {record.name}: {msg}"] += 1
        if record.levelno >= logging.ERROR:
            print(f"[{self.kind}] {record.levelname} {record.name}: {record.getMessage()}")


def _cpus_for(kind: str) -> set[int] | None:
    """The server gets a core to itself, the fakes share the others (None: no pinning).

    Unpinned, the figures for the server depend on what the fakes do next to it: the realtime
    rounds run a third busy process (the fake model), and the server's CPU time per unit of
    work grows with the contention, which would be charged to the engine."""
    if os.environ.get("LOAD_NO_PIN") or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]} if kind == "server" else set(cpus[1:])


def _handlers(kind: str, args: dict[str, Any]) -> dict[str, Handler]:
    """A child's commands: the server's, a fake Twilio's (`args`: its index) or the model's."""
    side: _ServerSide | _FakeSide | _ModelSide
    if kind == "server":
        side = _ServerSide()
    elif kind == "model":
        side = _ModelSide()
    else:
        side = _FakeSide(**args)
    return side.handlers()


CHILD = Child(handlers=_handlers, log_counter=_LogCounter, cpus=_cpus_for)


class _ServerSide(ServerSide):
    """The process under test: a Patter serving EchoEngine, or OpenAIRealtime on the fake."""

    def __init__(self) -> None:
        super().__init__()
        self.profiler = Profiling(lines=40, span="the window")
        self.memory_base: Any = None

    def handlers(self) -> dict[str, Handler]:
        return {
            "start": self.start,
            "wait_live": self.wait_live,
            "wait_idle": self.wait_idle,
            "mark": self.mark,
            "prime": self.prime,
            "lateness": self.lateness,
            "gc": self.collect,
            "profile": self.profiler.command,
            "memory": self.memory,
            "exit": self.exit,
        }

    async def memory(self, stop: bool = False, top: int = 25) -> str:
        """Start tracing allocations (tracemalloc), or stop and return what the calls hold
        now that they did not at the start, by source line."""
        if not stop:
            tracemalloc.start(1)
            self.memory_base = tracemalloc.take_snapshot()
            return ""
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        calls = max(1, len(self._sessions()))
        diff = snap.compare_to(self.memory_base, "lineno")
        total = sum(d.size_diff for d in diff)
        lines = [f"tracemalloc: {total / 1024 / calls:.1f} KiB a call held since the baseline"]
        for d in diff[:top]:
            frame = d.traceback[0]
            where = "/".join(Path(frame.filename).parts[-2:])
            lines.append(
                f"  {d.size_diff / 1024 / calls:8.2f} KiB/call {d.count_diff / calls:7.1f} "
                f"blocks/call  {where}:{frame.lineno}"
            )
        by_file = snap.compare_to(self.memory_base, "filename")
        lines.append("  by file:")
        for d in by_file[:top]:
            where = "/".join(Path(d.traceback[0].filename).parts[-2:])
            lines.append(f"  {d.size_diff / 1024 / calls:8.2f} KiB/call  {where}")
        return "\n".join(lines)

    async def start(
        self, account_sid: str, auth_token: str, base_url: str, model: dict[str, str] | None
    ) -> dict[str, Any]:
        from getpatter.testing.engines import EchoEngine

        engine: Any
        if model is None:
            engine = EchoEngine()
        else:
            from getpatter.plugins.openai.realtime import OpenAIRealtime

            engine = OpenAIRealtime(
                api_key=MODEL_KEY,
                voice="marin",
                base_url=model["base_url"],
                websocket_base_url=model["ws_url"],
            )

        agent = self.patter(account_sid, auth_token, base_url).agent(engine=engine)
        return await self.serve(agent)

    def _sessions(self) -> list[Any]:
        server = self.phone.server
        return list(server.sessions.values()) if server is not None else []

    async def wait_live(self, n: int, limit: float) -> int:
        """Until n calls have sent audio back (their echo is running)."""
        deadline = time.monotonic() + limit
        live = 0
        while time.monotonic() < deadline:
            live = sum(
                1
                for s in self._sessions()
                if s.state == "live" and s.playout is not None and s.playout.stats.frames_sent
            )
            if live >= n:
                break
            await asyncio.sleep(0.05)
        return live

    async def wait_idle(self, limit: float) -> int:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self._sessions():
                break
            await asyncio.sleep(0.05)
        return len(self._sessions())

    async def mark(self) -> dict[str, Any]:
        """A snapshot for the window's edges: CPU, loop time and the playout counters."""
        cpu, t, times = time.process_time(), asyncio.get_running_loop().time(), os.times()
        sessions = self._sessions()
        stats = [s.playout.stats for s in sessions if s.playout is not None]
        scheduler = getattr(self.phone.server, "_scheduler", None)
        return {
            "cpu": cpu,
            "t": t,
            "user": times.user,
            "sys": times.system,
            "calls": len(sessions),
            "frames": sum(st.frames_sent for st in stats),
            "marks": sum(st.marks_sent for st in stats),
            "underruns": sum(st.underruns for st in stats),
            "stalls": sum(st.stalls for st in stats),
            "ticks": getattr(scheduler, "ticks", 0),
            "per_call": {
                s.key: (s.playout.stats.frames_sent, s.playout.stats.underruns)
                for s in sessions
                if s.playout is not None
            },
        }

    async def prime(self, share: float, ms: int) -> list[str]:
        """Queue `ms` of silence ahead of the echo on `share` of the calls (public
        CallSession.play): their playout then runs as with a TTS ahead of real time, the
        lead full and audio always queued. Returns their call ids."""
        if share <= 0:
            return []
        sessions = sorted(self._sessions(), key=lambda s: s.call_id)
        chosen = [s for i, s in enumerate(sessions) if int((i + 1) * share) > int(i * share)]
        for s in chosen:
            s.play(b"\xff" * (8 * ms))
        return [s.call_id for s in chosen]

    async def lateness(
        self, since: dict[str, tuple[int, int]], primed: list[str]
    ) -> dict[str, Any]:
        """send_lateness entries appended since the `since` snapshot, by group, in ms. Every
        frame sent appends one, except those that restart after an underrun."""
        values: dict[str, list[float]] = {"lead": [], "echo": []}
        total = 0
        lead = set(primed)
        for s in self._sessions():
            if s.playout is None or s.key not in since:
                continue
            st = s.playout.stats
            total += len(st.send_lateness)
            frames, underruns = since[s.key]
            fresh = min(len(st.send_lateness), st.frames_sent - frames - (st.underruns - underruns))
            if fresh > 0:
                group = values["lead" if s.call_id in lead else "echo"]
                group.extend(list(st.send_lateness)[-fresh:])
        groups = {k: quantiles(np.asarray(v) * 1000) for k, v in values.items()}
        # With the lead full, a frame is due when the carrier holds < lead: its lateness is
        # ~one tick (20 ms); a second frame sent in the same tick shows as ~0.
        lead_ms = np.asarray(values["lead"])
        double = float(np.mean(lead_ms < 0.010)) if len(lead_ms) else float("nan")
        return {"ms": groups, "entries": total, "double": double}

    async def collect(self) -> None:
        gc.collect()


class _FakeSide(FakeTwilioSide):
    """One FakeTwilio process: places calls, stamps what comes back."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index
        self.calls: list[Any] = []
        self.audio = b""
        self.pattern = ""

    def handlers(self) -> dict[str, Handler]:
        return {
            "start": self.start,
            "route": self.route,
            "place": self.place,
            "mark": self.mark,
            "pacing": self.pacing,
            "hangup": self.hangup,
            "exit": self.exit,
        }

    async def place(
        self, n: int, rate: float, audio_seconds: float, pattern: str = "noise"
    ) -> dict[str, Any]:
        """Place n calls, `rate` a second; returns once every one is streaming (or failed).
        `pattern`: "noise" (quiet throughout) or "bursts" (a loud burst every PERIOD_S)."""
        from getpatter.core.audio import ulaw_encode

        if len(self.audio) < audio_seconds * 8000 or pattern != self.pattern:
            rng = np.random.default_rng(1234 + self.index)
            samples = int(audio_seconds * 8000)
            sigma = np.full(samples, 300.0)
            if pattern == "bursts":
                t = np.arange(samples) / 8000
                sigma[(t % PERIOD_S) < SPEECH_S] = 3000.0
            noise = (rng.normal(0, 1, samples) * sigma).clip(-32768, 32767)
            self.audio, self.pattern = ulaw_encode(noise.astype(np.int16)), pattern
        started = time.monotonic()
        tasks = []
        for i in range(n):
            coro = self.fake.place_call(from_=CALLER, to=NUMBER, audio=self.audio)
            tasks.append(asyncio.create_task(coro))
            if i + 1 < n:
                await asyncio.sleep(1 / rate)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        calls = [r for r in results if not isinstance(r, BaseException)]
        self.calls.extend(calls)
        streaming = sum(1 for c in calls if c.stream_open)
        problems = [f"{c.call_sid}: {c.status} {c.errors}" for c in calls if not c.stream_open]
        return {
            "streaming": streaming,
            "errors": (errors + problems)[:5],
            "seconds": time.monotonic() - started,
        }

    async def mark(self) -> dict[str, Any]:
        cpu, t = time.process_time(), asyncio.get_running_loop().time()
        return {
            "cpu": cpu,
            "t": t,
            "sent": sum(len(c.sent) for c in self.calls),
            "received": sum(len(c.received) for c in self.calls),
            "open": sum(1 for c in self.calls if c.stream_open),
        }

    async def pacing(
        self, t0: float, t1: float, primed: list[str], max_gap: float = 0.0
    ) -> dict[str, np.ndarray]:
        """Over [t0, t1], in ms: |inter-arrival - 20 ms| of agent media and the lag behind a
        20 ms grid, for primed ("lead") and plain echo calls; the jitter of our own sends.
        `max_gap` > 0: agent audio comes in runs (replies), split at gaps above it, each run
        judged on its own (the pauses between replies are not jitter)."""
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("lead_jitter", "lead_lag", "echo_jitter", "echo_lag", "own")
        }
        lead = set(primed)
        for c in self.calls:
            group = "lead" if c.call_sid in lead else "echo"
            rx = np.array([t for t, ev, _ in c.received if ev == "media" and t0 <= t <= t1])
            runs = [rx]
            if max_gap > 0 and len(rx) >= 2:
                runs = np.split(rx, np.flatnonzero(np.diff(rx) > max_gap) + 1)
            for run in runs:
                if len(run) >= 2:
                    parts[f"{group}_jitter"].append(np.abs(np.diff(run) - FRAME_S))
                    # lag behind a perfect 20 ms grid anchored on the run's earliest frame
                    grid = run - FRAME_S * np.arange(len(run))
                    parts[f"{group}_lag"].append(grid - grid.min())
            tx = np.array([t for t, ev, _ in c.sent if ev == "media" and t0 <= t <= t1])
            if len(tx) >= 2:
                parts["own"].append(np.abs(np.diff(tx) - FRAME_S))
        return {k: np.concatenate(v) * 1000 if v else np.zeros(0) for k, v in parts.items()}

    async def hangup(self, limit: float) -> dict[str, Any]:
        calls, self.calls = self.calls, []
        results = await asyncio.gather(
            *(asyncio.wait_for(c.hangup(), limit) for c in calls), return_exceptions=True
        )
        failed = sum(1 for r in results if isinstance(r, BaseException))
        for c in calls:
            self.forget(c.call_sid)
        return {"hung_up": len(calls) - failed, "failed": failed}


class _ModelSide:
    """One FakeRealtime process: the OpenAI Realtime API the realtime engine talks to. Every
    caller turn gets the same reply, REPLY_S of audio."""

    def __init__(self) -> None:
        self.fake: Any = None

    def handlers(self) -> dict[str, Handler]:
        return {"start": self.start, "mark": self.mark, "exit": self.exit}

    async def start(self) -> dict[str, Any]:
        from getpatter.testing.openai_realtime import FakeRealtime

        words = "Sure, I can help you with that booking today. " * 10
        reply = words[: int(REPLY_S / SECONDS_PER_CHAR)].strip()
        self.fake = FakeRealtime(MODEL_KEY, default_reply=reply, seconds_per_char=SECONDS_PER_CHAR)
        await self.fake.start()
        return {"base_url": self.fake.base_url, "ws_url": self.fake.ws_url, "pid": os.getpid()}

    async def mark(self) -> dict[str, Any]:
        sessions = self.fake.sessions
        self.fake.received.clear()  # every client event is kept: do not let it grow
        return {
            "cpu": time.process_time(),
            "t": asyncio.get_running_loop().time(),
            "sessions": len(sessions),
            "live": len(self.fake.live_sessions),
        }

    async def exit(self) -> None:
        if self.fake is not None:
            await self.fake.stop()


# --- orchestrator ------------------------------------------------------------------------------


@dataclass
class Result:
    engine: str  # "echo" or "realtime"
    n: int
    window: float
    streaming: int
    ramp_s: float
    primed: int  # calls whose playout was primed (lead full)
    server_cpu: float  # share of one core
    server_sys: float  # share of it spent in the kernel
    fake_cpu: list[float]  # share of one core, per fake process
    machine_cpu: float  # cores busy, whole machine
    rss_base: int
    rss_loaded: int
    msgs_in: float  # per second, fake -> server
    msgs_out: float  # per second, server -> fake
    frames_out: float  # per second, the server's own count of media frames sent
    pacing: dict[str, dict[str, float]]  # lead_jitter, lead_lag, echo_jitter, echo_lag, own
    lateness: dict[str, dict[str, float]]  # lead, echo
    lateness_entries: int
    underruns: int
    stalls: int
    ticks_per_s: float
    double_sends: float  # share of lead-full frames sent in the same tick as the one before
    logs: dict[str, dict[str, int]]  # phase -> warning -> count
    profile: str
    problems: list[str]
    model_cpu: float = 0.0  # share of one core, the fake model's process (realtime)
    model_sessions: int = 0  # WebSocket sessions the fake model saw (realtime)

    @property
    def cpu_per_call(self) -> float:
        return 100 * self.server_cpu / self.n

    @property
    def rss_per_call(self) -> float:
        return (self.rss_loaded - self.rss_base) / self.n

    @property
    def other_cpu(self) -> float:
        """Cores busy with anything but the server and the fakes during the window."""
        return max(0.0, self.machine_cpu - self.server_cpu - sum(self.fake_cpu) - self.model_cpu)

    @property
    def fake_bottleneck(self) -> bool:
        return max(self.fake_cpu) >= FAKE_SATURATED

    @property
    def verdict_jitter(self) -> dict[str, float]:
        """The pacing figure judged: calls with the lead full, else plain echo calls."""
        lead = self.pacing["lead_jitter"]
        return lead if lead["n"] else self.pacing["echo_jitter"]


def _rates(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> float:
    return sum((y[key] - x[key]) / (y["t"] - x["t"]) for x, y in zip(a, b, strict=True))


def _logs(workers: list[Worker]) -> dict[str, int]:
    """Warnings logged by the workers since the last call, "[kind] level logger: message"."""
    counts: Counter[str] = Counter()
    for w in workers:
        counts.update({f"[{w.kind}] {k}": v for k, v in w.call("logs").items()})
    return dict(counts)


def run_round(ctx: Any, n: int, args: argparse.Namespace, engine: str = "echo") -> Result:
    """One N: fresh fake(s), fake model (realtime) and server, warm-up, ramp, window, hang
    up, stop."""
    realtime = engine == "realtime"
    pattern = "bursts" if realtime else "noise"
    fakes = [Worker(ctx, CHILD, "fake", index=i) for i in range(args.fakes)]
    server: Worker | None = None
    model: Worker | None = None
    problems: list[str] = []
    model_urls = None
    try:
        creds = fakes[0].call("start", account_sid=None, auth_token=None)
        for f in fakes[1:]:
            f.call("start", account_sid=creds["account_sid"], auth_token=creds["auth_token"])
        if realtime:
            model = Worker(ctx, CHILD, "model")
            model_urls = model.call("start", timeout=30)
        server = Worker(ctx, CHILD, "server")
        keys = ("account_sid", "auth_token", "base_url")
        up = server.call(
            "start",
            timeout=60,
            model=None
            if model_urls is None
            else {k: model_urls[k] for k in ("base_url", "ws_url")},
            **{k: creds[k] for k in keys},
        )
        all_call(fakes, "route", public_host=up["public_host"], local=f"127.0.0.1:{up['port']}")
        pid = up["pid"]
        fake_pids = " ".join(str(f.proc.pid) for f in fakes)
        model_pid = f", fake model pid {model.proc.pid}" if model is not None else ""
        print(f"   server pid {pid}, fake pid(s) {fake_pids}{model_pid}", flush=True)
        others = [*fakes, *([model] if model is not None else [])]

        # Two warm-up calls (first-call imports and allocations), then the baseline.
        fakes[0].call(
            "place", timeout=30, n=2, rate=args.rate, audio_seconds=PERIOD_S, pattern=pattern
        )
        server.call("wait_live", timeout=15, n=2, limit=10)
        time.sleep(1.0)
        fakes[0].call("hangup", timeout=20, limit=10)
        server.call("wait_idle", timeout=20, limit=10)
        server.call("gc")
        time.sleep(0.5)
        rss_base = rss_kib(pid)
        if args.memory:
            server.call("memory")

        # Ramp: n calls at `rate` a second in total, split across the fakes.
        shares = [n // len(fakes) + (i < n % len(fakes)) for i in range(len(fakes))]
        ramp = n / args.rate
        audio_seconds = ramp + args.warmup + args.seconds + 3
        active = [f for f, k in zip(fakes, shares, strict=True) if k]
        for f, k in zip(active, shares, strict=False):
            f.send(
                "place",
                n=k,
                rate=args.rate / len(active),
                audio_seconds=audio_seconds,
                pattern=pattern,
            )
        placed = [f.reply(ramp + 60) for f in active]
        streaming = sum(p["streaming"] for p in placed)
        problems += [e for p in placed for e in p["errors"]]
        ramp_s = max(p["seconds"] for p in placed)
        live = server.call("wait_live", timeout=40, n=streaming, limit=30)
        if live < n:
            problems.append(f"only {live} of {n} calls live at the server")
        # Realtime: the model's replies keep the lead full by themselves (it sends audio ahead
        # of real time), and silence queued through play() would sit under its barge-in.
        share = 0.0 if realtime else args.prime_share
        primed = server.call("prime", share=share, ms=args.prime_ms)
        time.sleep(args.warmup)
        logs = {"ramp": _logs([server, *others])}

        # The measuring window.
        if args.profile:
            server.call("profile")
        m0 = machine_busy()
        s0 = server.call("mark")
        f0 = all_call(active, "mark")
        d0 = model.call("mark") if model is not None else None
        time.sleep(args.seconds)
        s1 = server.call("mark")
        f1 = all_call(active, "mark")
        d1 = model.call("mark") if model is not None else None
        m1 = machine_busy()
        profile = ""
        if args.profile:
            path = f"{args.profile}.{engine}.{n}"
            profile = f"server profile over the window, saved to {path}:\n"
            profile += server.call("profile", timeout=60, path=path)
        logs["window"] = _logs([server, *others])
        rss_loaded = rss_kib(pid)
        if args.memory:
            profile += server.call("memory", timeout=120, stop=True) + "\n"
        late = server.call("lateness", timeout=60, since=s0["per_call"], primed=primed)
        pacing = [
            f.call(
                "pacing",
                timeout=60,
                t0=a["t"],
                t1=b["t"],
                primed=primed,
                max_gap=MAX_GAP_S if realtime else 0.0,
            )
            for f, a, b in zip(active, f0, f1, strict=True)
        ]
        still_open = sum(b["open"] for b in f1)
        if still_open < n or s1["calls"] < n:
            problems.append(
                f"calls dropped in the window: {still_open} streams open, server has {s1['calls']}"
            )

        # Tear down: the callers hang up, the server empties, everything stops.
        all_call(active, "hangup", timeout=60, limit=20)
        left = server.call("wait_idle", timeout=40, limit=30)
        if left:
            problems.append(f"{left} calls still open at the server after the hangups")
        logs["hangup"] = _logs([server, *others])
    finally:
        if server is not None:
            server.close()
        for f in fakes:
            f.close()
        if model is not None:
            model.close()

    elapsed = s1["t"] - s0["t"]
    frames_out = (s1["frames"] - s0["frames"]) / elapsed
    ticks_per_s = (s1["ticks"] - s0["ticks"]) / elapsed
    # Realtime: the agent speaks REPLY_S of every PERIOD_S; the scheduler may idle between
    # replies when no call has audio queued (all calls speak at about the same moments).
    duty = REPLY_S / PERIOD_S if realtime else 1.0
    if not realtime and ticks_per_s < 0.9 / FRAME_S:
        problems.append(
            f"the playout scheduler ticked {ticks_per_s:.1f} times/s of {1 / FRAME_S:.0f}: "
            "it fell behind or was blocked"
        )
    if frames_out < (0.95 if not realtime else 0.8) * duty * n / FRAME_S:
        problems.append(
            f"short load: the server sent {frames_out:,.0f} media frames/s of "
            f"{duty * n / FRAME_S:,.0f} "
            "(the fake or the machine could not keep up): CPU per call is understated"
        )
    model_cpu = 0.0
    if d0 is not None and d1 is not None:
        model_cpu = (d1["cpu"] - d0["cpu"]) / (d1["t"] - d0["t"])
    return Result(
        engine=engine,
        n=n,
        window=elapsed,
        streaming=streaming,
        ramp_s=ramp_s,
        primed=len(primed),
        server_cpu=(s1["cpu"] - s0["cpu"]) / elapsed,
        server_sys=(s1["sys"] - s0["sys"])
        / max(1e-9, s1["user"] + s1["sys"] - s0["user"] - s0["sys"]),
        fake_cpu=[(b["cpu"] - a["cpu"]) / (b["t"] - a["t"]) for a, b in zip(f0, f1, strict=True)],
        machine_cpu=busy_cores(m0, m1),
        rss_base=rss_base,
        rss_loaded=rss_loaded,
        msgs_in=_rates(f0, f1, "sent"),
        msgs_out=_rates(f0, f1, "received"),
        frames_out=frames_out,
        pacing={k: quantiles(np.concatenate([p[k] for p in pacing])) for k in pacing[0]},
        lateness=late["ms"],
        lateness_entries=late["entries"],
        underruns=s1["underruns"] - s0["underruns"],
        stalls=s1["stalls"] - s0["stalls"],
        ticks_per_s=ticks_per_s,
        double_sends=late["double"],
        logs=logs,
        profile=profile,
        problems=problems,
        model_cpu=model_cpu,
        model_sessions=d1["sessions"] if d1 is not None else 0,
    )


# --- report ------------------------------------------------------------------------------------


def machine_facts(args: argparse.Namespace) -> list[str]:
    return [
        *machine_lines(),
        f"setup     server: 1 process (measured); fake Twilio: {args.fakes} process(es); "
        "asyncio event loops; "
        f"calls placed at {args.rate:g}/s; {args.warmup:g} s warm-up, then a "
        f"{args.seconds:g} s window; {100 * args.prime_share:.0f} % of the calls primed with "
        f"{args.prime_ms} ms of silence; loopback only",
        "pinning   "
        + (
            f"server on CPU {sorted(_cpus_for('server') or [])}, fakes on CPUs "
            f"{sorted(_cpus_for('fake') or [])} (LOAD_NO_PIN=1 to turn off)"
            if _cpus_for("server") is not None
            else "none (one CPU, or LOAD_NO_PIN set)"
        ),
    ]


def fmt_q(q: dict[str, float]) -> str:
    return f"{q['p50']:6.2f} / {q['p99']:6.2f} / {q['max']:6.1f} ms"


def report(results: list[Result], args: argparse.Namespace) -> bool:
    """Print every figure and the verdicts, per engine, then the realtime / echo ratios when
    both ran; True when every target is met."""
    ok = True
    engines = [e for e in ("echo", "realtime") if any(r.engine == e for r in results)]
    for engine in engines:
        ok &= report_engine([r for r in results if r.engine == engine])
    if len(engines) == 2:
        ok &= report_ratios(results)
    print()
    for line in machine_facts(args):
        print(line)
    return ok


def report_ratios(results: list[Result]) -> bool:
    """Realtime / echo at each N, for CPU per call-second and RSS per call: the medians over
    the `--repeat` rounds of each (the rounds alternate engines, so a disturbance of the
    machine lands on both)."""

    def medians(engine: str) -> dict[int, tuple[float, float, list[Result]]]:
        out = {}
        for n in sorted({r.n for r in results if r.engine == engine}):
            rounds = [r for r in results if r.engine == engine and r.n == n]
            cpu = float(np.median([r.cpu_per_call for r in rounds]))
            rss = float(np.median([r.rss_per_call for r in rounds]))
            out[n] = (cpu, rss, rounds)
        return out

    echo, rt = medians("echo"), medians("realtime")
    ok = True
    repeats = max(len(v[2]) for v in (*echo.values(), *rt.values()))
    print(
        f"== realtime / echo (target <= {RATIO_TARGET:g}x)"
        + (f", medians of {repeats} rounds each" if repeats > 1 else "")
    )
    print("  N      CPU %/call echo  realtime  ratio    RSS KiB/call echo  realtime  ratio")
    for n in sorted(set(echo) & set(rt)):
        (e_cpu, e_rss, e_rounds), (r_cpu, r_rss, r_rounds) = echo[n], rt[n]
        cpu_ratio = r_cpu / e_cpu if e_cpu > 0 else float("inf")
        # RSS per call can be ~0 or negative for echo at small N (allocator noise): the ratio
        # is taken against at least 1 KiB per call.
        rss_ratio = r_rss / max(e_rss, 1.0)
        print(
            f"  {n:<6} {e_cpu:15.3f} {r_cpu:9.3f} {cpu_ratio:6.2f}x   "
            f"{e_rss:17.1f} {r_rss:9.1f} {rss_ratio:6.2f}x"
        )
        if repeats > 1:
            for name, rounds in (("echo", e_rounds), ("realtime", r_rounds)):
                cpus = ", ".join(f"{r.cpu_per_call:.3f}" for r in rounds)
                rsss = ", ".join(f"{r.rss_per_call:.1f}" for r in rounds)
                print(f"         {name:<8} rounds: CPU {cpus}; RSS {rsss}")
        for what, ratio in (("CPU per call-second", cpu_ratio), ("RSS per call", rss_ratio)):
            good = ratio <= RATIO_TARGET
            ok &= good
            print(
                f"VERDICT realtime/echo {what} <= {RATIO_TARGET:g}x at N={n}: "
                f"{'PASS' if good else 'FAIL'} ({ratio:.2f}x)"
            )
    print(
        f"  (realtime calls: the agent speaks {REPLY_S:g} s of every {PERIOD_S:g} s, "
        f"the echo calls all the time: compare the media frames/s above)"
    )
    return ok


def report_engine(results: list[Result]) -> bool:
    """One engine's figures and verdicts; True when its targets are met."""
    cores = os.cpu_count() or 1
    engine = results[0].engine
    print()
    print(f"==== engine: {engine}")
    print()
    for r in results:
        pc, late = r.pacing, r.lateness
        fake_cpu = " + ".join(f"{100 * c:.0f} %" for c in r.fake_cpu)
        model_cpu = ""
        if r.engine == "realtime":
            model_cpu = f"; fake model {100 * r.model_cpu:.0f} % ({r.model_sessions} sessions)"
        lines = [
            f"== {r.engine}, N = {r.n} calls ({r.streaming} streaming after a "
            f"{r.ramp_s:.1f} s ramp), "
            f"window {r.window:.1f} s",
            f"  server CPU        {100 * r.server_cpu:5.1f} % of one core = "
            f"{r.cpu_per_call:.3f} % of one core per active call ({100 * r.server_sys:.0f} % of "
            "it in the kernel)",
            f"  other CPU         fake {fake_cpu} of one core{model_cpu}; anything else "
            f"{100 * r.other_cpu:.0f} %; machine busy {r.machine_cpu:.2f} of {cores} cores",
            f"  server RSS        {r.rss_base / 1024:.1f} MiB idle -> {r.rss_loaded / 1024:.1f} "
            f"MiB with the calls = {r.rss_per_call:.1f} KiB per call (send_lateness alone: "
            f"{r.lateness_entries / r.n * 32 / 1024:.0f} KiB a call now, ~96 KiB once full)",
            f"  messages          {r.msgs_in + r.msgs_out:,.0f} msg/s through the server (in "
            f"{r.msgs_in:,.0f}, out {r.msgs_out:,.0f}; {r.frames_out:,.0f} media frames/s sent)",
            "  pacing at fake    |inter-arrival - 20 ms| p50 / p99 / max; lag behind a 20 ms grid",
            f"    lead full       {fmt_q(pc['lead_jitter'])};  lag {fmt_q(pc['lead_lag'])}  "
            f"({r.primed} calls, {pc['lead_jitter']['n']:,} gaps)",
            f"    plain echo      {fmt_q(pc['echo_jitter'])};  lag {fmt_q(pc['echo_lag'])}  "
            f"({r.n - r.primed} calls, {pc['echo_jitter']['n']:,} gaps)",
            f"    fake's sends    {fmt_q(pc['own'])}  (the fake's own 20 ms media: its loop's "
            "health)",
            "  server view       Playout.stats.send_lateness p50 / p99 / max (vs the 100 ms lead)",
            f"    lead full       {fmt_q(late['lead'])}",
            f"    plain echo      {fmt_q(late['echo'])}",
            f"    lead full       {100 * r.double_sends:.1f} % of frames left in the same tick "
            "as the frame before (lateness < 10 ms)",
            f"    playout         underruns {r.underruns}, stalls {r.stalls}; scheduler "
            f"{r.ticks_per_s:.1f} ticks/s of 50; send_lateness holds {r.lateness_entries:,} "
            f"floats ({r.lateness_entries / r.n:,.0f} a call)",
        ]
        for phase, counts in r.logs.items():
            for what, count in sorted(counts.items()):
                lines.append(f"  log ({phase:6}) {count:5} x {what}")
        if r.fake_bottleneck:
            lines.append(
                f"  NOTE the fake was the bottleneck ({100 * max(r.fake_cpu):.0f} % of a core): "
                "its timestamps and its send rate are distorted at this N"
            )
        if r.other_cpu > 0.15:
            lines.append(
                f"  NOTE other processes used {100 * r.other_cpu:.0f} % of a core during the "
                "window: the figures are disturbed"
            )
        lines += [f"  PROBLEM {p}" for p in r.problems]
        print("\n".join(lines) + "\n")
        if r.profile:
            print(r.profile)

    worst = max(results, key=lambda r: r.cpu_per_call)
    ok = True
    cpu_ok = all(r.cpu_per_call <= CPU_TARGET for r in results)
    ok &= cpu_ok
    cpus = ", ".join(f"N={r.n}: {r.cpu_per_call:.3f} %" for r in results)
    print(
        f"VERDICT {engine}: server CPU per call-second <= {CPU_TARGET} % of a core: "
        f"{'PASS' if cpu_ok else 'FAIL'} ({cpus}; worst at N={worst.n})"
    )
    top = max(results, key=lambda r: r.n)
    q = top.verdict_jitter
    ok &= q["p99"] <= JITTER_TARGET_MS
    which = "lead-full calls" if top.pacing["lead_jitter"]["n"] else "echo calls"
    if engine == "realtime":
        which = f"model replies, gaps > {1000 * MAX_GAP_S:.0f} ms left out"
    notes = []
    if top.fake_bottleneck:
        notes.append(
            f"the fake was the bottleneck ({100 * max(top.fake_cpu):.0f} % of a core): this "
            "measures the fake as much as the server"
        )
    if top.machine_cpu >= 0.9 * cores:
        notes.append(f"the machine was saturated ({top.machine_cpu:.2f} of {cores} cores busy)")
    note = "".join(f"; {x}" for x in notes)
    print(
        f"VERDICT {engine}: pacing jitter p99 <= {JITTER_TARGET_MS:g} ms at N={top.n} "
        f"({which}): "
        f"{'PASS' if q['p99'] <= JITTER_TARGET_MS else 'FAIL'} (p99 {q['p99']:.2f} ms{note})"
    )
    print(
        f"        server side at N={top.n}: scheduler {top.ticks_per_s:.1f} ticks/s of 50, "
        f"lead-full send_lateness p99 - p50 = "
        f"{top.lateness['lead']['p99'] - top.lateness['lead']['p50']:.1f} ms, "
        f"{100 * top.double_sends:.1f} % of lead-full frames sent two to a tick"
    )
    healthy = not any(r.problems for r in results)
    if not healthy:
        print(f"VERDICT {engine}: run health: FAIL (see the PROBLEM lines)")
    return ok and healthy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--calls", type=int, nargs="+", default=[10, 100, 300], metavar="N")
    p.add_argument("--seconds", type=float, default=10.0, help="measuring window per N")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds after the ramp")
    p.add_argument("--rate", type=float, default=50.0, help="calls placed per second")
    p.add_argument("--fakes", type=int, default=1, choices=(1, 2), help="fake processes")
    p.add_argument(
        "--prime-share", type=float, default=0.5, help="share of calls primed (lead full)"
    )
    p.add_argument("--prime-ms", type=int, default=200, help="silence queued on primed calls")
    p.add_argument(
        "--engine",
        choices=("echo", "realtime", "both"),
        default="echo",
        help="the server's engine: EchoEngine, OpenAIRealtime on a fake model (own process), "
        "or both back to back at each N with the realtime / echo ratios",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="run every N (and engine) K times, alternating engines; the realtime / echo "
        "ratios are taken between medians",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: N=5, 3 s window")
    p.add_argument(
        "--memory",
        action="store_true",
        help="trace the server's allocations (tracemalloc) from the baseline to the window's "
        "end and print what the calls hold, by source line (slows the server: its figures "
        "are then not comparable)",
    )
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="profile the server over each window (pyinstrument if installed, else cProfile), "
        "save to PATH.<engine>.<N>; inflates the server's CPU figure",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.seconds = [5], 3.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = mp.get_context("spawn")  # no event loop or sockets inherited by the children
    for line in machine_facts(args):
        print(line)
    results = []
    started = time.monotonic()
    engines = ["echo", "realtime"] if args.engine == "both" else [args.engine]
    for n in args.calls:
        for rep in range(args.repeat):
            for engine in engines:
                t = time.monotonic()
                tag = f"-- {engine}, N = {n}" + (f", round {rep + 1}" if args.repeat > 1 else "")
                print(f"{tag}: starting", flush=True)
                results.append(run_round(ctx, n, args, engine))
                print(f"{tag}: done in {time.monotonic() - t:.1f} s", flush=True)
    ok = report(results, args)
    print(f"run time  {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

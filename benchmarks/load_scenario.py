"""load.py's scenario: what each process runs. The server (the process measured) serves
`EchoEngine`, `OpenAIRealtime` or `GeminiLive`; the fake Twilio places the calls and stamps
what comes back; the fake model (FakeRealtime or FakeGeminiLive) answers the realtime calls.
Each is a `Child` of `_harness`, driven by commands from the orchestrator (`load_run.py`)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import ssl
import time
import tracemalloc
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
    quantiles,
)

FRAME_S = 0.020
CPU_TARGET = 0.25  # % of one core per active call
JITTER_TARGET_MS = 10.0
FAKE_SATURATED = 0.90  # share of one core above which the fake is called the bottleneck
RATIO_TARGET = 1.5  # realtime / echo, CPU per call and RSS per call (--engine both)
MODEL_KEY = "sk-bench-fake-realtime"
GEMINI_KEY = "bench-fake-gemini-key"
ULTRAVOX_KEY = "bench-fake-ultravox-key"
REALTIME = ("openai", "gemini", "ultravox")  # the realtime providers, each against its fake
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
    """The process under test: a Patter serving EchoEngine, or a realtime engine on a fake."""

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
        self, account_sid: str, auth_token: str, base_url: str, model: dict[str, Any] | None
    ) -> dict[str, Any]:
        """`model`: None for EchoEngine, else the fake model's "kind" and addresses."""
        from getpatter.testing.engines import EchoEngine

        engine: Any
        if model is None:
            engine = EchoEngine()
        elif model["kind"] == "openai":
            from getpatter.plugins.openai.realtime import OpenAIRealtime

            engine = OpenAIRealtime(
                api_key=MODEL_KEY,
                voice="marin",
                base_url=model["base_url"],
                websocket_base_url=model["ws_url"],
            )
        elif model["kind"] == "ultravox":
            from getpatter.plugins.ultravox.realtime import UltravoxRealtime

            engine = UltravoxRealtime(api_key=ULTRAVOX_KEY, base_url=model["base_url"])
        else:
            from getpatter.plugins.google.live import GeminiLive

            trust = ssl.create_default_context(cadata=model["ca_pem"])
            engine = GeminiLive(api_key=GEMINI_KEY, base_url=model["base_url"], ssl=trust)

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
    """One fake model process: FakeRealtime (OpenAI) or FakeGeminiLive, which the realtime
    engine talks to. Every caller turn gets the same reply, REPLY_S of audio."""

    def __init__(self) -> None:
        self.fake: Any = None

    def handlers(self) -> dict[str, Handler]:
        return {"start": self.start, "mark": self.mark, "exit": self.exit}

    async def start(self, kind: str = "openai") -> dict[str, Any]:
        words = "Sure, I can help you with that booking today. " * 10
        reply = words[: int(REPLY_S / SECONDS_PER_CHAR)].strip()
        out: dict[str, Any] = {"kind": kind, "pid": os.getpid()}
        if kind == "openai":
            from getpatter.testing.openai_realtime import FakeRealtime

            self.fake = FakeRealtime(
                MODEL_KEY, default_reply=reply, seconds_per_char=SECONDS_PER_CHAR
            )
            await self.fake.start()
            out["ws_url"] = self.fake.ws_url
        elif kind == "ultravox":
            from getpatter.testing.ultravox import FakeUltravox

            self.fake = FakeUltravox(
                ULTRAVOX_KEY, default_reply=reply, seconds_per_char=SECONDS_PER_CHAR
            )
            await self.fake.start()
        else:
            from getpatter.testing.gemini_live import FakeGeminiLive

            self.fake = FakeGeminiLive(
                GEMINI_KEY, default_reply=reply, seconds_per_char=SECONDS_PER_CHAR
            )
            await self.fake.start()
            out["ca_pem"] = self.fake.ca_pem()
        out["base_url"] = self.fake.base_url
        return out

    async def mark(self) -> dict[str, Any]:
        sessions = getattr(self.fake, "sessions", None) or getattr(self.fake, "calls", [])
        if hasattr(self.fake, "received"):
            self.fake.received.clear()  # every client event is kept: do not let it grow
        for session in sessions:
            session.received.clear()
            session.sent.clear()
        return {
            "cpu": time.process_time(),
            "t": asyncio.get_running_loop().time(),
            "sessions": len(sessions),
            "live": sum(1 for s in sessions if not s.closed),
        }

    async def exit(self) -> None:
        if self.fake is not None:
            await self.fake.stop()

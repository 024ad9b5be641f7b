"""The turns mode of turn_latency.py: run the rounds (a fresh server and fake per N), join
the fake's view of every call with the server's record, and report."""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from _harness import Worker, busy_cores, machine_busy, machine_lines, quantiles
from _turn_calls import (
    BARGE_P50_MS,
    CHILD,
    FAKE_SATURATED,
    FRAME_S,
    ONSET_DBFS,
    REPLY,
    TURN_P50_MS,
    TURN_P99_MS,
    SpeechMarks,
    caller_audio,
    speech_marks,
)

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

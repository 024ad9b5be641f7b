"""load.py's run: one round (fresh fakes, fake model and server; warm-up, ramp, the measuring
window, hang-up) and its `Result`."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from _harness import Worker, all_call, busy_cores, machine_busy, quantiles, rss_kib
from load_scenario import (
    CHILD,
    FAKE_SATURATED,
    FRAME_S,
    MAX_GAP_S,
    PERIOD_S,
    REPLY_S,
)


@dataclass
class Result:
    engine: str  # "echo", or a realtime provider: "openai", "gemini"
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
    def realtime(self) -> bool:
        return self.engine != "echo"

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
    realtime = engine != "echo"
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
            model_urls = model.call("start", timeout=30, kind=engine)
        server = Worker(ctx, CHILD, "server")
        keys = ("account_sid", "auth_token", "base_url")
        up = server.call(
            "start",
            timeout=60,
            model=model_urls,
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

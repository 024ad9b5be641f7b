"""load.py's report: every figure per engine, the verdicts, the realtime / echo ratios, and
the realtime bridge next to one idle model socket (`ws_cost.py`, measured in the same run)."""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
from _harness import machine_lines
from load_run import Result
from load_scenario import (
    CPU_TARGET,
    JITTER_TARGET_MS,
    MAX_GAP_S,
    PERIOD_S,
    RATIO_TARGET,
    REALTIME,
    REPLY_S,
    _cpus_for,
)


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


def report(
    results: list[Result], args: argparse.Namespace, socket_cost: dict[str, Any] | None = None
) -> bool:
    """Print every figure and the verdicts, per engine, then the realtime / echo ratios when
    both ran; True when every target is met."""
    ok = True
    engines = [e for e in ("echo", *REALTIME) if any(r.engine == e for r in results)]
    for engine in engines:
        ok &= report_engine([r for r in results if r.engine == engine])
    for provider in engines[1:] if "echo" in engines else []:
        ok &= report_ratios(results, provider)
    if socket_cost is not None:
        report_bridge(results, socket_cost)
    print()
    for line in machine_facts(args):
        print(line)
    return ok


def report_ratios(results: list[Result], provider: str) -> bool:
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

    echo, rt = medians("echo"), medians(provider)
    judged = provider == "openai"  # the target is OpenAI's; the others are reported only
    ok = True
    repeats = max(len(v[2]) for v in (*echo.values(), *rt.values()))
    print(
        f"== {provider} realtime / echo"
        + (f" (target <= {RATIO_TARGET:g}x)" if judged else " (reported, no target)")
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
            for name, rounds in (("echo", e_rounds), (provider, r_rounds)):
                cpus = ", ".join(f"{r.cpu_per_call:.3f}" for r in rounds)
                rsss = ", ".join(f"{r.rss_per_call:.1f}" for r in rounds)
                print(f"         {name:<8} rounds: CPU {cpus}; RSS {rsss}")
        for what, ratio in (("CPU per call-second", cpu_ratio), ("RSS per call", rss_ratio)):
            if not judged:
                continue
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
        if r.realtime:
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
    if top.realtime:
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


def report_bridge(results: list[Result], cost: dict[str, Any]) -> None:
    """Each realtime provider's bridge, per call, next to one idle model socket by itself
    (`ws_cost.py`'s figures, measured in this run): what the bridge costs beyond holding the
    socket. No target: a reading aid."""
    echo = {r.n: r for r in results if r.engine == "echo"}
    print()
    print(
        f"== the realtime bridge next to one model socket (ws_cost.py, this run: "
        f"{cost['conns']} sockets, {cost['messages']} appends)"
    )
    print(
        f"  one idle socket: {cost['rss_kib']:.1f} KiB RSS; {cost['send_us']:.1f} µs CPU per "
        f"60 ms append (= {cost['send_us'] * 100 / 0.060 / 1e6:.3f} % of a core per call "
        "streaming caller audio)"
    )
    print("  engine    N      CPU %/call  RSS KiB/call   minus echo: CPU %/call  RSS KiB/call")
    for r in results:
        if not r.realtime:
            continue
        base = echo.get(r.n)
        extra = (
            f"{r.cpu_per_call - base.cpu_per_call:22.3f} {r.rss_per_call - base.rss_per_call:13.1f}"
            if base is not None
            else f"{'(no echo round)':>36}"
        )
        print(f"  {r.engine:<9} {r.n:<6} {r.cpu_per_call:10.3f} {r.rss_per_call:13.1f}   {extra}")

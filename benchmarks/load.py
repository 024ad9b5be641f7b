"""Load benchmark: N concurrent Twilio calls against the getpatter server, echoing audio back.

Run: .venv/bin/python benchmarks/load.py            N = 10, 100, 300; 10 s windows (~1.5 min)
     .venv/bin/python benchmarks/load.py --quick    N = 5, 3 s window: a smoke run (~10 s)
     .venv/bin/python benchmarks/load.py --calls 50 200 --seconds 20 --fakes 2
     .venv/bin/python benchmarks/load.py --engine both --calls 10 100 --seconds 10 --repeat 3
     .venv/bin/python benchmarks/load.py --engine realtime --provider gemini --calls 30

Modules: load_scenario.py (what each process runs), load_run.py (one round and its Result),
load_report.py (the figures and verdicts); this file is the command line.

Processes (all on 127.0.0.1):
  this one   the orchestrator: spawns the others, marks the measuring window, reads /proc and
             prints. It sleeps while the calls run.
  server     `Patter.serve(agent(engine=EchoEngine()), host="127.0.0.1", port=0)`: the process
             measured. EchoEngine plays each caller frame straight back, so every call has
             50 inbound and 50 outbound media messages a second, plus marks and their echoes.
  fake       `FakeTwilio` (the testing fake of the Twilio network) placing the inbound calls at
             `--rate` calls/s, streaming quiet noise and recording when each agent frame
             arrived. `--fakes 2` splits the calls across two fake processes (same account).
  model      with `--engine realtime`: for each provider (`--provider openai|gemini|ultravox|all`)
             its fake (`FakeRealtime`, `FakeGeminiLive`, `FakeUltravox`); the server runs
             `OpenAIRealtime`, `GeminiLive` or `UltravoxRealtime` pointed at it, and the
             callers say a 0.4 s loud burst every 4 s, which the fake's energy VAD takes as a
             turn and answers with 2.7 s of audio.
             `--engine both` runs echo then each provider at each N and prints realtime / echo,
             CPU per call-second and RSS per call (judged <= 1.5x for OpenAI; reported for the
             others). With a realtime engine, one idle model socket is measured too
             (`ws_cost.py`) and each bridge's per-call cost is printed next to it.
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
import multiprocessing as mp
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout
sys.path.insert(0, str(HERE))  # _harness, here and in the spawned children

from load_report import machine_facts, report  # noqa: E402
from load_run import run_round  # noqa: E402


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
        help="the server's engine: EchoEngine; realtime: each realtime provider (--provider) on "
        "its fake model (own process); both: echo then realtime at each N, with the "
        "realtime / echo ratios",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="run every N (and engine) K times, alternating engines; the realtime / echo "
        "ratios are taken between medians",
    )
    p.add_argument(
        "--provider",
        choices=("openai", "gemini", "ultravox", "all"),
        default="all",
        help="the realtime providers run by --engine realtime/both (default: all)",
    )
    p.add_argument(
        "--no-ws-cost",
        action="store_true",
        help="skip measuring one idle model socket (ws_cost.py) next to the realtime figures",
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
    providers = ["openai", "gemini", "ultravox"] if args.provider == "all" else [args.provider]
    engines = {"echo": ["echo"], "realtime": providers, "both": ["echo", *providers]}[args.engine]
    for n in args.calls:
        for rep in range(args.repeat):
            for engine in engines:
                t = time.monotonic()
                tag = f"-- {engine}, N = {n}" + (f", round {rep + 1}" if args.repeat > 1 else "")
                print(f"{tag}: starting", flush=True)
                results.append(run_round(ctx, n, args, engine))
                print(f"{tag}: done in {time.monotonic() - t:.1f} s", flush=True)
    socket_cost = None
    if args.engine != "echo" and not args.no_ws_cost:
        from ws_cost import measure_socket

        socket_cost = measure_socket(ctx, conns=100, messages=5000)
    ok = report(results, args, socket_cost)
    print(f"run time  {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

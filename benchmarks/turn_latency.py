"""Turn and barge-in latency: N concurrent pipeline calls through the fake Twilio network;
and how a reply's sentences reach the caller (sentence generator, stalled TTS sentence, the
silence at sentence boundaries, a sentence stalled mid-way).

Run: .venv/bin/python benchmarks/turn_latency.py            all modes (~5 min)
     .venv/bin/python benchmarks/turn_latency.py --quick    a smoke run of each (~2 min)
     .venv/bin/python benchmarks/turn_latency.py --mode turns --calls 100 --profile /tmp/t.prof
     .venv/bin/python benchmarks/turn_latency.py --mode sentences stall --reply-calls 10
     .venv/bin/python benchmarks/turn_latency.py --mode boundaries midstall --reply-calls 10

Modes (`--mode`, all by default):
  turns      N = 1, 50, 200 concurrent calls (below); _turn_calls.py and _turn_rounds.py.
  sentences  issue 16's sentence-yielding `on_message`, spoken by the ElevenLabs plugin
             against its fake: yield -> TTS (target p50 <= 20 ms) and TTS first audio ->
             carrier (target p50 <= 30 ms); see _reply_modes.py.
  stall      a reply whose second sentence the TTS accepts and never answers: the longest
             silence inside the reply (target <= 2 s) against the same reply unstalled.
  boundaries the longest silence the caller hears between the sentences of a 4-sentence
             reply (ElevenLabs and Cartesia fakes, 200 ms first byte, real-time audio), with
             the next sentence made ahead (tts_lookahead=1) against one at a time (0, the old
             behaviour) in the same run; target <= 2 frames (40 ms). See _reply_gaps.py.
  midstall   the longest silence inside that reply when its first sentence stops mid-way
             (one context, a dead peer, a Cartesia generation): target <= 1.5 s; against no
             mid-sentence deadline (audio_gap_timeout=None, the old behaviour), once.

The turns mode. Processes (all on 127.0.0.1), as in load.py:
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
import multiprocessing as mp
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(HERE))  # _harness, here and in the spawned children

import _reply_gaps  # noqa: E402
import _reply_modes  # noqa: E402
from _harness import machine_lines  # noqa: E402
from _turn_calls import caller_audio, speech_marks  # noqa: E402
from _turn_rounds import Result, machine_facts, report, run_round, wait_quiet  # noqa: E402

MODES = ("turns", "sentences", "stall", "boundaries", "midstall")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument(
        "--mode",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="turns: N concurrent calls (turn and barge-in latency); sentences: a "
        "sentence-yielding on_message; stall: a reply with a stalled TTS sentence; "
        "boundaries: silence between sentences; midstall: a sentence stalled mid-way",
    )
    p.add_argument(
        "--reply-calls",
        type=int,
        default=5,
        metavar="K",
        help="calls per reply mode (sentences, stall, boundaries, midstall), one at a time",
    )
    p.add_argument(
        "--lookup",
        type=float,
        default=1.0,
        metavar="S",
        help="sentences mode: the generator's pause between its yields (issue 16: 1 s)",
    )
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
        args.calls, args.min_calls, args.reply_calls = [1, 5], 1, 2
    return args


def run_turns(args: argparse.Namespace) -> bool:
    """The turns mode: every N in `--calls`, a fresh server and fake per N; prints the report."""
    ctx = mp.get_context("spawn")  # no event loop or sockets inherited by the children
    results: list[Result] = []
    clock: list[str] = []
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
    return report(results, args, speech_marks(caller_audio()[0]), clock)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for line in machine_facts(args) if "turns" in args.mode else machine_lines():
        print(line)
    started = time.monotonic()
    ok = True
    if "turns" in args.mode:
        ok &= run_turns(args)
    if {"sentences", "stall"} & set(args.mode):
        ok &= asyncio.run(_reply_modes.run(args))
    if {"boundaries", "midstall"} & set(args.mode):
        ok &= asyncio.run(_reply_gaps.run(args))
    print(f"run time  {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

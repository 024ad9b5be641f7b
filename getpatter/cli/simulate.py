"""`getpatter simulate` and `getpatter demo`: a whole call to an app through the built-in phone
network (the real Twilio path: signed webhook, TwiML, media socket, μ-law at real time)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from getpatter.cli.common import add_log_options, setup_logging

DEMO_TURNS = [
    ("say", "What are your opening hours?"),
    ("say", "I would like to book an appointment for tomorrow at ten."),
    ("barge", "Sorry, I have to go now. Goodbye."),
]


class _TurnAction(argparse.Action):
    """--say, --barge and --wav append to one list, so the turns keep the order given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        turns = list(getattr(namespace, "turns", None) or [])
        turns.append((str(option_string).lstrip("-"), str(values)))
        namespace.turns = turns


def _add_call_options(p: argparse.ArgumentParser, record: str) -> None:
    p.add_argument(
        "--record",
        metavar="FILE",
        default=record,
        help=f"write the call as a stereo WAV, caller left, agent right ({record})",
    )
    p.add_argument(
        "--no-record", dest="record", action="store_const", const="", help="write no WAV"
    )
    p.add_argument(
        "--keep-open",
        action="store_true",
        help="after the call, keep the app's server and its dashboard up until Ctrl-C",
    )
    p.add_argument(
        "--keep-history",
        action="store_true",
        help="store this call in the app's call history (persist=); by default a simulated "
        "call is kept in memory only, out of your real calls",
    )
    add_log_options(p, default="warning")


def add_simulate(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="call your app through the built-in phone network, offline",
        description=(
            "Place one call to APP through the built-in phone network: the caller's turns are "
            "spoken by the offline TTS (--say), played from WAV files (--wav) or said over the "
            "agent (--barge), in the order given. Prints the live transcript, each tool call "
            "and each turn's latency, and writes the call to call.wav (--no-record: don't)."
        ),
    )
    p.add_argument(
        "app",
        metavar="APP",
        help="file.py:attr or module:attr giving (phone, agent) or (phone, agent, serve_kwargs)",
    )
    p.add_argument(
        "--say", action=_TurnAction, metavar="TEXT", help="a caller turn, after the agent's"
    )
    p.add_argument(
        "--barge", action=_TurnAction, metavar="TEXT", help="a caller turn said over the agent"
    )
    p.add_argument(
        "--wav",
        action=_TurnAction,
        metavar="FILE",
        help="a caller turn from a 16-bit PCM WAV file (any rate, first channel)",
    )
    p.add_argument(
        "--outbound", action="store_true", help="test phone.call(...) instead of an inbound call"
    )
    p.add_argument(
        "--answered-by",
        choices=["human", "machine"],
        default="human",
        help="with --outbound: who answers, as answering-machine detection reports it (human)",
    )
    p.add_argument(
        "--fake-realtime",
        action="store_true",
        help="run an OpenAIRealtime agent against getpatter's offline fake of the model "
        "(no key, no network): it hears the --say text and answers with a fixed sentence",
    )
    _add_call_options(p, "call.wav")
    p.set_defaults(func=cmd_simulate, turns=[])


def add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="a whole call to a demo receptionist, offline",
        description=(
            "The receptionist of the docs (getpatter/demo.py) on the embedded default: offline "
            "speech recognition and synthesis, an on_message dialogue, the built-in phone "
            "network. A scripted caller asks a question, books an appointment (a tool call) "
            "and interrupts the agent."
        ),
    )
    p.add_argument("--app", metavar="APP", help="run the demo's caller script against APP")
    _add_call_options(p, "demo-call.wav")
    p.set_defaults(
        func=cmd_demo, outbound=False, answered_by="human", fake_realtime=False, turns=[]
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    return _run(args.app, args, f"Simulated call to {args.app}\n")


def cmd_demo(args: argparse.Namespace) -> int:
    app = args.app or str(Path(__file__).resolve().parent.parent / "demo.py") + ":app"
    args.turns = DEMO_TURNS
    title = (
        "getpatter demo: a receptionist on the embedded default (offline speech recognition\n"
        "and synthesis, the built-in phone network simulator). No keys, no network.\n"
    )
    return _run(app, args, title)


def _run(app_spec: str, args: argparse.Namespace, title: str) -> int:

    from getpatter.errors import PatterConfigError
    from getpatter.testing import simulator as sim

    setup_logging(args)
    sim.ensure_placeholder_credentials(fake_realtime=args.fake_realtime)
    try:
        return _simulate(app_spec, args, title)
    except PatterConfigError as exc:
        if "OPENAI_API_KEY" in str(exc) and not args.fake_realtime:
            raise PatterConfigError(
                f"{exc} (or add --fake-realtime: an offline stand-in for the model)"
            ) from None
        raise


def _simulate(app_spec: str, args: argparse.Namespace, title: str) -> int:
    import asyncio

    from getpatter.errors import PatterConfigError
    from getpatter.testing import simulator as sim

    phone, agent, serve_kwargs = sim.load_app(app_spec)
    turns = []
    for kind, value in args.turns:
        if kind == "wav":
            if not Path(value).is_file():
                raise PatterConfigError(f"--wav {value}: no such file")
            turns.append(sim.CallerTurn(text=f"<{Path(value).name}>", audio=sim.read_wav(value)))
        else:
            turns.append(sim.CallerTurn(text=value, barge=kind == "barge"))
    print(title)
    if not turns:
        print("  (no --say, --barge or --wav: the agent greets, then the caller hangs up)")

    async def after_call(result: sim.Simulation) -> None:
        print("\n" + sim.latency_table(result))
        if result.wav_path:
            print(f"\n  recording (caller left, agent right): {result.wav_path}")
        if args.keep_open:
            where = result.dashboard_url or "(no dashboard)"
            print(f"\n  the call is over; the server stays up: {where}\n  Ctrl-C to stop")
            await asyncio.Event().wait()  # until Ctrl-C cancels the run

    try:
        result = asyncio.run(
            sim.simulate(
                phone,
                agent,
                turns,
                serve_kwargs=serve_kwargs,
                wav_out=args.record or None,
                outbound=args.outbound,
                answered_by=args.answered_by,
                keep_history=args.keep_history,
                fake_realtime=args.fake_realtime,
                after_call=after_call,
            )
        )
    except KeyboardInterrupt:
        if args.keep_open:
            return 0  # --keep-open ends with Ctrl-C: that is the normal way out
        raise
    return 0 if result.record else 1

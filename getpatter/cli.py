"""The `getpatter` command.

Subcommands import what they need only when they run, so `getpatter --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_plugins(args: argparse.Namespace) -> int:
    from getpatter.core.registry import default_registry

    specs = default_registry().specs(args.kind)
    rows = [("KIND", "NAME", "FROM", "STATUS")]
    for s in specs:
        status = "installed" if s.installed else f"missing: {s.install_hint}"
        rows.append((s.kind, s.name, s.source or "-", status))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0


class _TurnAction(argparse.Action):
    """--say and --barge, kept in the order given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        turns = list(getattr(namespace, "turns", None) or [])
        turns.append((option_string == "--barge", str(values)))
        namespace.turns = turns


def _run_simulation(app: str, args: argparse.Namespace, title: str) -> int:
    import asyncio
    import logging

    from getpatter.testing import simulator as sim

    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    sim.ensure_placeholder_credentials()
    phone, agent, serve_kwargs = sim.load_app(app)
    turns = [sim.CallerTurn(text=text, barge=barge) for barge, text in (args.turns or [])]
    if args.wav:
        turns.append(sim.CallerTurn(text=f"<{args.wav}>", audio=sim.read_wav(args.wav)))
    print(title)
    result = asyncio.run(
        sim.simulate(
            phone,
            agent,
            turns,
            serve_kwargs=serve_kwargs,
            wav_out=args.record,
            outbound=args.outbound,
            answered_by=args.answered_by,
        )
    )
    print("\n" + sim.latency_table(result))
    if result.wav_path:
        print(f"\n  recording (caller left, agent right): {result.wav_path}")
    return 0 if result.record else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    return _run_simulation(args.app, args, f"Simulated call to {args.app}\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    app = args.app or str(Path(__file__).parent / "demo.py") + ":app"
    args.turns = [
        (False, "What are your opening hours?"),
        (False, "I would like to book an appointment for tomorrow at ten."),
        (True, "Sorry, I have to go now. Goodbye."),
    ]
    args.wav = None
    title = (
        "getpatter demo: a receptionist on the embedded default (offline speech recognition\n"
        "and synthesis, the built-in phone network simulator). No keys, no network.\n"
    )
    return _run_simulation(app, args, title)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="getpatter",
        description="Give an AI voice agent a phone number (self-hosted, Twilio or Telnyx).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list the registered providers, carriers and VADs")
    p.add_argument("--kind", choices=["stt", "tts", "llm", "engine", "carrier", "vad"])
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("simulate", help="call your app through the built-in phone network")
    p.add_argument("app", help="module:attr or file.py:attr giving (phone, agent[, serve kwargs])")
    p.add_argument("--say", action=_TurnAction, metavar="TEXT", help="a caller turn (repeatable)")
    p.add_argument("--barge", action=_TurnAction, metavar="TEXT", help="say TEXT over the agent")
    p.add_argument("--wav", metavar="FILE", help="a caller turn from a 16-bit WAV file")
    p.add_argument("--record", metavar="FILE", default="call.wav", help="stereo WAV of the call")
    p.add_argument("--outbound", action="store_true", help="test phone.call() instead")
    p.add_argument("--answered-by", choices=["human", "machine"], default="human")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("demo", help="a whole call to a demo receptionist, offline")
    p.add_argument("--app", help="run the demo script against another app")
    p.add_argument("--record", metavar="FILE", default="demo-call.wav")
    p.set_defaults(func=_cmd_demo, outbound=False, answered_by="human")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"getpatter {version('getpatter')}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""The `getpatter` command.

Subcommands import what they need only when they run, so `getpatter --help` and `getpatter
plugins` stay instant. A mistake the user made (a wrong APP, a missing key, an unknown provider
name) is one line on stderr and exit code 2; a bug in the app's own code keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from getpatter.cli import bench, plugins, run, simulate

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="getpatter",
        description="Give an AI voice agent a phone number (self-hosted: Twilio, Telnyx or Plivo).",
        epilog="`getpatter COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.add_serve(sub)
    run.add_dashboard(sub)
    simulate.add_simulate(sub)
    simulate.add_demo(sub)
    plugins.add_plugins(sub)
    bench.add_bench(sub)
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
    from getpatter.errors import PatterConfigError

    try:
        return int(args.func(args))
    except PatterConfigError as exc:  # the user's to fix: what to fix, in one line
        print(f"getpatter {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        print(f"getpatter {args.command}: interrupted", file=sys.stderr)
        return 130

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

"""`getpatter plugins`: every registered provider, carrier and VAD, what it needs and does."""

from __future__ import annotations

import argparse
import os
from typing import Any

KINDS = ["stt", "tts", "llm", "engine", "carrier", "vad"]


def add_plugins(sub: Any) -> None:
    p = sub.add_parser(
        "plugins",
        help="list the registered providers, carriers and VADs",
        description=(
            "Every provider, carrier and VAD registered through the `getpatter.plugins` entry "
            "point (the built-ins and any installed third-party plugin): where it comes from, "
            "the environment variables its keys are read from (✓ when set here), whether it "
            "is installed, and what it is."
        ),
    )
    p.add_argument("--kind", choices=KINDS, help="only this kind of plugin")
    p.set_defaults(func=cmd_plugins)


def _env(names: tuple[str, ...]) -> str:
    return " ".join(f"{n}{'✓' if os.environ.get(n, '').strip() else ''}" for n in names) or "-"


def cmd_plugins(args: argparse.Namespace) -> int:
    from getpatter.core.registry import default_registry

    rows = [("KIND", "NAME", "FROM", "ENV", "STATUS", "DESCRIPTION")]
    for s in default_registry().specs(args.kind):
        status = "installed" if s.installed else f"missing: {s.install_hint}"
        env = _env(tuple(getattr(s, "env", ()) or ()))
        rows.append((s.kind, s.name, s.source or "-", env, status, s.description or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0

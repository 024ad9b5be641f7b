"""Options and set-up several commands share."""

from __future__ import annotations

import argparse

LEVELS = ["debug", "info", "warning", "error"]


def add_log_options(p: argparse.ArgumentParser, default: str = "info") -> None:
    p.add_argument(
        "--log-level",
        choices=LEVELS,
        default=default,
        help=f"the least important log lines shown ({default})",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text for people, json (one object per line, with call and trace ids) for "
        "log collectors (text)",
    )


def setup_logging(args: argparse.Namespace) -> None:
    from getpatter.logs import configure_logging

    configure_logging(args.log_level, args.log_format)

"""`getpatter serve APP` (run an app's server) and `getpatter dashboard` (browse call history
without an agent)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from getpatter.cli.common import add_log_options, setup_logging

log = logging.getLogger("getpatter")


def add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run your app: the server the carrier calls, with its dashboard",
        description=(
            "Start APP's server (what `await phone.serve(agent, ...)` does, with APP's serve "
            "arguments) and log a start-up banner: where it listens, the webhook URLs to paste "
            "into the Twilio or Telnyx console, the dashboard's address. Ctrl-C (or SIGTERM) "
            "stops it politely: live calls are hung up and their records written."
        ),
    )
    p.add_argument(
        "app",
        metavar="APP",
        help="file.py:attr or module:attr giving (phone, agent) or (phone, agent, serve_kwargs)",
    )
    p.add_argument("--port", type=int, help="TCP port (default: APP's, else 8000)")
    p.add_argument(
        "--host", help="address to listen on (default: APP's, else 0.0.0.0: every interface)"
    )
    p.add_argument(
        "--tunnel",
        action="store_true",
        help="start a Cloudflare quick tunnel (cloudflared on PATH) and point the number at it",
    )
    p.add_argument(
        "--dashboard-token",
        metavar="TOKEN",
        help="require this bearer token for the dashboard and /metrics",
    )
    p.add_argument("--no-dashboard", action="store_true", help="serve no dashboard")
    add_log_options(p)
    p.set_defaults(func=cmd_serve)


def add_dashboard(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="browse call history without running an agent",
        description=(
            "Serve the dashboard over stored call history (searchable list, transcripts, "
            "per-turn latency and cost, CSV/JSON export) with no agent running. By default "
            "the history a `Patter()` without persist= writes: $PATTER_LOG_DIR or ~/.getpatter."
        ),
    )
    p.add_argument(
        "--db",
        metavar="LOCATION",
        help="a persist= directory, a .db file or a sqlite:/// URL (default: $PATTER_LOG_DIR "
        "or ~/.getpatter)",
    )
    p.add_argument("--port", type=int, default=8001, help="TCP port (8001)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1; beyond it a token is required, generated if "
        "not given)",
    )
    p.add_argument("--token", metavar="TOKEN", help="require this bearer token")
    p.add_argument(
        "--mask-phone-numbers", action="store_true", help="show phone numbers masked (+1******4321)"
    )
    add_log_options(p)
    p.set_defaults(func=cmd_dashboard)


# --- running until Ctrl-C ----------------------------------------------------------------------


async def _until_stopped(
    run: Awaitable[None], stop: Callable[[], Awaitable[None]], what: str
) -> None:
    """Run `run`; the first Ctrl-C/SIGTERM calls `stop()` (a polite stop), a second one cancels."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(run)
    stopping: list[asyncio.Task[None]] = []

    def on_signal(name: str) -> None:
        if stopping:
            log.warning("%s again: stopping now", name)
            task.cancel()
            return
        log.info("%s: stopping %s (Ctrl-C again to stop at once)", name, what)
        stopping.append(asyncio.ensure_future(stop()))

    claimed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            claimed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            pass
    try:
        await task
    finally:
        for sig in claimed:
            loop.remove_signal_handler(sig)
        if stopping:
            await asyncio.gather(*stopping, return_exceptions=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from getpatter.apps import load_app

    setup_logging(args)
    app = load_app(args.app)
    kwargs = dict(app.serve_kwargs)
    for name, value in (("port", args.port), ("host", args.host)):
        if value is not None:
            kwargs[name] = value
    if args.tunnel:
        kwargs["tunnel"] = True
    if args.dashboard_token:
        kwargs["dashboard_token"] = args.dashboard_token
    if args.no_dashboard:
        kwargs["dashboard"] = False
    phone = app.phone

    try:
        asyncio.run(
            _until_stopped(phone.serve(app.agent, **kwargs), phone.disconnect, "the server")
        )
    except asyncio.CancelledError:
        pass
    log.info("stopped")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from getpatter.config import resolve_persist_root
    from getpatter.dashboard.standalone import HistoryDashboard

    setup_logging(args)
    board = HistoryDashboard(
        args.db or str(resolve_persist_root(None)),
        host=args.host,
        port=args.port,
        token=args.token or "",
        mask_phone_numbers=args.mask_phone_numbers,
    )
    try:
        asyncio.run(_until_stopped(board.run(), board.stop, "the dashboard"))
    except asyncio.CancelledError:
        pass
    return 0

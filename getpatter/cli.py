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


def _cmd_bench(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from getpatter import bench
    from getpatter.bench.providers import parse_base_urls
    from getpatter.errors import PatterConfigError

    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    stt, llm, tts = args.stt or [], args.llm or [], args.tts or []
    if not (stt or llm or tts):
        print("no providers given: benching the offline defaults (--stt local --tts local)")
        stt, tts = ["local"], ["local"]
    try:
        options = bench.BenchOptions(
            stt=stt,
            llm=llm,
            tts=tts,
            turn=args.turn,
            only=args.only or (),
            runs=args.runs,
            concurrency=args.concurrency,
            warmup=args.warmup,
            limit=args.limit,
            corpus=args.corpus,
            base_urls=parse_base_urls(args.base_url or []),
            end_silence=None if args.end_silence is None else args.end_silence / 1000,
            hints=not args.no_hints,
            timeout=args.timeout,
            progress=args.progress or sys.stderr.isatty(),
        )
        report = asyncio.run(bench.run(options, say=lambda line: print(line, file=sys.stderr)))
    except PatterConfigError as exc:
        print(f"getpatter bench: {exc}", file=sys.stderr)
        return 2
    print("\n" + bench.table(report) + "\n")
    outputs = (
        ("CSV", args.csv, bench.write_csv),
        ("JSON", args.json, bench.write_json),
        ("chart", args.chart, bench.write_svg),
    )
    for what, path, write in outputs:
        if not path:
            continue
        try:
            print(f"  {what}: {write(report, path)}")
        except OSError as exc:
            print(f"getpatter bench: cannot write the {what} to {path}: {exc}", file=sys.stderr)
            return 2
    return 0 if report.results else 1


def _cmd_nginx_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from getpatter.errors import PatterConfigError
    from getpatter.nginx import Node, nginx_config, workers

    try:
        nodes = [Node.parse(spec) for spec in args.node or []]
        if args.workers:
            nodes += workers(args.workers, args.port, args.host)
        if not nodes:
            raise PatterConfigError(
                "no nodes: pass --node NAME=HOST:PORT (repeatable) or --workers N"
            )
        text = nginx_config(
            nodes,
            server_name=args.server_name,
            listen=args.listen,
            certificate=args.cert or f"/etc/letsencrypt/live/{args.server_name}/fullchain.pem",
            certificate_key=args.key or f"/etc/letsencrypt/live/{args.server_name}/privkey.pem",
        )
    except PatterConfigError as exc:
        print(f"getpatter nginx-config: {exc}", file=sys.stderr)
        return 2
    if args.output in ("", "-"):
        print(text, end="")
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output} ({len(nodes)} nodes); check it with: nginx -t -c {args.output}")
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

    p = sub.add_parser(
        "nginx-config",
        help="write the nginx config for many nodes (see README, Scaling out)",
        description=(
            "A complete, commented nginx.conf for getpatter nodes sharing one PostgreSQL: new "
            "calls to any node (a full or draining node's 503 sends them to the next; all full: "
            "the caller hears all lines are busy), /n/<node>/ to that node, WebSocket upgrades "
            "and timeouts as long as a call."
        ),
    )
    p.add_argument("--node", action="append", metavar="NAME=HOST:PORT", help="a node (repeatable)")
    p.add_argument("--workers", type=int, default=0, help="the N nodes of `serve --workers N`")
    p.add_argument("--port", type=int, default=8000, help="first worker port (8000)")
    p.add_argument("--host", default="127.0.0.1", help="where the workers listen (127.0.0.1)")
    p.add_argument("--server-name", default="calls.example.com", help="the public host")
    p.add_argument("--listen", default="443 ssl", help='nginx listen: "443 ssl" or a port')
    p.add_argument("--cert", help="TLS certificate (default: Let's Encrypt's path)")
    p.add_argument("--key", help="TLS key (default: Let's Encrypt's path)")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="write here (stdout)")
    p.set_defaults(func=_cmd_nginx_config)

    p = sub.add_parser(
        "bench",
        help="measure providers the way a call uses them (latency, word error rate)",
        description=(
            "Bench STT (real-time streaming of a spoken corpus: end of speech → final "
            "transcript, word error rate), LLM (time to first token, tokens/s), TTS (time to "
            "first audio byte, real-time factor) and, with --turn, whole calls through the "
            "simulated phone network (caller stops → first agent audio). Keys come from the "
            "environment; a provider without its key is skipped."
        ),
    )
    p.add_argument("--stt", action="append", metavar="NAME", help="registered name or module:attr")
    p.add_argument("--llm", action="append", metavar="NAME", help="registered name or module:attr")
    p.add_argument("--tts", action="append", metavar="NAME", help="registered name or module:attr")
    p.add_argument("--turn", action="store_true", help="also time whole simulated calls")
    p.add_argument(
        "--only", action="append", choices=["stt", "llm", "tts", "turn"], help="run only these"
    )
    p.add_argument("--runs", type=int, default=3, help="measured runs per provider (3)")
    p.add_argument("--concurrency", type=int, default=1, help="runs at once (1)")
    p.add_argument("--warmup", type=int, default=1, help="uncounted runs first (1)")
    p.add_argument("--limit", type=int, metavar="N", help="first N utterances/prompts/sentences")
    p.add_argument("--corpus", metavar="DIR", help="your utterances: name.wav + name.txt")
    p.add_argument(
        "--base-url",
        action="append",
        metavar="NAME=URL",
        help="point a provider at another server (NAME or KIND.NAME, e.g. openai=http://…/v1)",
    )
    p.add_argument(
        "--end-silence",
        type=float,
        metavar="MS",
        help="silence streamed after speech before finalize() (the pipeline VAD's: 600)",
    )
    p.add_argument("--no-hints", action="store_true", help="no phrases= for LocalSTT")
    p.add_argument("--timeout", type=float, default=20.0, metavar="S", help="per step (20)")
    p.add_argument("--csv", metavar="FILE", help="every sample as CSV")
    p.add_argument("--json", metavar="FILE", help="everything, with machine and versions")
    p.add_argument(
        "--chart",
        metavar="FILE.svg",
        default="getpatter-bench.svg",
        help="SVG of the distributions (getpatter-bench.svg)",
    )
    p.add_argument("--no-chart", dest="chart", action="store_const", const="", help="no SVG")
    p.add_argument("--progress", action="store_true", help="progress bar even when not a TTY")
    p.set_defaults(func=_cmd_bench)
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

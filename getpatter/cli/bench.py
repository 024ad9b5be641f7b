"""`getpatter bench`: measure providers the way a call uses them."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_bench(sub: Any) -> None:
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
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
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
        if what == "chart" and not report.results:
            # nothing was measured: keep the chart of the last run that measured something
            print(f"  chart: not written (no results), {path} left as it was")
            continue
        try:
            print(f"  {what}: {write(report, path)}")
        except OSError as exc:
            print(f"getpatter bench: cannot write the {what} to {path}: {exc}", file=sys.stderr)
            return 2
    return 0 if report.results else 1

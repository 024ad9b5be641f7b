"""Benchmarks of providers, measured the way a call uses them (`getpatter bench`).

    import asyncio
    from getpatter.bench import BenchOptions, run, table

    report = asyncio.run(run(BenchOptions(stt=["local", "deepgram"], tts=["local"], turn=True)))
    print(table(report))

Or bench one provider instance: `await bench_stt(stt, corpus)`, `bench_llm(llm)`,
`bench_tts(tts)`, `bench_turn(stt, tts, llm, corpus)`; each returns a `Result`. `wer()` is the
word error rate the STT bench reports.
"""

from __future__ import annotations

from getpatter.bench.chart import render_svg, write_svg
from getpatter.bench.corpus import (
    PROMPTS,
    SENTENCES,
    UTTERANCES,
    Utterance,
    builtin_corpus,
    load_corpus,
)
from getpatter.bench.llm import bench_llm
from getpatter.bench.providers import ProviderChoice, build
from getpatter.bench.report import table, to_json, write_csv, write_json
from getpatter.bench.results import METRICS, Report, Result, Sample, Skipped, percentile
from getpatter.bench.runner import BenchOptions, run
from getpatter.bench.stt import bench_stt
from getpatter.bench.tts import bench_tts
from getpatter.bench.turn import bench_turn
from getpatter.bench.wer import WordErrors, normalize, wer, word_errors

__all__ = [
    "METRICS",
    "PROMPTS",
    "SENTENCES",
    "UTTERANCES",
    "BenchOptions",
    "ProviderChoice",
    "Report",
    "Result",
    "Sample",
    "Skipped",
    "Utterance",
    "WordErrors",
    "bench_llm",
    "bench_stt",
    "bench_tts",
    "bench_turn",
    "build",
    "builtin_corpus",
    "load_corpus",
    "normalize",
    "percentile",
    "render_svg",
    "run",
    "table",
    "to_json",
    "wer",
    "word_errors",
    "write_csv",
    "write_json",
    "write_svg",
]

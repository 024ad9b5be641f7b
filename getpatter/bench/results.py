"""What a bench produces: samples, grouped into per-provider results, summarised by percentile.

Times are stored in milliseconds, rates as they are shown (WER in %, RTF as a factor, tokens a
second), so a CSV row reads without a unit table. All times come from `time.perf_counter()`
(or the event loop's clock, both CLOCK_MONOTONIC): wall-clock jumps cannot touch them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "METRICS",
    "MetricInfo",
    "Report",
    "Result",
    "Sample",
    "Skipped",
    "Summary",
    "percentile",
    "summarize",
]

Kind = Literal["stt", "llm", "tts", "turn"]
KINDS: tuple[Kind, ...] = ("stt", "llm", "tts", "turn")


@dataclass(frozen=True, slots=True)
class MetricInfo:
    label: str
    unit: str  # "ms", "%", "x", "tok/s"
    lower_is_better: bool = True


#: Every metric a bench reports, in the order tables show them.
METRICS: dict[str, MetricInfo] = {
    "cold_open_ms": MetricInfo("first open() (cold: models, first connection)", "ms"),
    "open_ms": MetricInfo("open() (connection set-up)", "ms"),
    "final_ms": MetricInfo("speech end → final transcript", "ms"),
    "finalize_to_final_ms": MetricInfo("finalize() → final transcript", "ms"),
    "finalize_at_ms": MetricInfo("speech end → finalize() sent", "ms"),
    "wer_pct": MetricInfo("word error rate (per utterance)", "%"),
    "first_request_ms": MetricInfo("first request: time to first token", "ms"),
    "ttft_ms": MetricInfo("time to first token", "ms"),
    "tokens_per_s": MetricInfo("tokens per second", "tok/s", lower_is_better=False),
    "total_ms": MetricInfo("total time", "ms"),
    "ttfb_ms": MetricInfo("time to first audio byte", "ms"),
    "rtf": MetricInfo("real-time factor (synthesis / audio)", "x"),
    "turn_ms": MetricInfo("caller stops → first agent audio", "ms"),
    "turn_stt_ms": MetricInfo("  caller stops → final transcript", "ms"),
    "turn_reply_ms": MetricInfo("  final transcript → first agent audio", "ms"),
}


@dataclass(frozen=True, slots=True)
class Sample:
    metric: str
    value: float
    run: int  # 1-based; negative: a warm-up, of which only its cold start is recorded
    item: str = ""  # the utterance, prompt or sentence


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    mean: float
    p50: float
    p95: float
    max: float
    min: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "mean": self.mean,
            "p50": self.p50,
            "p95": self.p95,
            "max": self.max,
            "min": self.min,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linearly interpolated between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Summary(
        n=len(values),
        mean=sum(values) / len(values),
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        max=max(values),
        min=min(values),
    )


@dataclass
class Result:
    """One provider (or, for `turn`, one combination of providers) under one bench."""

    kind: Kind
    provider: str
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, value: float, run: int, item: str = "") -> None:
        if metric not in METRICS:
            raise KeyError(f"unknown metric {metric!r}")
        self.samples.append(Sample(metric, float(value), run, item))

    def values(self, metric: str) -> list[float]:
        return [s.value for s in self.samples if s.metric == metric]

    def metrics(self) -> list[str]:
        """The metrics this result has samples of, in table order."""
        present = {s.metric for s in self.samples}
        return [m for m in METRICS if m in present]

    def summary(self, metric: str) -> Summary:
        return summarize(self.values(metric))

    def error(self, message: str) -> None:
        self.errors.append(message)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A provider that was not benched, and what to do about it."""

    kind: str
    provider: str
    reason: str
    env: str | None = None  # the environment variable to set, when a key was missing


@dataclass
class Report:
    meta: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def of(self, kind: str) -> list[Result]:
        return [r for r in self.results if r.kind == kind]

    def find(self, kind: str, provider: str) -> Result:
        for r in self.results:
            if r.kind == kind and r.provider == provider:
                return r
        raise KeyError(f"no {kind} result for {provider!r}")

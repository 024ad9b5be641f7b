"""Prometheus metrics (`pip install 'getpatter[prometheus]'`), served at `/metrics` beside the
dashboard and guarded by the same token.

    getpatter_calls_active{state}                   calls now: pending (ringing, connecting), live
    getpatter_calls_total{outcome,direction}        calls ended, by end reason
    getpatter_turn_latency_seconds{stage}           per turn: endpoint, stt, llm_ttft, llm_total,
                                                    tts_ttfb, total (caller stops → agent audio),
                                                    bargein (caller starts → agent cut)
    getpatter_barge_ins_total                       the caller interrupted the agent
    getpatter_provider_errors_total{component,provider,kind}
                                                    STT/TTS/LLM/engine failures inside calls,
                                                    and a provider too slow: a TTS sentence
                                                    asked for again (tts_retry) or given up
                                                    mid-way (tts_gap), a turn taken from the
                                                    STT's last interim (stt_timeout)
    getpatter_tool_calls_total{tool,ok}             tool calls, by tool and success
    getpatter_call_cost_total{component,currency}   spend of ended calls (stt, tts, llm,
                                                    telephony), from the price table

Each server has its own registry (two `Patter`s in one process do not mix their numbers).
Label values are bounded: an end reason like `error: ValueError` counts as `error`, a task
name loses its call id, a provider is the price table's name for it (`deepgram`, `openai`) or
`none` when the failing part is not a provider.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from getpatter.core.metrics import LATENCY_FIELDS
from getpatter.core.observe import provider_of

if TYPE_CHECKING:
    from getpatter.core.metrics import TurnTimes
    from getpatter.core.session import CallSession

__all__ = ["CONTENT_TYPE_LATEST", "CallMetricsExporter"]

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
_ERRORS = {"error", "reply_error", "engine_error", "tts_retry", "tts_gap"}
_COST = ("stt", "tts", "llm", "telephony")


def _outcome(reason: str) -> str:
    return (reason.split(":", 1)[0].strip() or "unknown")[:40]


def _component(kind: str, data: dict[str, Any]) -> str:
    """Which part failed, with no call id or per-reply number in it."""
    implied = {"reply_error": "reply", "tts_retry": "tts", "tts_gap": "tts"}.get(kind, "")
    where = str(data.get("where") or data.get("engine") or implied)
    where = where.rsplit(":", 1)[-1]  # a task name is "<call id>:<name>"
    return re.sub(r"[-_]?\d+$", "", where)[:40] or "unknown"


class _Live(Collector):
    def __init__(self, sessions: Callable[[], list[CallSession]]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "getpatter_calls_active", "Calls in progress, by state", labels=["state"]
        )
        states = [s.state for s in self._sessions()]
        for state in ("pending", "live"):
            gauge.add_metric([state], states.count(state))
        yield gauge


class CallMetricsExporter:
    """A call observer (see `getpatter.core.observe`) that keeps Prometheus metrics."""

    def __init__(self, sessions: Callable[[], list[CallSession]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_Live(sessions))
        self.calls = Counter(
            "getpatter_calls", "Calls ended, by outcome", ["outcome", "direction"], registry=r
        )
        self.turn_latency = Histogram(
            "getpatter_turn_latency_seconds",
            "Turn latency by stage (total: the caller stops → the agent's first audio)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter(
            "getpatter_barge_ins", "Times the caller interrupted the agent", registry=r
        )
        self.provider_errors = Counter(
            "getpatter_provider_errors",
            "Provider and engine failures inside calls",
            ["component", "provider", "kind"],
            registry=r,
        )
        self.tool_calls = Counter(
            "getpatter_tool_calls", "Tool calls, by tool and outcome", ["tool", "ok"], registry=r
        )
        self.cost = Counter(
            "getpatter_call_cost",
            "Spend of ended calls by component, from the price table",
            ["component", "currency"],
            registry=r,
        )

    # --- the observer --------------------------------------------------------------------

    def call_started(self, call: CallSession) -> None:
        return None

    def call_event(self, call: CallSession, kind: str, data: dict[str, Any]) -> None:
        if kind == "barge_in":
            self.barge_ins.inc()
        elif kind in _ERRORS:
            component = _component(kind, data)
            self.provider_errors.labels(component, provider_of(call, component), kind).inc()
        elif kind == "tool":
            name = str(data.get("name", ""))[:64]
            self.tool_calls.labels(name, "true" if data.get("ok") else "false").inc()

    def turn_completed(self, call: CallSession, times: TurnTimes, turn: dict[str, Any]) -> None:
        if turn.get("stt_timeout"):  # not an event: the turn itself says it
            self.provider_errors.labels("stt", provider_of(call, "stt"), "stt_timeout").inc()
        latency = turn.get("latency") or {}
        for name in LATENCY_FIELDS:
            value = latency.get(name)
            if value is not None:
                self.turn_latency.labels(name.removesuffix("_ms")).observe(float(value) / 1000)

    def call_ended(self, call: CallSession, record: dict[str, Any]) -> None:
        self.calls.labels(_outcome(str(record.get("end_reason", ""))), call.direction).inc()
        cost = (record.get("metrics") or {}).get("cost") or {}
        currency = str(cost.get("currency", "USD"))
        for component in _COST:
            value = cost.get(component)
            if value:
                self.cost.labels(component, currency).inc(float(value))

    # --- the endpoint --------------------------------------------------------------------

    def render(self) -> bytes:
        return _generate(self.registry)

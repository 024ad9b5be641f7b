"""OpenTelemetry tracing (`pip install 'getpatter[otel]'`): a span per call, a child per turn.

- `call` span (kind SERVER) from the carrier's first webhook to the record being written:
  call id, direction, carrier, engine, end reason, duration, turns, cost. Errors, tool calls,
  transfers and hang-ups are span events; a call that ended on an error has status ERROR.
- `turn` span per turn, timed from the moment the caller stopped speaking to the agent's first
  audio (or the end of the reply): each stage's latency (`getpatter.latency.stt_ms`, `…llm_ttft_ms`,
  `…tts_ttfb_ms`, `…total_ms`, …) as attributes, the stages as events at the time they
  happened (`stt.final`, `llm.first_token`, `tts.first_audio`) and a barge-in as a
  `barge_in` event with its `bargein_ms`.
- The call span is current in every task of the call, so log lines written there carry its
  trace and span ids (see `getpatter.logs`) and spans an app makes in its callbacks nest under
  it.

Spans go to the tracer provider given to `serve(tracer_provider=...)`, else OpenTelemetry's
global one (a no-op until the app configures the SDK). Transcripts and phone numbers are not
put on spans: they are personal data, and a trace backend is not where they should end up.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from getpatter.core.metrics import LATENCY_FIELDS
from getpatter.core.observe import provider_of

if TYPE_CHECKING:
    from getpatter.core.metrics import TurnTimes
    from getpatter.core.session import CallSession

__all__ = ["CallTracer"]

_EVENTS = {"tool", "transfer", "hangup", "engine_reconnect", "guardrail", "amd", "dtmf"}
_ERRORS = {"error", "reply_error", "engine_error", "tts_retry", "tts_gap"}
_STAGES = (
    ("final_at", "stt.final"),
    ("text_first_at", "llm.first_token"),
    ("text_done_at", "llm.done"),
    ("first_audio_at", "tts.first_audio"),
    ("model_done_at", "model.done"),
)


def _scalar(value: Any) -> Any:
    return value if isinstance(value, str | bool | int | float) else str(value)


class CallTracer:
    """A call observer (see `getpatter.core.observe`) that records OpenTelemetry spans."""

    def __init__(self, tracer_provider: Any = None, carrier: str = "") -> None:
        from getpatter import __version__

        self._tracer = trace.get_tracer("getpatter", __version__, tracer_provider=tracer_provider)
        self._carrier = carrier
        self._spans: dict[int, trace.Span] = {}

    def call_started(self, call: CallSession) -> None:
        span = self._tracer.start_span(
            "call",
            kind=SpanKind.SERVER,
            attributes={
                "getpatter.call.id": call.call_id,
                "getpatter.call.direction": call.direction,
                "getpatter.carrier": self._carrier,
                "getpatter.agent": call.agent.name,
                "getpatter.agent.mode": call.agent.mode,
            },
        )
        self._spans[id(call)] = span
        # current in every task the call spawns: their log lines and spans belong to it
        call.context.run(otel_context.attach, trace.set_span_in_context(span))

    def call_event(self, call: CallSession, kind: str, data: dict[str, Any]) -> None:
        span = self._spans.get(id(call))
        if span is None:
            return
        if kind in _ERRORS:
            attributes = {f"getpatter.{k}": _scalar(v) for k, v in data.items() if v is not None}
            where = str(data.get("where") or data.get("engine") or "")
            where = where.rsplit(":", 1)[-1] or ("tts" if kind.startswith("tts_") else "reply")
            attributes["getpatter.provider"] = provider_of(call, where)
            span.add_event(kind, attributes)
        elif kind in _EVENTS:
            keep = {k: v for k, v in data.items() if k not in ("arguments", "result", "digit")}
            span.add_event(
                kind, {f"getpatter.{k}": _scalar(v) for k, v in keep.items() if v is not None}
            )
        elif kind == "media_started":
            span.add_event("media_started")
            span.set_attribute("getpatter.call.id", call.call_id)  # outbound: the carrier's id

    def turn_completed(self, call: CallSession, times: TurnTimes, turn: dict[str, Any]) -> None:
        parent = self._spans.get(id(call))
        if parent is None:
            return
        loop_now = asyncio.get_running_loop().time()
        wall_now = time.time_ns()

        def ns(t: float | None) -> int | None:
            return None if t is None else wall_now - int((loop_now - t) * 1e9)

        starts = [times.caller_stopped_at, times.endpointed_at, times.final_at]
        start = next((t for t in starts if t is not None), None)
        ends = [
            t
            for t in (
                times.first_audio_at,
                times.text_done_at,
                times.model_done_at,
                times.cleared_at,
            )
            if t is not None
        ]
        if start is None:  # a greeting: from its first text (or audio)
            start = (
                times.text_first_at if times.text_first_at is not None else min(ends or [loop_now])
            )
        end = max([start, *ends]) if ends else loop_now
        attributes: dict[str, Any] = {
            "getpatter.turn.index": int(turn.get("turn_index", 0)),
            "getpatter.turn.engine": times.engine,
            "getpatter.turn.interrupted": bool(times.interrupted),
            # a provider too slow: sentences asked for again / given up mid-way, and a turn
            # taken from the STT's last interim because no final came in time
            "getpatter.turn.tts_retry": int(times.tts_retry),
            "getpatter.turn.tts_gap": int(times.tts_gap),
            "getpatter.turn.stt_timeout": bool(times.stt_timeout),
        }
        for name in LATENCY_FIELDS:
            value = (turn.get("latency") or {}).get(name)
            if value is not None:
                attributes[f"getpatter.latency.{name}"] = float(value)
        cost = (turn.get("cost") or {}).get("total")
        if cost is not None:
            attributes["getpatter.cost"] = float(cost)
        span = self._tracer.start_span(
            "turn",
            context=trace.set_span_in_context(parent),
            start_time=ns(start),
            attributes=attributes,
        )
        for attr, event in _STAGES:
            at = getattr(times, attr)
            if at is not None:
                span.add_event(event, timestamp=ns(at))
        if times.cleared_at is not None:
            bargein = (turn.get("latency") or {}).get("bargein_ms")
            span.add_event(
                "barge_in",
                {"getpatter.latency.bargein_ms": float(bargein)} if bargein is not None else {},
                timestamp=ns(times.cleared_at),
            )
        if times.stt_timeout:
            span.add_event(
                "stt_timeout",
                {"getpatter.provider": provider_of(call, "stt")},
                timestamp=ns(times.final_at) if times.final_at is not None else None,
            )
        span.end(end_time=ns(end))

    def call_ended(self, call: CallSession, record: dict[str, Any]) -> None:
        span = self._spans.pop(id(call), None)
        if span is None:
            return
        metrics = record.get("metrics") or {}
        reason = str(record.get("end_reason", ""))
        span.set_attribute("getpatter.call.end_reason", reason)
        span.set_attribute("getpatter.call.duration_s", float(record.get("duration") or 0.0))
        span.set_attribute("getpatter.call.turns", int(metrics.get("turn_count") or 0))
        cost = (metrics.get("cost") or {}).get("total")
        if cost is not None:
            span.set_attribute("getpatter.cost", float(cost))
            span.set_attribute("getpatter.cost.currency", str(metrics["cost"].get("currency", "")))
        for role, who in (metrics.get("providers") or {}).items():
            span.set_attribute(f"getpatter.provider.{role}", str(who.get("provider", "")))
        if reason.startswith("error") or reason in ("protocol_error", "media_error", "stt_failed"):
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end()

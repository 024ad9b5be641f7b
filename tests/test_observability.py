"""OpenTelemetry spans (in-memory exporter) and Prometheus `/metrics` (scraped over HTTP) for
whole calls through the simulated phone network."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from getpatter import Patter, Twilio
from getpatter.logs import CallContextFilter, JsonFormatter
from getpatter.testing.providers import ScriptedLLM, ScriptedSTT, ScriptedTTS
from getpatter.testing.simulator import CallerTurn, Simulation, simulate

from helpers import HOST, NUMBER, speech

PRICING = {
    "stt": {"test": {"per_minute": 0.6}},
    "tts": {"test": {"per_1k_chars": 1.0}},
    "llm": {"test": {"input_per_1m": 1000.0, "output_per_1m": 2000.0}},
}
LONG = "Let me tell you all about our opening hours and our many services. " * 4
TOKEN = "metrics-test-token-1234"


def _phone(tmp_path: Any) -> Patter:
    return Patter(
        carrier=Twilio("AC" + "0" * 32, "placeholder"),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=str(tmp_path),
        pricing=PRICING,
    )


def _turns() -> list[CallerTurn]:
    said = speech(lead=0.0, tail=0.0)
    return [
        CallerTurn("what are your hours", audio=said),
        CallerTurn("book me in", audio=said),
        CallerTurn("stop", audio=said, barge=True),
    ]


async def test_a_call_is_a_span_with_a_child_span_per_turn(tmp_path: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    handler.addFilter(CallContextFilter())
    app_log = logging.getLogger("test.app")
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)

    phone = _phone(tmp_path)
    stt = ScriptedSTT(["what are your hours", "book me in", "stop"], latency=0.2)
    llm = ScriptedLLM(["We are open nine to five.", LONG, "Okay."], first_token_delay=0.3)
    tts = ScriptedTTS(first_byte_delay=0.1)
    agent = phone.agent(stt=stt, tts=tts, llm=llm, first_message="Acme, hello.")

    async def on_transcript(event: dict[str, Any]) -> None:
        app_log.info("heard %s", event["text"])

    try:
        result = await simulate(
            phone,
            agent,
            _turns(),
            serve_kwargs={"tracer_provider": provider, "on_transcript": on_transcript},
            printer=None,
        )
    finally:
        app_log.removeHandler(handler)
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name == "call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.kind == SpanKind.SERVER
    attrs = call.attributes or {}
    assert attrs["getpatter.call.id"] == result.record["call_id"]
    assert attrs["getpatter.call.direction"] == "inbound" and attrs["getpatter.carrier"] == "twilio"
    assert attrs["getpatter.call.end_reason"] == "hangup" and attrs["getpatter.call.turns"] == 4
    assert attrs["getpatter.cost"] > 0
    assert call.status.status_code != StatusCode.ERROR
    turns = sorted((s for s in spans if s.name == "turn"), key=lambda s: s.start_time or 0)
    assert len(turns) == 4
    for turn in turns:  # children of the call, in its trace, inside its time
        assert turn.parent is not None and turn.parent.span_id == call.context.span_id
        assert turn.context.trace_id == call.context.trace_id
        assert (call.start_time or 0) <= (turn.start_time or 0) <= (turn.end_time or 0)
        assert (turn.end_time or 0) <= (call.end_time or 0)
    hours = turns[1].attributes or {}
    assert hours["getpatter.turn.index"] == 1
    assert 150 <= hours["getpatter.latency.stt_ms"] <= 400  # ScriptedSTT latency 0.2 s
    assert 280 <= hours["getpatter.latency.llm_ttft_ms"] <= 450  # first token 0.3 s
    assert 90 <= hours["getpatter.latency.tts_ttfb_ms"] <= 250  # first byte 0.1 s
    assert hours["getpatter.latency.total_ms"] > hours["getpatter.latency.llm_ttft_ms"]
    # the span covers the caller stopping → the agent's first audio, with the stages inside
    duration_ms = ((turns[1].end_time or 0) - (turns[1].start_time or 0)) / 1e6
    assert duration_ms >= hours["getpatter.latency.total_ms"] - 5
    at = {e.name: e.timestamp for e in turns[1].events}
    assert at["stt.final"] < at["llm.first_token"] < at["tts.first_audio"]
    assert (turns[1].start_time or 0) < at["stt.final"] and at["tts.first_audio"] <= (
        turns[1].end_time or 0
    )
    booking = turns[2]
    assert (booking.attributes or {})["getpatter.turn.interrupted"] is True
    barge = [e for e in booking.events if e.name == "barge_in"]
    assert barge and 50 <= (barge[0].attributes or {})["getpatter.latency.bargein_ms"] <= 600
    assert not any(e.name == "barge_in" for e in turns[1].events)
    # log lines written inside the call carry its trace context and call id
    inside = [r for r in logged if r.getMessage().startswith("heard ")]
    assert inside
    for record in inside:
        assert record.trace_id == f"{call.context.trace_id:032x}"  # type: ignore[attr-defined]
        assert record.call_id == result.record["call_id"]  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(inside[0]))
    assert line["trace_id"] == f"{call.context.trace_id:032x}" and line["span_id"]
    assert line["call_id"] == result.record["call_id"] and line["logger"] == "test.app"
    # no transcripts or phone numbers on spans
    everything = str([dict(s.attributes or {}) for s in spans])
    assert "+1555" not in everything and "nine to five" not in everything


def _samples(text: str) -> dict[str, float]:
    """`name{labels} value` lines of a Prometheus exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_metrics_are_scraped_from_the_running_server(tmp_path: Any) -> None:
    phone = _phone(tmp_path)
    stt = ScriptedSTT(["what are your hours", "book me in", "stop"])
    llm = ScriptedLLM(["We are open nine to five.", LONG, "Okay."])
    # the greeting's first synthesis fails: a provider error (the sentence is asked for again)
    tts = ScriptedTTS(fail_with=RuntimeError("tts down"), fail_first=1)
    agent = phone.agent(stt=stt, tts=tts, llm=llm, first_message="Acme, hello.")
    scrapes: dict[str, Any] = {}

    async def scrape(label: str, token: str | None = TOKEN) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{phone.port}/metrics"
            async with http.get(url, headers=headers) as resp:
                scrapes[label] = (resp.status, resp.headers.get("Content-Type"), await resp.text())

    async def on_call_start(event: dict[str, Any]) -> None:
        await scrape("during")
        await scrape("no token", None)

    async def after_call(result: Simulation) -> None:
        await scrape("after")

    await simulate(
        phone,
        agent,
        _turns(),
        serve_kwargs={"on_call_start": on_call_start, "dashboard_token": TOKEN},
        printer=None,
        after_call=after_call,
    )
    assert scrapes["no token"][0] == 401
    status, content_type, text = scrapes["during"]
    assert status == 200 and content_type.startswith("text/plain")
    during = _samples(text)
    assert during['getpatter_calls_active{state="live"}'] == 1
    assert during.get('getpatter_calls_total{direction="inbound",outcome="hangup"}', 0) == 0
    after = _samples(scrapes["after"][2])
    assert after['getpatter_calls_active{state="live"}'] == 0
    assert after['getpatter_calls_total{direction="inbound",outcome="hangup"}'] == 1
    assert after['getpatter_turn_latency_seconds_count{stage="total"}'] == 3
    assert after['getpatter_turn_latency_seconds_count{stage="llm_ttft"}'] >= 3
    assert after['getpatter_turn_latency_seconds_bucket{le="5.0",stage="total"}'] == 3
    assert after['getpatter_turn_latency_seconds_count{stage="bargein"}'] == 1
    assert after["getpatter_barge_ins_total"] == 1
    assert (
        after['getpatter_provider_errors_total{component="tts",kind="tts_retry",provider="test"}']
        == 1
    )
    assert after['getpatter_call_cost_total{component="tts",currency="USD"}'] > 0
    assert after['getpatter_call_cost_total{component="telephony",currency="USD"}'] > 0

"""A provider too slow is counted like a provider failing: `tts_gap` (a sentence's audio stopped
mid-way) and `stt_timeout` (no final in time: the turn is the last interim) reach Prometheus'
`getpatter_provider_errors_total` and the OpenTelemetry spans, labelled by provider and kind.

One pipeline call on the virtual clock: Deepgram (its fake, over a real socket) never sends the
final, and the TTS goes silent two chunks into the reply's first sentence.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from getpatter.core.pipeline import PipelineOptions
from getpatter.observability.otel import CallTracer
from getpatter.observability.prometheus import CallMetricsExporter
from getpatter.plugins.deepgram.stt import DeepgramSTT
from getpatter.testing.clock import run_virtual
from getpatter.testing.deepgram import FakeDeepgram
from getpatter.testing.providers import ScriptedTTS

from helpers import speech
from pipeline_harness import open_call

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # websockets.legacy

TEXT = "What time do you open?"
OPTIONS = PipelineOptions()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _slow_call(exporter: CallMetricsExporter, tracer: CallTracer) -> dict[str, Any]:
    async def on_message(m: Any) -> str:
        return "We open at nine. See you then."

    async with FakeDeepgram(transcripts=[TEXT], latency=0.05) as fake:
        fake.stall = "no_final"
        stt = DeepgramSTT(api_key=fake.api_key, base_url=fake.ws_url)
        tts = ScriptedTTS(stall_mid={1: 2})  # the first sentence: two chunks, then nothing
        h = await open_call(stt=stt, tts=tts, on_message=on_message, observers=(exporter, tracer))
        await h.feed(speech("hello.wav", lead=0.2, tail=0.0))
        wait = OPTIONS.final_timeout + OPTIONS.final_grace + 2 * (OPTIONS.audio_gap_timeout or 0)
        await h.silence(wait + 3.0)
        [turn] = h.session.metrics.turns
        await h.close()
        await asyncio.sleep(0)
    return turn


def test_tts_gap_and_stt_timeout_are_counted_by_provider_and_kind() -> None:
    exporter = CallMetricsExporter(lambda: [])
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    turn = run_virtual(_slow_call(exporter, CallTracer(provider, carrier="twilio")))
    assert turn["stt_timeout"] is True and turn["tts_gap"] == 1  # what the call went through

    name = "getpatter_provider_errors_total"
    errors = {
        k.removeprefix(name): v
        for k, v in _samples(exporter.render().decode()).items()
        if k.startswith(name)
    }
    assert errors == {
        '{component="stt",kind="stt_timeout",provider="deepgram"}': 1,
        '{component="tts",kind="tts_gap",provider="test"}': 1,
    }

    [call_span] = [s for s in spans.get_finished_spans() if s.name == "call"]
    [gap] = [e for e in call_span.events if e.name == "tts_gap"]
    assert gap.attributes is not None and gap.attributes["getpatter.provider"] == "test"
    [turn_span] = [s for s in spans.get_finished_spans() if s.name == "turn"]
    assert turn_span.attributes is not None
    assert turn_span.attributes["getpatter.turn.stt_timeout"] is True
    assert turn_span.attributes["getpatter.turn.tts_gap"] == 1
    [timeout] = [e for e in turn_span.events if e.name == "stt_timeout"]
    assert timeout.attributes is not None and timeout.attributes["getpatter.provider"] == "deepgram"

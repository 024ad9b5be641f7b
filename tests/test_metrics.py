"""Per-turn latency, running cost and the price table: units, then whole calls (pipeline through
the call simulator, realtime through the fake Realtime API) reaching `on_metrics`."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from getpatter import OpenAIRealtime, Patter, Twilio
from getpatter.core.metrics import (
    LATENCY_FIELDS,
    CallMetrics,
    MetricsDict,
    TurnTimes,
    percentile,
    provider_key,
)
from getpatter.core.pricing import load_pricing
from getpatter.errors import PatterConfigError
from getpatter.testing.openai_realtime import FakeRealtime
from getpatter.testing.providers import ScriptedLLM, ScriptedSTT, ScriptedTTS
from getpatter.testing.simulator import CallerTurn, simulate
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech

# --- the price table -----------------------------------------------------------------------


def test_the_default_table_is_dated_and_priced() -> None:
    table = load_pricing()
    assert table.version == "2026-12-07" and table.currency == "USD"
    assert table.rates("stt", "deepgram", "nova-3") == {"per_minute": 0.0077}
    assert table.rates("stt", "deepgram", "nova-99") == {"per_minute": 0.0077}  # its default
    assert table.rates("stt", "nobody") is None
    assert table.rates("telephony", "twilio")["inbound_per_minute"] == 0.0085  # type: ignore[index]
    assert table.rates("realtime", "openai", "gpt-realtime")["audio_output_per_1m"] == 64.0  # type: ignore[index]


def test_user_prices_merge_over_the_defaults() -> None:
    table = load_pricing({"deepgram": {"price": 0.005}, "elevenlabs": {"price": 0.2}})
    assert table.version == f"{load_pricing().version}+custom"
    assert table.rates("stt", "deepgram", "nova-2") == {"per_minute": 0.005}  # every model
    assert table.rates("tts", "elevenlabs", "eleven_flash_v2_5") == {"per_1k_chars": 0.2}
    assert table.rates("stt", "assemblyai") == {"per_minute": 0.0025}  # untouched
    table = load_pricing(
        {
            "version": "acme-2026-01",
            "telephony": {"twilio": {"inbound_per_minute": 0.01, "increment_seconds": 1}},
            "llm": {"openai": {"gpt-4o-mini": {"output_per_1m": 0.5}}, "mine": {"input_per_1m": 1}},
            "openai": {"input_per_1m": 9.0},  # shorthand: wherever openai has that field
        }
    )
    assert table.version == "acme-2026-01"
    assert table.rates("telephony", "twilio")["increment_seconds"] == 1  # type: ignore[index]
    mini = table.rates("llm", "openai", "gpt-4o-mini")
    assert mini is not None and mini["output_per_1m"] == 0.5 and mini["input_per_1m"] == 9.0
    assert table.rates("llm", "mine", "any") == {"input_per_1m": 1.0}
    assert load_pricing().rates("llm", "openai", "gpt-4o-mini")["output_per_1m"] == 0.6  # type: ignore[index]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"stt": {"deepgram": {"per_minuet": 1}}}, "unknown field 'per_minuet'"),
        ({"deepgram": {"price": -1}}, "finite number ≥ 0"),
        ({"deepgram": {"price": "cheap"}}, "must be a number"),
        ({"nobody": {"price": 1}}, "no provider 'nobody'"),
        ({"openai": {"price": 1}}, "openai.price is ambiguous"),  # STT, TTS, LLM…
        ({"deepgram": {"per_1k_chars": 1}}, "deepgram.per_1k_chars: not a price"),
        ({"version": ""}, "version must be a non-empty str"),
    ],
)
def test_bad_prices_fail_at_construction(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(PatterConfigError, match=message):
        Patter(carrier=Twilio("AC" + "0" * 32, "tok"), phone_number=NUMBER, pricing=bad)


# --- counting and cost ---------------------------------------------------------------------


def test_cost_of_a_pipeline_call_from_its_usage() -> None:
    class Deepgram:
        pricing_name, model = "deepgram", "nova-3"

    class Eleven:
        pricing_name, model = "elevenlabs", "eleven_flash_v2_5"

    class Gpt:
        pricing_name, model = "openai", "gpt-4o-mini"

    class Engine:
        stt, tts, llm = Deepgram(), Eleven(), Gpt()

    class EngineCall:
        engine = Engine()

    m = CallMetrics(carrier="twilio", direction="inbound")
    m.identify(EngineCall())
    m.add_stt_audio(90.0)
    m.add_tts_chars(2000)
    m.on_event("llm_usage", {"input": 10_000, "output": 1_000, "cached": 2_000})
    cost = m.cost(61.0)  # Twilio bills whole minutes: two
    assert cost["stt"] == pytest.approx(1.5 * 0.0077)
    assert cost["tts"] == pytest.approx(2 * 0.05)
    assert cost["llm"] == pytest.approx((8000 * 0.15 + 2000 * 0.075 + 1000 * 0.6) / 1e6)
    assert cost["telephony"] == pytest.approx(2 * 0.0085)
    assert cost["total"] == pytest.approx(sum(cost[k] for k in ("stt", "tts", "llm", "telephony")))
    assert cost["currency"] == "USD" and cost["unpriced"] == []
    assert m.providers["stt"] == {"provider": "deepgram", "model": "nova-3"}


def test_cost_of_realtime_usage_and_unpriced_providers() -> None:
    m = CallMetrics(carrier="twilio")
    m.on_event(
        "usage",
        {
            "model": "gpt-realtime",
            "input_audio_tokens": 1000,
            "input_text_tokens": 0,
            "cached_tokens": 0,
            "output_audio_tokens": 500,
            "output_text_tokens": 100,
        },
    )
    assert m.cost(0)["llm"] == pytest.approx((1000 * 32 + 500 * 64 + 100 * 16) / 1e6)
    m.providers["stt"] = {"provider": "whisperx-homebrew", "model": ""}
    m.add_stt_audio(60)
    assert m.cost(0)["unpriced"] == ["stt:whisperx-homebrew"]


def test_provider_names_come_from_the_plugin_package() -> None:
    assert provider_key(ScriptedSTT()) == ("test", "")
    engine = OpenAIRealtime(api_key="sk-test", model="gpt-realtime")
    assert provider_key(engine) == ("openai", "gpt-realtime")


def test_turn_latency_fields() -> None:
    t = TurnTimes(
        caller_stopped_at=10.0,
        endpointed_at=10.6,
        final_at=10.8,
        text_first_at=11.1,
        text_done_at=11.5,
        tts_ttfb=0.15,
        first_audio_at=11.25,
        barge_onset_at=12.0,
        cleared_at=12.2,
    )
    assert t.latency() == {
        "endpoint_ms": 600.0,
        "stt_ms": 200.0,
        "llm_ttft_ms": 300.0,
        "llm_total_ms": 700.0,
        "tts_ttfb_ms": 150.0,
        "total_ms": 1250.0,
        "bargein_ms": 200.0,
    }
    rt = TurnTimes("realtime", caller_stopped_at=5.0, final_at=5.4, first_audio_at=5.7)
    rt.model_done_at = 6.0
    lat = rt.latency()
    assert (lat["total_ms"], lat["llm_ttft_ms"], lat["llm_total_ms"]) == (700.0, 700.0, 1000.0)
    assert lat["stt_ms"] == 400.0 and lat["endpoint_ms"] is None and lat["tts_ttfb_ms"] is None


def test_percentiles_and_the_summary() -> None:
    assert percentile([], 50) is None
    assert percentile([100.0, 200.0, 300.0, 400.0], 50) == 250.0
    assert percentile([100.0, 200.0, 300.0, 400.0], 95) == pytest.approx(385.0)
    m = CallMetrics()
    for i, total in enumerate([400.0, 800.0, None]):
        times = TurnTimes(final_at=0.0, first_audio_at=None if total is None else total / 1000)
        event = m.complete(times, 10.0 + i)
        assert event is not None and event.turn.turn_index == i
        assert m.complete(times, 10.0) is None  # once only
    summary = m.summary(12.0)
    assert isinstance(summary, MetricsDict)
    assert summary.latency.p50_ms == 600.0 and summary.latency.max_ms == 800.0
    assert summary.turn_count == 3 and summary.duration_seconds == 12.0
    assert summary["latency_avg"]["total_ms"] == 600.0  # dict and attribute access alike


# --- whole calls -----------------------------------------------------------------------------


def _check_event(event: dict[str, Any], call_id: str) -> None:
    assert event["call_id"] == call_id
    assert set(event["latency"]) == set(LATENCY_FIELDS)
    assert set(event["turn"]) >= {
        "turn_index",
        "engine",
        "user_text",
        "agent_text",
        "interrupted",
        "latency",
        "cost",
    }
    assert set(event["cost"]) >= {"stt", "tts", "llm", "telephony", "total", "currency"}
    assert set(event["call"]) == {"turns", "p50_ms", "p95_ms", "max_ms", "avg_ms"}
    assert event["pricing_version"].startswith(load_pricing().version)


async def test_a_simulated_pipeline_call_reaches_on_metrics_with_every_field(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    phone = Patter(
        carrier=Twilio("AC" + "0" * 32, "placeholder"),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=str(tmp_path),
        pricing={
            "stt": {"test": {"per_minute": 0.6}},
            "tts": {"test": {"per_1k_chars": 1.0}},
            "llm": {"test": {"input_per_1m": 1000.0, "output_per_1m": 2000.0}},
        },
    )
    long_reply = "Let me tell you all about our opening hours and our many services. " * 4
    stt = ScriptedSTT(["what are your hours", "book me in", "stop"], latency=0.2)
    llm = ScriptedLLM(["We are open nine to five.", long_reply, "Okay."], first_token_delay=0.3)
    tts = ScriptedTTS(first_byte_delay=0.1)
    agent = phone.agent(stt=stt, tts=tts, llm=llm, first_message="Acme, hello.")
    seen: list[dict[str, Any]] = []

    async def on_metrics(event: dict[str, Any]) -> None:
        seen.append(event)

    said = speech(lead=0.0, tail=0.0)
    result = await simulate(
        phone,
        agent,
        [
            CallerTurn("what are your hours", audio=said),
            CallerTurn("book me in", audio=said),
            CallerTurn("stop", audio=said, barge=True),
        ],
        serve_kwargs={"on_metrics": on_metrics},
        barge_delay=1.0,
        printer=None,
    )
    call_id = result.record["call_id"]
    assert [e["turn"]["turn_index"] for e in seen] == [0, 1, 2, 3]
    for event in seen:
        _check_event(event, call_id)
    greeting, hours, booking, stop = (e["turn"] for e in seen)
    assert greeting["agent_text"] == "Acme, hello." and greeting["latency"]["total_ms"] is None
    assert hours["user_text"] == "what are your hours"
    assert hours["agent_text"] == "We are open nine to five." and not hours["interrupted"]
    lat = hours["latency"]
    assert 550 <= lat["endpoint_ms"] <= 700  # the VAD's 600 ms of silence
    assert 150 <= lat["stt_ms"] <= 400  # ScriptedSTT latency 0.2 s
    assert 280 <= lat["llm_ttft_ms"] <= 450  # first_token_delay 0.3 s
    assert lat["llm_total_ms"] >= lat["llm_ttft_ms"]
    assert 90 <= lat["tts_ttfb_ms"] <= 250  # first_byte_delay 0.1 s
    parts = lat["endpoint_ms"] + lat["stt_ms"] + lat["llm_ttft_ms"] + lat["tts_ttfb_ms"]
    assert parts - 20 <= lat["total_ms"] <= parts + 150
    # our response latency agrees with what the phone network saw (caller stops → agent audio)
    outside = result.turns[0].latency
    assert outside is not None and abs(lat["total_ms"] / 1000 - outside) < 0.12
    assert lat["bargein_ms"] is None
    assert booking["interrupted"] is True and booking["latency"]["bargein_ms"] is not None
    assert 50 <= booking["latency"]["bargein_ms"] <= 600
    assert long_reply.startswith(booking["agent_text"]) and booking["agent_text"]
    assert stop["user_text"] == "stop" and stop["agent_text"] == "Okay."
    # running cost: it only grows, and the turn's share adds up to it
    totals = [e["cost"]["total"] for e in seen]
    assert totals == sorted(totals) and totals[-1] > 0
    assert math.isclose(sum(e["turn"]["cost"]["total"] for e in seen), totals[-1], abs_tol=1e-5)
    assert seen[-1]["cost"]["tts"] > 0 and seen[-1]["cost"]["stt"] > 0
    assert seen[-1]["cost"]["llm"] > 0 and seen[-1]["cost"]["telephony"] == 0.0085
    # the record: per-call summary, the turns, the cost, the table's version
    metrics = result.record["metrics"]
    assert (
        metrics["turn_count"] == 4
        and metrics["pricing_version"] == f"{load_pricing().version}+custom"
    )
    totals_ms = [t["latency"]["total_ms"] for t in metrics["turns"][1:]]
    assert metrics["latency"]["max_ms"] == max(totals_ms)
    assert min(totals_ms) <= metrics["latency"]["p50_ms"] <= metrics["latency"]["p95_ms"]
    assert metrics["duration_seconds"] == pytest.approx(result.record["duration"], abs=0.05)
    assert metrics["usage"]["tts_characters"] == sum(len(t) for t in tts.texts)
    assert metrics["providers"]["stt"] == {"provider": "test", "model": ""}
    assert metrics.cost.total == metrics["cost"]["total"]  # attribute access, as documented


async def test_on_metrics_failures_do_not_hurt_the_call(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    def on_metrics(event: dict[str, Any]) -> None:
        raise RuntimeError("user bug")

    s = await serve(
        {"stt": ScriptedSTT(["hi"]), "tts": ScriptedTTS(), "first_message": "Hello."},
        on_message=lambda msg: "Hi there.",
        on_metrics=on_metrics,
    )
    audio = np.concatenate([speech(lead=1.5, tail=2.5)])
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    await call.wait_for(lambda: len(s.events.get("on_transcript", [])) >= 3, 10)
    await call.hangup()
    await call.wait_for(lambda: bool(s.events.get("on_call_end")), 5)
    record = s.events["on_call_end"][0]
    assert record["metrics"]["turn_count"] == 2 and record["end_reason"] == "hangup"


# --- realtime --------------------------------------------------------------------------------

KEY = "sk-test-realtime-metrics"


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtime]:
    async with FakeRealtime(KEY, seconds_per_char=0.03) as f:
        yield f


async def test_realtime_turns_reach_on_metrics_with_their_cost(
    serve: Callable[..., Any], net: FakeTwilio, fake: FakeRealtime
) -> None:
    fake.responses = ["Sure, a table for two at eight."]
    fake.transcripts = ["I would like to book a table."]
    seen: list[dict[str, Any]] = []
    engine = OpenAIRealtime(api_key=KEY, base_url=fake.base_url, websocket_base_url=fake.ws_url)
    s = await serve(
        {"engine": engine, "first_message": "Thanks for calling Luigi's!"},
        on_metrics=seen.append,
    )
    z = np.zeros
    clip = speech(lead=0, tail=0)[:6400]
    audio = np.concatenate([z(16000, np.int16), clip, z(8000, np.int16)])
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    for _ in range(200):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.05)
    await call.hangup()
    await call.wait_for(lambda: bool(s.events.get("on_call_end")), 8)
    record = s.events["on_call_end"][0]
    assert len(seen) == 2
    for event in seen:
        _check_event(event, call.call_sid)
    greeting, answer = (e["turn"] for e in seen)
    assert greeting["engine"] == "realtime" and greeting["latency"]["total_ms"] is None
    assert greeting["agent_text"] == "Thanks for calling Luigi's!"
    assert answer["user_text"] == "I would like to book a table."
    assert answer["agent_text"] == "Sure, a table for two at eight."
    lat = answer["latency"]
    # what the phone network saw: the caller's last voiced sample → the agent's next audio
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 300)
    sent = [t for t, kind, _ in call.sent if kind == "media"]
    stopped = sent[loud[-1] // 160] + (loud[-1] % 160 + 1) / 8000  # the frame it went out in
    first = next(t for t, kind, _ in call.received if kind == "media" and t > stopped)
    assert lat["total_ms"] is not None
    assert abs(lat["total_ms"] / 1000 - (first - stopped)) < 0.12
    assert lat["llm_total_ms"] is not None and lat["stt_ms"] is not None
    # the fake model's usage is priced with the default table (OpenAI Realtime)
    assert seen[-1]["cost"]["llm"] > 0 and seen[-1]["cost"]["unpriced"] == []
    assert record["metrics"]["providers"]["realtime"] == {
        "provider": "openai",
        "model": "gpt-realtime",
    }
    assert record["metrics"]["usage"]["realtime_audio_output_tokens"] > 0


async def test_realtime_barge_in_is_timed(
    serve: Callable[..., Any], net: FakeTwilio, fake: FakeRealtime
) -> None:
    greeting = "Welcome to Acme, where we have many wonderful things to tell you about. " * 6
    fake.responses = ["Sorry, go ahead."]
    seen: list[dict[str, Any]] = []
    engine = OpenAIRealtime(api_key=KEY, base_url=fake.base_url, websocket_base_url=fake.ws_url)
    s = await serve({"engine": engine, "first_message": greeting.strip()}, on_metrics=seen.append)
    z = np.zeros
    clip = speech(lead=0, tail=0)[:6400]
    audio = np.concatenate([z(int(1.8 * 8000), np.int16), clip, z(6400, np.int16)])
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    await call.wait_for(lambda: call.clears >= 1, 8)
    for _ in range(200):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.05)
    await call.hangup()
    await call.wait_for(lambda: bool(s.events.get("on_call_end")), 8)
    interrupted, answer = (e["turn"] for e in seen[:2])
    assert interrupted["interrupted"] is True and answer["interrupted"] is False
    # the caller's voice began at 1.8 s; the clear reached the phone soon after
    clear_at = next(t for t, kind, _ in call.received if kind == "clear")
    sent = [t for t, kind, _ in call.sent if kind == "media"]
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 300)[0]
    onset = sent[loud // 160] + (loud % 160) / 8000
    bargein = interrupted["latency"]["bargein_ms"]
    assert bargein is not None and abs(bargein / 1000 - (clear_at - onset)) < 0.15
    assert answer["agent_text"] == "Sorry, go ahead." and answer["latency"]["total_ms"]

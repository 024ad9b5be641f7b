"""GeminiLive end to end: the fake Twilio network on one side, the fake Gemini Live API (TLS)
on the other, the official google-genai SDK in between, over real sockets. The engine-neutral
whole-call tests (barge-in, tools, DTMF, guardrails) run for it in test_calls_shared.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from engine_kits import GEMINI_KEY, Kit, hello

from getpatter import GeminiLive
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError
from getpatter.testing.gemini_live import FakeGeminiLive
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER
from realtime_kit import (
    LONG_GREETING,
    Serve,
    answered,
    barged_in,
    ended,
    greeted,
    hello_call,
    kinds,
    kit_fixture,
    saying,
    transcripts,
)

kit = kit_fixture("gemini")


def test_options_validate_and_hide_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="GOOGLE_API_KEY"):
        GeminiLive()
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-from-env-123456")
    engine = GeminiLive(model="models/gemini-live-x")
    assert engine.key.reveal() == "AIza-from-env-123456"
    assert "from-env" not in repr(engine) and "<set>" in repr(engine)
    assert "from-env" not in str(vars(engine))
    assert engine.model == "gemini-live-x"
    for bad in ({"voice": ""}, {"base_url": "ftp://x"}, {"temperature": "hot"}, {"ssl": "no"}):
        with pytest.raises(PatterConfigError):
            GeminiLive(**bad)


def test_registered_as_an_engine_plugin() -> None:
    spec = Registry().get("engine", "gemini_live")
    assert spec.extra == "google" and spec.installed
    assert spec.load() is GeminiLive


async def test_the_wire_16k_in_24k_out_voice_prompt_tools(
    serve: Serve, net: FakeTwilio, kit: Kit
) -> None:
    agent = kit.agent(["Sure, a table for two."], ["A table please."])
    agent["engine"] = kit.engine(voice="Kore")
    agent.update(system_prompt="You take bookings.", first_message="Luigi's, hello!")
    s, call = await greeted(serve, net, agent, "Luigi's, hello!")
    record = await answered(s, call, "Sure, a table for two.")

    session = kit.fake.sessions[0]
    assert session.model == "models/gemini-2.5-flash-native-audio-preview-12-2025"
    assert session.voice == "Kore" and session.instructions == "You take bookings."
    assert session.tool_names == ["end_call", "transfer_call"]
    assert session.request.headers.get("x-goog-api-key") == GEMINI_KEY
    audio = [m["realtimeInput"]["audio"] for m in session.received if "realtimeInput" in m]
    assert {a["mimeType"] for a in audio} == {"audio/pcm;rate=16000"}
    # the caller's audio reached the model at 16 kHz, as long as it was sent (±0.3 s)
    sent_ms = sum(1 for _, kind, _ in call.sent if kind == "media") * 20
    assert abs(session.audio_ms - sent_ms) < 300
    assert "Say exactly the following, word for word" in session.client_turns[0]
    # the model's 24 kHz tone came down the line as loud μ-law
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 4000
    usage = kinds(record, "usage")
    assert len(usage) == 2 and all(u["output_audio_tokens"] > 0 for u in usage)
    assert usage[1]["input_audio_tokens"] > 0 and usage[0]["model"] == session.model[7:]


async def test_the_models_own_vad_interrupts_and_the_heard_part_is_kept(
    serve: Serve, net: FakeTwilio, kit: Kit
) -> None:
    s, record = await barged_in(serve, net, kit)  # the model's VAD hears the caller first

    assert any(
        "serverContent" in m and m["serverContent"].get("interrupted")
        for m in kit.fake.sessions[0].sent
    )
    first = s.events["on_transcript"][0]
    assert first["interrupted"] is True and LONG_GREETING.startswith(first["text"])
    [barge] = kinds(record, "barge_in")
    assert 1400 < barge["heard_ms"] < 2600


async def test_without_gemini_vad_our_vad_marks_the_turns(
    serve: Serve, net: FakeTwilio, kit: Kit
) -> None:
    agent = kit.agent(["Got it."])
    agent["engine"] = kit.engine(turn_detection=False, input_transcription=False)
    s = await serve(agent)
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(0.3, 1.0))
    await call.wait_for(saying(s, "assistant", "Got it."), 8)
    await call.hangup()
    await ended(s, call)
    session = kit.fake.sessions[0]
    assert session.setup["realtimeInputConfig"]["automaticActivityDetection"]["disabled"]
    signals = [
        k for m in session.received for k in m.get("realtimeInput", {}) if k.startswith("activity")
    ]
    assert signals == ["activityStart", "activityEnd"]
    assert transcripts(s) == [("assistant", "Got it.")]


async def test_a_dropped_socket_is_reopened_with_the_conversation(
    serve: Serve, net: FakeTwilio, kit: Kit
) -> None:
    agent = kit.agent(
        ["We open at nine."], ["When do you open?"], first_message="Hello, Acme here."
    )
    s, call = await greeted(serve, net, agent, "Hello, Acme here.")
    assert await kit.fake.drop_connections() == 1
    await call.wait_for(lambda: len(kit.fake.sessions) == 2 and bool(kit.fake.live_sessions), 5)
    record = await answered(s, call, "We open at nine.")

    resumed = kit.fake.sessions[1]
    assert "Hello, Acme here." in resumed.instructions and "restored" in resumed.instructions
    assert not resumed.client_turns  # no second greeting
    assert len(kinds(record, "engine_reconnect")) == 1 and record["end_reason"] == "hangup"


async def test_when_gemini_stays_unreachable_the_carrier_says_goodbye(
    serve: Serve, net: FakeTwilio, kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    s, call = await greeted(serve, net, kit.agent(first_message="Hi."), "Hi.", 5)
    kit.fake.accepting = False
    await kit.fake.drop_connections()
    record = await ended(s, call)
    assert record["end_reason"] == "engine_failed"
    assert call.said == [GeminiLive.failure_message]
    assert kit.fake.rejected == [503] and "Gemini Live failed" in caplog.text


async def test_a_bad_key_ends_the_call_with_a_clear_error(
    serve: Serve, net: FakeTwilio, kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # (DEBUG: the logging filter of issue 15 item 7)
    agent = kit.agent(first_message="Hi")
    agent["engine"] = kit.engine(api_key="AIza-wrong-key-9876", failure_message="Sorry, bye.")
    record, call = await hello_call(serve, net, agent)
    assert record["end_reason"] == "engine_failed" and call.said == ["Sorry, bye."]
    assert "refused the API key" in caplog.text and "GOOGLE_API_KEY" in caplog.text
    assert "wrong-key" not in caplog.text and "9876" not in caplog.text
    assert kit.fake.closes == [(1007, "API key not valid. Please pass a valid API key.")]
    [error] = kinds(record, "error")
    assert error["error"].startswith("PatterConnectionError")


async def test_an_unknown_model_is_refused_with_the_services_reason(
    serve: Serve, net: FakeTwilio, kit: Kit
) -> None:
    agent = kit.agent()
    agent["engine"] = kit.engine(model="gemini-nope")
    record, _ = await hello_call(serve, net, agent)
    [error] = kinds(record, "error")
    assert (
        error["error"].startswith("ProviderError") and "gemini-nope is not found" in error["error"]
    )
    assert kit.fake.closes[0][0] == 1008


async def test_the_fake_checks_the_key_in_the_query_too() -> None:
    """The service takes the key as `?key=` as well as the header (raw client, no SDK)."""
    import aiohttp

    async with FakeGeminiLive("k-query") as fake:
        url = fake.base_url.replace("https", "wss")
        path = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
        model = "models/gemini-2.5-flash-native-audio-preview-12-2025"
        async with aiohttp.ClientSession() as http:
            for key, expect in (("k-query", "setupComplete"), ("nope", None)):
                async with http.ws_connect(f"{url}{path}?key={key}", ssl=fake.client_ssl()) as ws:
                    await ws.send_json({"setup": {"model": model}})
                    msg = await ws.receive()
                    if expect:
                        assert expect in msg.json()
                    else:
                        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1007

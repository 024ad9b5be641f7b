"""UltravoxRealtime end to end: the fake Twilio network, the fake Ultravox (REST call creation,
then the call's WebSocket), our server and engine in between, over real sockets."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from engine_kits import ULTRAVOX_KEY, Call, Kit

from getpatter import Tool, UltravoxRealtime
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError
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

kit = kit_fixture("ultravox")


def test_options_validate_and_hide_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ULTRAVOX_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="ULTRAVOX_API_KEY"):
        UltravoxRealtime()
    monkeypatch.setenv("ULTRAVOX_API_KEY", "uv-from-env-123456")
    engine = UltravoxRealtime(voice="Mark")
    assert engine.key.reveal() == "uv-from-env-123456"
    assert "from-env" not in repr(engine) and "from-env" not in str(vars(engine))
    for bad in ({"voice": ""}, {"base_url": "ftp://x"}, {"temperature": "hot"}):
        with pytest.raises(PatterConfigError):
            UltravoxRealtime(**bad)


def test_registered_as_an_engine_plugin() -> None:
    spec = Registry().get("engine", "ultravox_realtime")
    assert spec.extra == "ultravox" and spec.installed
    assert spec.load() is UltravoxRealtime


async def test_a_whole_call_with_a_tool(serve: Serve, net: FakeTwilio, kit: Kit) -> None:
    seen: list[dict[str, Any]] = []

    def book(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {"confirmation": "ACME-123"}

    tool = Tool(
        "book",
        "Book a table.",
        {"type": "object", "properties": {"time": {"type": "string"}}, "required": ["time"]},
        handler=book,
    )
    agent = kit.agent(
        [Call("book", {"time": "20:00"}), "Booked, ACME-123."],
        ["A table at eight."],
        tools=[tool],
        system_prompt="You take bookings.",
        first_message="Luigi's, hello!",
    )
    s, call = await greeted(serve, net, agent, "Luigi's, hello!")
    record = await answered(s, call, "Booked, ACME-123.")

    assert transcripts(s) == [
        ("assistant", "Luigi's, hello!"),
        ("user", "A table at eight."),
        ("assistant", "Booked, ACME-123."),
    ]
    assert seen == [{"time": "20:00"}] and kit.tool_outputs() == [{"confirmation": "ACME-123"}]
    [created] = kit.fake.created
    assert created["medium"]["serverWebSocket"]["inputSampleRate"] == 8000
    assert (
        created["systemPrompt"] == "You take bookings."
        and "user" in created["firstSpeakerSettings"]
    )
    tool_def = created["selectedTools"][0]["temporaryTool"]
    assert tool_def["modelToolName"] == "book" and "client" in tool_def
    assert tool_def["dynamicParameters"][0]["required"] is True
    [uv] = kit.fake.calls
    assert uv.forced == ["Luigi's, hello!"]
    sent_ms = sum(1 for _, kind, _ in call.sent if kind == "media") * 20
    assert abs(uv.audio_ms - sent_ms) < 300  # the caller's audio, 8 kHz PCM, in full
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 4000
    assert record["end_reason"] == "hangup" and uv.closed


async def test_ultravox_barges_in_and_the_heard_part_is_kept(
    serve: Serve, net: FakeTwilio, kit: Kit
) -> None:
    s, record = await barged_in(serve, net, kit)  # Ultravox hears the caller before our VAD does

    assert any(m["type"] == "playback_clear_buffer" for m in kit.fake.calls[0].sent)
    first = s.events["on_transcript"][0]
    assert first["interrupted"] is True and LONG_GREETING.startswith(first["text"])
    assert 1400 < kinds(record, "barge_in")[0]["heard_ms"] < 2600


async def test_a_key_press_is_a_user_text_message(serve: Serve, net: FakeTwilio, kit: Kit) -> None:
    menu = "Press one for sales, two for support, or stay on the line for more options. " * 3
    s = await serve(kit.agent(["Connecting you to support."], first_message=menu.strip()))
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: len(call.played) > 8000, 6)
    await call.send_dtmf("2")
    await call.wait_for(saying(s, "assistant", "Connecting you to support."), 10)
    await call.hangup()
    await ended(s, call)
    assert kit.fake.calls[0].user_texts == ["The caller pressed 2 on the keypad."]
    assert call.clears >= 1


async def test_a_dropped_socket_becomes_a_new_call_with_the_conversation(
    serve: Serve, net: FakeTwilio, kit: Kit
) -> None:
    agent = kit.agent(
        ["We open at nine."], ["When do you open?"], first_message="Hello, Acme here."
    )
    s, call = await greeted(serve, net, agent, "Hello, Acme here.")
    assert await kit.fake.drop_connections() == 1
    await call.wait_for(lambda: len(kit.fake.calls) == 2 and bool(kit.fake.live_calls), 5)
    record = await answered(s, call, "We open at nine.")
    resumed = kit.fake.calls[1]
    assert "Hello, Acme here." in resumed.system_prompt and not resumed.forced
    assert len(kinds(record, "engine_reconnect")) == 1 and record["end_reason"] == "hangup"


async def test_when_ultravox_stays_unreachable_the_carrier_says_goodbye(
    serve: Serve, net: FakeTwilio, kit: Kit
) -> None:
    s, call = await greeted(serve, net, kit.agent(first_message="Hi."), "Hi.")
    kit.fake.accepting = False
    await kit.fake.drop_connections()
    record = await ended(s, call)
    assert record["end_reason"] == "engine_failed"
    assert call.said == [UltravoxRealtime.failure_message] and kit.fake.rejected == [503]


async def test_a_bad_key_ends_the_call_with_a_clear_error(
    serve: Serve, net: FakeTwilio, kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    agent = kit.agent(first_message="Hi")
    agent["engine"] = kit.engine(api_key="uv-wrong-key-9876", failure_message="Sorry, bye.")
    record, call = await hello_call(serve, net, agent)
    assert record["end_reason"] == "engine_failed" and call.said == ["Sorry, bye."]
    assert "refused the API key (HTTP 403)" in caplog.text and "ULTRAVOX_API_KEY" in caplog.text
    assert "wrong-key" not in caplog.text and "9876" not in caplog.text
    assert kit.fake.rejected == [403] and not kit.fake.calls
    assert ULTRAVOX_KEY not in str(record)

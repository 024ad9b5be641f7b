"""OpenAIRealtime end to end: the fake Twilio network on one side, the fake Realtime API on the
other, our server and engine in between, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from engine_kits import hello

from getpatter import Guardrail, OpenAIRealtime, Patter, Tool, Twilio
from getpatter.core import realtime as core_realtime
from getpatter.core.realtime import cut_to_heard
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError
from getpatter.testing.openai_realtime import FakeRealtime, FunctionCall
from getpatter.testing.twilio import FakeCall, FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech
from realtime_kit import ended, kinds, transcripts
from realtime_kit import saying as has_transcript

KEY = "sk-test-realtime-key"
Serve = Callable[..., Any]


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtime]:
    async with FakeRealtime(KEY, seconds_per_char=0.03) as f:  # brisk speech: short tests
        yield f


def realtime(fake: FakeRealtime, **kwargs: Any) -> OpenAIRealtime:
    return OpenAIRealtime(
        api_key=kwargs.pop("api_key", KEY),
        base_url=fake.base_url,
        websocket_base_url=fake.ws_url,
        **kwargs,
    )


# --- options -------------------------------------------------------------------------------


def test_options_validate_and_hide_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="OPENAI_API_KEY"):
        OpenAIRealtime()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-123456")
    engine = OpenAIRealtime(temperature=0.8)
    assert "sk-from-env" not in repr(engine) and "<set>" in repr(engine)
    assert "sk-from-env" not in str(vars(engine))
    assert engine.key.reveal() == "sk-from-env-123456"
    assert engine.turn_detection is not None and engine.turn_detection["type"] == "server_vad"
    quiet = OpenAIRealtime(barge_in=False, turn_detection={"type": "semantic_vad"})
    assert quiet.turn_detection == {
        "type": "semantic_vad",
        "create_response": True,
        "interrupt_response": False,
    }
    for bad in (
        {"voice": ""},
        {"turn_detection": {"type": "push_to_talk"}},
        {"base_url": "ftp://x"},
        {"websocket_base_url": "nope"},
        {"input_transcription": ""},
        {"temperature": "hot"},
    ):
        with pytest.raises(PatterConfigError):
            OpenAIRealtime(**bad)


def test_tts_voices_are_mapped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    with pytest.warns(UserWarning, match="'nova'.*'marin'"):
        assert OpenAIRealtime(voice="nova").voice == "marin"
    with pytest.warns(UserWarning):
        assert OpenAIRealtime(voice="onyx").voice == "cedar"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert OpenAIRealtime(voice="cedar").voice == "cedar"
        assert OpenAIRealtime(voice="voice_1234").voice == "voice_1234"  # a custom voice


def test_registered_as_an_engine_plugin() -> None:
    spec = Registry().get("engine", "openai_realtime")
    assert spec.extra == "openai" and spec.installed
    assert spec.load() is OpenAIRealtime


def test_cut_to_heard() -> None:
    text = "Thank you for calling Acme, how can I help you today?"
    assert cut_to_heard(text, 1.0) == text
    assert cut_to_heard(text, 0.0) == ""
    assert cut_to_heard(text, 0.5) == "Thank you for calling Acme"


# --- whole calls ---------------------------------------------------------------------------


async def test_greeting_then_a_turn_with_audio_untouched(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    fake.responses = ["Sure, a table for two at eight."]
    fake.transcripts = ["I would like to book a table."]
    s = await serve(
        {
            "engine": realtime(fake),
            "system_prompt": "You take bookings for Luigi's.",
            "first_message": "Thanks for calling Luigi's!",
        }
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(2.0, 1.0))
    await call.wait_for(has_transcript(s, "assistant", "Sure, a table for two at eight."), 10)
    await call.hangup()
    record = await ended(s, call)

    assert transcripts(s) == [
        ("assistant", "Thanks for calling Luigi's!"),
        ("user", "I would like to book a table."),
        ("assistant", "Sure, a table for two at eight."),
    ]
    session = fake.sessions[0]
    assert session.model == "gpt-realtime"
    assert session.input_format == session.output_format == "audio/pcmu"
    assert session.voice == "marin" and session.instructions == "You take bookings for Luigi's."
    assert session.tool_names == ["end_call", "transfer_call"]
    greeting = next(e for e in session.received if e["type"] == "response.create")
    assert "Thanks for calling Luigi's!" in greeting["response"]["instructions"]
    # No transcoding either way: the model's μ-law reached the phone byte for byte, and the
    # phone's μ-law reached the model as the carrier sent it.
    item = next(e["item_id"] for e in session.sent if e["type"] == "response.output_audio.delta")
    said = b"".join(
        base64.b64decode(e["delta"])
        for e in session.sent
        if e["type"] == "response.output_audio.delta" and e["item_id"] == item
    )
    assert bytes(call.played).find(said) == 0
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 4000
    appended = [
        base64.b64decode(e["audio"])
        for e in session.received
        if e["type"] == "input_audio_buffer.append"
    ]
    media = b"".join(
        base64.b64decode(m["media"]["payload"]) for _, k, m in call.sent if k == "media"
    )
    # 60 ms appends (three carrier frames; a control event flushes a shorter one before it),
    # the bytes as the phone sent them, in order
    sizes = [len(a) for a in appended]
    assert len(sizes) > 30 and max(sizes) == 480 and sizes.count(480) > 0.9 * len(sizes)
    assert media.startswith(b"".join(appended))
    usage = kinds(record, "usage")
    assert len(usage) == 2 and all(u["output_audio_tokens"] > 0 for u in usage)
    assert usage[1]["input_audio_tokens"] > 0
    assert record["end_reason"] == "hangup"
    assert all(s.closed for s in fake.sessions)


async def test_a_tool_call_runs_and_its_result_reaches_the_model(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def book(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        seen.append((args, ctx))
        return {"confirmation": "ACME-123", "time": args["time"]}

    fake.responses = [FunctionCall("book", {"time": "20:00"}), "You're booked, ACME-123."]
    tool = Tool(
        "book",
        "Book a table.",
        {"type": "object", "properties": {"time": {"type": "string"}}},
        handler=book,
    )
    s = await serve({"engine": realtime(fake), "tools": [tool]})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(0.3, 1.0))
    await call.wait_for(has_transcript(s, "assistant", "You're booked, ACME-123."), 10)
    await call.hangup()
    record = await ended(s, call)

    assert seen[0][0] == {"time": "20:00"} and seen[0][1]["call_id"] == call.call_sid
    session = fake.sessions[0]
    assert session.tool_names == ["book", "end_call", "transfer_call"]
    tools = session.config["tools"]
    assert tools[0]["type"] == "function" and tools[0]["parameters"]["properties"]
    [output] = session.tool_outputs
    assert json.loads(output["output"]) == {"confirmation": "ACME-123", "time": "20:00"}
    kinds_sent = [e["type"] for e in session.received if e["type"] != "input_audio_buffer.append"]
    at = kinds_sent.index("conversation.item.create")
    assert kinds_sent[at + 1] == "response.create"
    assert [(t["name"], t["ok"]) for t in kinds(record, "tool")] == [("book", True)]
    assert not session.errors


@pytest.mark.parametrize(
    "reply, end_reason",
    [
        (FunctionCall("end_call"), "agent_hangup"),
        (FunctionCall("transfer_call", {"number": "+15550001111"}), "transferred"),
    ],
)
async def test_builtin_tools_end_or_transfer_the_call(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime, reply: FunctionCall, end_reason: str
) -> None:
    fake.responses = [reply]
    s = await serve({"engine": realtime(fake), "first_message": "Hello!"})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(0.6, 1.0))
    record = await ended(s, call, 10)
    assert record["end_reason"] == end_reason
    if end_reason == "transferred":
        assert call.transfers == ["+15550001111"]
    # The action waited for the greeting to play out in full.
    assert ("assistant", "Hello!") in transcripts(s)


GREETING = "Welcome to Acme, where we have many wonderful things to tell you about. " * 6


async def interrupted_greeting(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> tuple[Any, FakeCall, dict[str, Any], float, float]:
    """The caller talks 1.8 s into a long greeting; the agent answers "Sorry, go ahead."
    Returns (served, call, record, ms heard when the clear came, when it came)."""
    fake.responses = ["Sorry, go ahead."]
    s = await serve({"engine": realtime(fake), "first_message": GREETING.strip()})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(1.8, 0.8))
    await call.wait_for(lambda: call.clears >= 1, 8)
    heard_at_clear_ms = len(call.played) / 8
    await call.wait_for(has_transcript(s, "assistant", "Sorry, go ahead."), 8)
    clear_at = next(t for t, kind, _ in call.received if kind == "clear")
    await call.hangup()
    record = await ended(s, call)
    return s, call, record, heard_at_clear_ms, clear_at


async def test_barge_in_truncates_at_what_the_caller_heard(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    greeting = GREETING
    s, call, record, heard_at_clear_ms, clear_at = await interrupted_greeting(serve, net, fake)

    [truncate] = fake.truncates
    assert truncate["ok"] and truncate["content_index"] == 0
    assert abs(truncate["audio_end_ms"] - heard_at_clear_ms) <= 100
    assert 1200 < truncate["audio_end_ms"] < 2600  # ~2 s in: far from the greeting's ~13 s
    session = fake.sessions[0]
    cancelled = [
        e
        for e in session.sent
        if e["type"] == "response.done" and e["response"]["status"] == "cancelled"
    ]
    assert cancelled  # the greeting was still being generated: the model stopped it
    first = s.events["on_transcript"][0]
    assert first["role"] == "assistant" and first["interrupted"] is True
    assert 10 < len(first["text"]) < len(greeting) / 3
    assert greeting.startswith(first["text"])
    # Nothing of the greeting reached the caller after the clear: the next audio is the reply,
    # which comes only after the caller stopped talking.
    media_after = [t for t, kind, _ in call.received if kind == "media" and t > clear_at]
    assert media_after and media_after[0] - clear_at > 1.0
    assert kinds(record, "barge_in")[0]["heard_ms"] == truncate["audio_end_ms"]


async def test_our_vad_barges_in_before_a_slow_model_vad(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    """Whichever is first: the model's VAD here needs 400 ms of speech to say so, ours 120 ms,
    so the agent stops when ours hears the caller, and the model is told by our cancel."""
    fake.vad_start_ms = 400
    s, call, record, heard_at_clear_ms, clear_at = await interrupted_greeting(serve, net, fake)

    media_sent = [t for t, kind, _ in call.sent if kind == "media"]
    onset = media_sent[int(1.8 / 0.020)]  # the caller's first frame of speech
    assert 0.1 < clear_at - onset < 0.3  # our VAD's 120 ms, not the model's 400 ms
    session = fake.sessions[0]
    kinds_received = [e["type"] for e in session.received]
    assert "response.cancel" in kinds_received
    [truncate] = fake.truncates
    assert truncate["ok"] and abs(truncate["audio_end_ms"] - heard_at_clear_ms) <= 100
    assert kinds(record, "barge_in")[0]["heard_ms"] == truncate["audio_end_ms"]
    first = s.events["on_transcript"][0]
    assert first["role"] == "assistant" and first["interrupted"] is True


async def test_our_vad_leaves_a_reply_being_thought_about_to_the_model(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    """The caller makes a short sound before any of the reply has played: nothing to cut, so
    our VAD does not cancel (whether it was a turn is the model's VAD's call: here it was
    too short for it), and the reply is heard in full."""
    fake.vad_start_ms = 400
    fake.first_audio_delay = 1.5  # the model thinks for a while before speaking
    fake.responses = ["Of course."]
    s = await serve({"engine": realtime(fake)})
    # "Hello" then, while the model is still thinking, a short "hm" the model's VAD ignores
    audio = np.concatenate([hello(0.3, 0.9), hello(0.0, 2.0)[:2400]])
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    await call.wait_for(has_transcript(s, "assistant", "Of course."), 10)
    await call.hangup()
    await ended(s, call)

    assert call.clears == 0
    assert "response.cancel" not in [e["type"] for e in fake.sessions[0].received]


async def test_a_key_press_is_a_turn_for_the_model(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    greeting = "Press one for sales, two for support, or stay on the line for more options. " * 4
    fake.responses = ["Connecting you to support."]
    s = await serve({"engine": realtime(fake), "first_message": greeting.strip()})
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: len(call.played) > 8000, 5)  # a second of the menu heard
    await call.send_dtmf("2")
    await call.wait_for(has_transcript(s, "assistant", "Connecting you to support."), 8)
    await call.hangup()
    record = await ended(s, call)

    assert call.clears == 1  # the menu stopped at the key press
    said = [e for e in s.events["on_transcript"] if e["role"] == "user"]
    assert said == [
        {
            "call_id": record["call_id"],
            "role": "user",
            "text": "The caller pressed 2 on the keypad.",
            "dtmf": "2",
        }
    ]
    session = fake.sessions[0]
    [item] = [e["item"] for e in session.received if e["type"] == "conversation.item.create"]
    assert item["role"] == "user" and item["content"][0]["text"] == said[0]["text"]
    types = [e["type"] for e in session.received]
    created = types.index("conversation.item.create")
    assert types.index("response.cancel") < created  # the menu's reply stopped first
    assert "response.create" in types[created:]
    assert kinds(record, "barge_in")


async def test_guardrail_replaces_the_reply(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    replacement = "I'm not able to provide legal guidance."
    fake.responses = ["Honestly you should file a lawsuit against them right away."]
    s = await serve(
        {
            "engine": realtime(fake),
            "guardrails": [
                Guardrail("No legal advice", blocked_terms=["lawsuit"], replacement=replacement)
            ],
        }
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(0.3, 1.0))
    await call.wait_for(has_transcript(s, "assistant", replacement), 10)
    await call.hangup()
    record = await ended(s, call)

    assert not any("lawsuit" in text for _, text in transcripts(s))
    assert [e["name"] for e in kinds(record, "guardrail")] == ["No legal advice"]
    session = fake.sessions[0]
    creates = [e for e in session.received if e["type"] == "response.create"]
    assert replacement in creates[-1]["response"]["instructions"]
    sent = [e["type"] for e in session.received]
    assert sent.index("response.cancel") < len(sent) - 1 - sent[::-1].index("response.create")
    assert call.clears >= 1
    assert not [e for e in session.errors if e["code"] != "response_cancel_not_active"]


async def test_a_guardrail_whose_check_raises_blocks_the_reply(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    """One policy for both engines: a check that raises counts as violated (fail closed)."""

    def broken(text: str) -> bool:
        raise RuntimeError("the moderation service is down")

    replacement = "Let me find someone who can help with that."
    fake.responses = ["Here is exactly what you asked for, in detail."]
    s = await serve(
        {
            "engine": realtime(fake),
            "guardrails": [Guardrail("Moderation", check=broken, replacement=replacement)],
        }
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(0.3, 1.0))
    await call.wait_for(has_transcript(s, "assistant", replacement), 10)
    await call.hangup()
    record = await ended(s, call)

    assert not any("exactly what you asked" in text for _, text in transcripts(s))
    assert [e["name"] for e in kinds(record, "guardrail")] == ["Moderation"]
    creates = [e for e in fake.sessions[0].received if e["type"] == "response.create"]
    assert replacement in creates[-1]["response"]["instructions"]


def configured(fake: FakeRealtime, n: int) -> bool:
    """The n-th session is open and has confirmed its settings (a drop before that is a
    reconnect that failed, not a session that dropped)."""
    return (
        len(fake.sessions) == n
        and not fake.sessions[-1].closed
        and any(e["type"] == "session.updated" for e in fake.sessions[-1].sent)
    )


async def test_the_model_socket_may_drop_again_later_in_the_call(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    """Reconnects are budgeted per minute, not per call: a second drop is survived too."""
    fake.responses = ["We open at nine."]
    fake.transcripts = ["When do you open?"]
    s = await serve({"engine": realtime(fake), "first_message": "Hello, Acme here."})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(3.5, 1.0))
    await call.wait_for(has_transcript(s, "assistant", "Hello, Acme here."), 5)
    for n in (2, 3):
        assert await fake.drop_connections() == 1
        await call.wait_for(
            lambda n=n: len(fake.live_sessions) == 1 == n - len(fake.sessions) + 1, 5
        )
    await call.wait_for(has_transcript(s, "assistant", "We open at nine."), 10)
    await call.hangup()
    record = await ended(s, call)

    assert len(fake.sessions) == 3
    assert len(kinds(record, "engine_reconnect")) == 2
    assert record["end_reason"] == "hangup"
    assert "Hello, Acme here." in fake.sessions[2].instructions


async def test_a_model_that_keeps_dropping_ends_the_call(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget: more drops within a minute than `RECONNECTS_PER_MINUTE` and the call ends
    with the carrier's goodbye (short backoffs, so the test takes a second, not eight)."""
    monkeypatch.setattr(core_realtime, "BACKOFF", (0.0, 0.05))
    s = await serve({"engine": realtime(fake), "first_message": "Hi."})
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(has_transcript(s, "assistant", "Hi."), 5)
    for n in range(core_realtime.RECONNECTS_PER_MINUTE + 1):
        await call.wait_for(lambda n=n: configured(fake, n + 1), 5)
        assert await fake.drop_connections() == 1
    record = await ended(s, call)
    assert record["end_reason"] == "engine_failed"
    assert len(kinds(record, "engine_reconnect")) == core_realtime.RECONNECTS_PER_MINUTE
    assert call.said == [OpenAIRealtime.failure_message]
    assert "within a minute" in kinds(record, "error")[0]["error"]


async def test_a_dropped_model_socket_is_reopened_with_the_conversation(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    fake.responses = ["We open at nine."]
    fake.transcripts = ["When do you open?"]
    s = await serve({"engine": realtime(fake), "first_message": "Hello, Acme here."})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(1.5, 1.0))
    await call.wait_for(has_transcript(s, "assistant", "Hello, Acme here."), 5)
    assert await fake.drop_connections() == 1
    await call.wait_for(has_transcript(s, "assistant", "We open at nine."), 10)
    await call.hangup()
    record = await ended(s, call)

    assert len(fake.sessions) == 2
    resumed = fake.sessions[1]
    assert "Hello, Acme here." in resumed.instructions
    assert resumed.input_format == resumed.output_format == "audio/pcmu"
    assert not [e for e in resumed.received if e["type"] == "response.create"]  # no re-greeting
    assert len(kinds(record, "engine_reconnect")) == 1
    assert record["end_reason"] == "hangup"


async def test_when_the_model_cannot_be_reached_again_the_call_ends(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    s = await serve({"engine": realtime(fake), "first_message": "Hi."})
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(has_transcript(s, "assistant", "Hi."), 5)
    fake.accepting = False
    await fake.drop_connections()
    record = await ended(s, call)
    assert record["end_reason"] == "engine_failed"
    await call.wait_ended(5)
    assert call.status == "completed"
    # the model that would apologise is gone: the carrier says goodbye in its own voice
    assert call.said == [OpenAIRealtime.failure_message]
    assert record["transcript"][-1]["text"] == OpenAIRealtime.failure_message
    assert fake.rejected == [503]
    assert "OpenAI Realtime failed" in caplog.text


async def test_a_bad_key_ends_the_call_with_a_clear_error(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    engine = realtime(fake, api_key="sk-wrong-key-9876", failure_message="Sorry, goodbye.")
    s = await serve({"engine": engine, "first_message": "Hi"})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech())
    record = await ended(s, call, 5)
    assert record["end_reason"] == "engine_failed"
    assert call.said == ["Sorry, goodbye."]
    assert "refused the API key (HTTP 401" in caplog.text and "OPENAI_API_KEY" in caplog.text
    assert "sk-wrong" not in caplog.text and "9876" not in caplog.text
    [error] = kinds(record, "error")
    assert error["error"].startswith("PatterConnectionError")
    assert fake.rejected == [401] and not fake.sessions


async def test_without_server_vad_our_vad_ends_the_turn(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    fake.responses = ["Got it."]
    s = await serve({"engine": realtime(fake, turn_detection=None, input_transcription=None)})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(0.3, 1.0))
    await call.wait_for(has_transcript(s, "assistant", "Got it."), 8)
    await call.hangup()
    await ended(s, call)
    session = fake.sessions[0]
    assert session.turn_detection is None
    assert session.config["audio"]["input"]["transcription"] is None
    sent = [e["type"] for e in session.received if e["type"] != "input_audio_buffer.append"]
    assert sent[-2:] == ["input_audio_buffer.commit", "response.create"]
    assert transcripts(s) == [("assistant", "Got it.")]


# --- the spec's Complete Example -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_complete_example_with_openai_realtime(
    net: FakeTwilio,
    fake: FakeRealtime,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spec's example as written, with `OpenAIRealtime(voice="nova")` and the key from the
    environment; only the SDK's URLs (and the carrier's) point at the fakes."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    port = free_port()
    net.route(HOST, f"127.0.0.1:{port}")
    fake.responses = [
        FunctionCall(
            "schedule_appointment",
            {"name": "Ann Lee", "date": "2025-03-03", "time": "10:00", "reason": "checkup"},
        ),
        "You're all set for March third at ten.",
    ]
    phone = Patter(
        carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
    )

    async def schedule_appointment(args: dict, ctx: dict) -> dict:  # type: ignore[type-arg]
        return {"confirmation": "ACME-123", "date": args["date"], "time": args["time"]}

    with pytest.warns(UserWarning, match="nova"):
        engine = OpenAIRealtime(voice="nova")  # OPENAI_API_KEY from env
    engine.base_url, engine.websocket_base_url = fake.base_url, fake.ws_url  # (test only)

    agent = phone.agent(
        engine=engine,
        system_prompt="""You are a friendly receptionist for Acme Corp.
Help callers schedule appointments, answer general questions, and transfer to the right department.
Transfer billing questions to +15550001111.
Transfer technical support to +15550002222.""",
        first_message="Thank you for calling Acme Corp! How can I help you today?",
        tools=[
            Tool(
                name="schedule_appointment",
                description="Schedule an appointment for the caller.",
                parameters={
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "Caller's full name"},
                        "date": {"type": "string", "description": "Preferred date (YYYY-MM-DD)"},
                        "time": {"type": "string", "description": "Preferred time (HH:MM)"},
                        "reason": {"type": "string", "description": "Reason for appointment"},
                    },
                    "required": ["name", "date", "time"],
                },
                handler=schedule_appointment,
            ),
        ],
        guardrails=[
            Guardrail(
                name="No legal advice",
                blocked_terms=["lawsuit", "sue", "legal action"],
                replacement="I'm not able to provide legal guidance. Let me transfer you to our legal department.",  # noqa: E501
            ),
        ],
    )

    async def on_call_start(event):  # type: ignore[no-untyped-def]
        print(f"[CALL START] {event['direction']} call {event['call_id']}")
        print(f"  From: {event['caller']} -> To: {event['callee']}")

    async def on_call_end(event):  # type: ignore[no-untyped-def]
        print(f"[CALL END] {event['call_id']}")
        for entry in event["transcript"]:
            print(f"  [{entry['role']}]: {entry['text']}")

    async def on_transcript(event):  # type: ignore[no-untyped-def]
        print(f"  [{event['role']}]: {event['text']}")

    async def main() -> None:
        await phone.serve(
            agent,
            port=port,
            recording=True,
            on_call_start=on_call_start,
            on_call_end=on_call_end,
            on_transcript=on_transcript,
            voicemail_message="Hi, this is Acme Corp. Please call us back at your earliest convenience.",  # noqa: E501
        )

    server = asyncio.create_task(main())
    await phone.ready
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello(2.5, 1.0))
    final = "  [assistant]: You're all set for March third at ten."
    printed: list[str] = []

    def said_final() -> bool:
        printed.append(capsys.readouterr().out)
        return final in "".join(printed)

    await call.wait_for(said_final, 12)
    await call.hangup()
    await call.wait_ended()
    await asyncio.sleep(0.2)
    await phone.disconnect()
    await asyncio.wait_for(server, 5)
    out = "".join(printed) + capsys.readouterr().out
    assert f"[CALL START] inbound call {call.call_sid}" in out
    assert "  [assistant]: Thank you for calling Acme Corp! How can I help you today?" in out
    assert final in out
    assert f"[CALL END] {call.call_sid}" in out
    session = fake.sessions[0]
    assert session.voice == "marin"
    assert json.loads(session.tool_outputs[0]["output"])["confirmation"] == "ACME-123"
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 4000


async def test_a_hangup_while_the_agent_speaks_closes_the_model_socket(
    serve: Serve, net: FakeTwilio, fake: FakeRealtime
) -> None:
    """The caller hangs up mid-greeting: the record keeps what was heard and the model's
    socket is closed (a cancelled playout future must not cut the engine's close short)."""
    fake.audio_speed = 0  # the whole greeting arrives at once: it is done, but still playing
    s = await serve({"engine": realtime(fake), "first_message": GREETING.strip()})
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: len(call.played) > 8000, 8)  # a second of the greeting heard
    await call.hangup()
    record = await ended(s, call)
    [entry] = record["transcript"]
    assert GREETING.startswith(entry["text"]) and 0 < len(entry["text"]) < len(GREETING) / 3
    await call.wait_for(lambda: all(sess.closed for sess in fake.sessions), 5)

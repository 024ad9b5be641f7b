"""The fake OpenAI Realtime service, driven by the official `openai` SDK as its client."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus

from getpatter.core.audio import pcm16_array, ulaw_decode, ulaw_encode
from getpatter.testing.openai_realtime import FakeRealtime, FunctionCall

from helpers import speech

MODEL = "gpt-realtime"
PCMU_SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": "Be brief.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": {
                "type": "server_vad",
                "silence_duration_ms": 500,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtime]:
    async with FakeRealtime(audio_speed=0) as f:
        yield f


def client(fake: FakeRealtime, key: str = "sk-test") -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=fake.base_url, websocket_base_url=fake.ws_url)


async def events_until(conn: Any, done: Callable[[Any], bool], limit: int = 2000) -> list[Any]:
    out = []
    for _ in range(limit):
        event = await conn.recv()
        out.append(event)
        if done(event):
            return out
    raise AssertionError("event never came")


def is_type(kind: str) -> Callable[[Any], bool]:
    return lambda e: e.type == kind


async def append_speech(conn: Any, pcm: np.ndarray) -> None:
    mu = ulaw_encode(pcm)
    for i in range(0, len(mu), 160):
        await conn.input_audio_buffer.append(audio=base64.b64encode(mu[i : i + 160]).decode())


async def configured(conn: Any, session: dict[str, Any] = PCMU_SESSION) -> None:
    await conn.session.update(session=session)
    await events_until(conn, is_type("session.updated"))


# --- connecting ----------------------------------------------------------------------------


async def test_wrong_key_is_refused_with_401_and_openais_error_shape(fake: FakeRealtime) -> None:
    with pytest.raises(InvalidStatus) as err:
        async with client(fake, "sk-wrong-key-1234").realtime.connect(model=MODEL):
            pass
    assert err.value.response.status_code == 401
    async with aiohttp.ClientSession() as http:
        url = f"{fake.base_url}/realtime?model={MODEL}"
        async with http.get(url, headers={"Authorization": "Bearer sk-nope-nope-nope"}) as r:
            assert r.status == 401
            body = await r.json()
        async with http.get(url) as r:
            assert r.status == 401
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert "sk-nope-nope-nope" not in error["message"]
    assert fake.rejected == [401, 401, 401] and not fake.sessions


async def test_session_created_first_then_update_applies(fake: FakeRealtime) -> None:
    async with client(fake).realtime.connect(model=MODEL) as conn:
        first = await conn.recv()
        assert first.type == "session.created" and first.event_id
        tools = [{"type": "function", "name": "lookup", "description": "x", "parameters": {}}]
        await conn.session.update(session={**PCMU_SESSION, "tools": tools})
        updated = (await events_until(conn, is_type("session.updated")))[-1]
        assert updated.session.audio.output.voice == "marin"
        assert updated.session.audio.input.format.type == "audio/pcmu"
        assert updated.session.instructions == "Be brief."
    session = fake.sessions[0]
    assert session.model == MODEL and session.tool_names == ["lookup"]
    assert [e["type"] for e in fake.received] == ["session.update"]


@pytest.mark.parametrize(
    "bad, param",
    [
        ({"audio": {"output": {"voice": "nova"}}}, "session.audio.output.voice"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "rate"),
        ({"audio": {"output": {"format": {"type": "g711_ulaw"}}}}, "format"),
        (
            {"tools": [{"type": "function", "function": {"name": "chat_shape"}}]},
            "session.tools[0]",
        ),
    ],
)
async def test_invalid_session_update_is_an_error_and_not_applied(
    fake: FakeRealtime, bad: dict[str, Any], param: str
) -> None:
    async with client(fake).realtime.connect(model=MODEL) as conn:
        await conn.recv()
        await conn.send(
            {
                "type": "session.update",
                "event_id": "evt_mine",
                "session": {"type": "realtime", **bad},
            }
        )
        error = (await events_until(conn, is_type("error")))[-1]
        assert error.error.event_id == "evt_mine"
        assert param in (error.error.param or "")
    session = fake.sessions[0]
    assert session.voice == "marin" and session.output_format == "audio/pcm"
    assert session.config["tools"] == []


async def test_session_update_needs_the_ga_type(fake: FakeRealtime) -> None:
    async with client(fake).realtime.connect(model=MODEL) as conn:
        await conn.recv()
        await conn.send({"type": "session.update", "session": {"instructions": "x"}})  # type: ignore[typeddict-item]
        error = (await events_until(conn, is_type("error")))[-1]
        assert error.error.param == "session.type"
    assert fake.sessions[0].instructions != "x"


# --- a caller turn -------------------------------------------------------------------------


async def test_vad_turn_events_in_order_with_transcript_and_audio(fake: FakeRealtime) -> None:
    fake.responses = ["Sure, a table for two at eight."]
    fake.transcripts = ["I would like to book a table."]
    async with client(fake).realtime.connect(model=MODEL) as conn:
        await configured(conn)
        await append_speech(conn, speech(lead=0.5, tail=1.0))
        events = await events_until(conn, is_type("response.done"))
    kinds = [e.type for e in events]
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions)
    started = events[kinds.index("input_audio_buffer.speech_started")]
    stopped = events[kinds.index("input_audio_buffer.speech_stopped")]
    # speech begins ~0.5 s in; the start includes 300 ms of prefix padding
    assert 100 <= started.audio_start_ms <= 300
    assert stopped.item_id == started.item_id
    assert 2800 <= stopped.audio_end_ms <= 4000
    transcription = events[kinds.index("conversation.item.input_audio_transcription.completed")]
    assert transcription.transcript == "I would like to book a table."
    audio = b"".join(base64.b64decode(e.delta) for e in events if e.type.endswith("audio.delta"))
    pcm = ulaw_decode(audio)
    text = "Sure, a table for two at eight."
    assert len(audio) == pytest.approx(len(text) * fake.seconds_per_char * 8000, abs=8)
    assert np.abs(pcm.astype(np.int32)).max() > 4000
    transcript = "".join(e.delta for e in events if e.type.endswith("transcript.delta"))
    assert transcript == text
    done = events[-1].response
    assert done.status == "completed"
    assert done.usage.input_tokens > 0 and done.usage.output_token_details.audio_tokens > 0
    assert done.output[0].role == "assistant"


async def test_no_turn_detection_means_no_vad_events(fake: FakeRealtime) -> None:
    session = {**PCMU_SESSION, "audio": {"input": {"turn_detection": None}}}
    async with client(fake).realtime.connect(model=MODEL) as conn:
        await configured(conn, {**PCMU_SESSION, **session})
        await append_speech(conn, speech(lead=0.2, tail=0.7))
        await conn.input_audio_buffer.commit()
        events = await events_until(conn, is_type("conversation.item.done"))
        assert not any(e.type.startswith("input_audio_buffer.speech") for e in events)
        assert any(e.type == "input_audio_buffer.committed" for e in events)
        await conn.input_audio_buffer.commit()  # nothing new since
        error = (await events_until(conn, is_type("error")))[-1]
        assert error.error.code == "input_audio_buffer_commit_empty"


async def test_pcm24k_output_format(fake: FakeRealtime) -> None:
    session = {
        "type": "realtime",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "cedar"}},
    }
    async with client(fake).realtime.connect(model=MODEL) as conn:
        await configured(conn, session)
        await conn.response.create(response={"instructions": 'Say exactly: "Good morning."'})
        events = await events_until(conn, is_type("response.done"))
    audio = b"".join(base64.b64decode(e.delta) for e in events if e.type.endswith("audio.delta"))
    pcm = pcm16_array(audio)
    assert len(pcm) == pytest.approx(len("Good morning.") * fake.seconds_per_char * 24000, abs=30)
    done = next(e for e in events if e.type == "response.output_audio_transcript.done")
    assert done.transcript == "Good morning."


# --- function calls ------------------------------------------------------------------------


async def test_function_call_then_output_then_the_next_reply(fake: FakeRealtime) -> None:
    fake.responses = [FunctionCall("lookup", {"id": 7}), "Order seven ships today."]
    async with client(fake).realtime.connect(model=MODEL) as conn:
        await configured(conn)
        await conn.response.create()
        events = await events_until(conn, is_type("response.done"))
        kinds = [e.type for e in events]
        assert kinds.index("response.function_call_arguments.delta") < kinds.index(
            "response.function_call_arguments.done"
        )
        assert kinds.index("response.function_call_arguments.done") < kinds.index(
            "response.output_item.done"
        )
        call = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert call.name == "lookup" and call.arguments == '{"id": 7}'
        deltas = "".join(e.delta for e in events if e.type.endswith("arguments.delta"))
        assert deltas == call.arguments
        assert events[-1].response.output[0].type == "function_call"
        # An output for a call that does not exist is refused.
        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": "call_nope", "output": "{}"}
        )
        assert (await events_until(conn, is_type("error")))[-1].error.param == "item.call_id"
        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": call.call_id, "output": '{"ok": 1}'}
        )
        await events_until(conn, is_type("conversation.item.done"))
        await conn.response.create()
        events = await events_until(conn, is_type("response.done"))
    said = next(e for e in events if e.type == "response.output_audio_transcript.done")
    assert said.transcript == "Order seven ships today."
    assert fake.sessions[0].tool_outputs == [{"call_id": call.call_id, "output": '{"ok": 1}'}]


# --- interruptions -------------------------------------------------------------------------


async def test_speech_during_a_response_cancels_it() -> None:
    async with FakeRealtime(audio_speed=1.0, responses=["word " * 40]) as fake:
        async with client(fake).realtime.connect(model=MODEL) as conn:
            await configured(conn)
            await conn.response.create()
            await events_until(conn, is_type("response.output_audio.delta"))
            await append_speech(conn, speech(lead=0.0, tail=0.0)[:4000])
            events = await events_until(conn, is_type("response.done"))
    kinds = [e.type for e in events]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
    done = events[-1].response
    assert done.status == "cancelled"
    assert done.status_details.reason == "turn_detected"
    assert done.output[0].status == "incomplete"


async def test_cancel_create_and_truncate_rules(fake: FakeRealtime) -> None:
    fake.audio_speed = 1.0
    async with client(fake).realtime.connect(model=MODEL) as conn:
        await configured(conn)
        await conn.response.cancel()
        error = (await events_until(conn, is_type("error")))[-1]
        assert error.error.code == "response_cancel_not_active"
        await conn.response.create(response={"instructions": 'Say "' + "long " * 30 + '"'})
        first = (await events_until(conn, is_type("response.output_audio.delta")))[-1]
        await conn.response.create()
        error = (await events_until(conn, is_type("error")))[-1]
        assert error.error.code == "conversation_already_has_active_response"
        await conn.response.cancel()
        done = (await events_until(conn, is_type("response.done")))[-1]
        assert done.response.status == "cancelled"
        assert done.response.status_details.reason == "client_cancelled"
        item = first.item_id
        await conn.conversation.item.truncate(item_id=item, content_index=0, audio_end_ms=60_000)
        error = (await events_until(conn, is_type("error")))[-1]
        assert error.error.param == "audio_end_ms"
        await conn.conversation.item.truncate(item_id=item, content_index=0, audio_end_ms=50)
        truncated = (await events_until(conn, is_type("conversation.item.truncated")))[-1]
        assert (truncated.item_id, truncated.audio_end_ms) == (item, 50)
    assert [(t["audio_end_ms"], t["ok"]) for t in fake.truncates] == [(60_000, False), (50, True)]
    assert all(t["audio_ms"] >= 100 for t in fake.truncates)


# --- faults --------------------------------------------------------------------------------


async def test_dropped_and_refused_connections(fake: FakeRealtime) -> None:
    async with client(fake).realtime.connect(model=MODEL) as conn:
        await conn.recv()
        assert await fake.drop_connections() == 1
        with pytest.raises(ConnectionClosed):
            await conn.recv()
    fake.accepting = False
    with pytest.raises(InvalidStatus) as err:
        async with client(fake).realtime.connect(model=MODEL):
            pass
    assert err.value.response.status_code == 503
    assert fake.rejected == [503]

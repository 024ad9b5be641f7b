"""SpeechmaticsSTT against FakeSpeechmatics over real sockets, and the fake's own protocol."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest

from getpatter.core.audio import ulaw_encode
from getpatter.core.providers import STT, Transcript
from getpatter.errors import PatterConfigError, PatterConnectionError
from getpatter.plugins.speechmatics.stt import SpeechmaticsSTT, SpeechmaticsSTTStream
from getpatter.testing.providers import ScriptedTTS
from getpatter.testing.speechmatics import FakeSpeechmatics
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech

KEY = "sm-live-secret-0123456789"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSpeechmatics]:
    async with FakeSpeechmatics(KEY, transcripts=["book a table", "for two people"]) as f:
        yield f


def ulaw_frames(seconds_lead: float = 0.2, tail: float = 0.2) -> list[bytes]:
    audio = ulaw_encode(speech(lead=seconds_lead, tail=tail))
    return [audio[i : i + 160] for i in range(0, len(audio), 160)]


async def collect(stream: SpeechmaticsSTTStream, into: list[Transcript]) -> None:
    async for t in stream.transcripts():
        into.append(t)


async def wait_for(cond: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- the fake, spoken to with a bare aiohttp client --------------------------------------


START = {
    "message": "StartRecognition",
    "audio_format": {"type": "raw", "encoding": "mulaw", "sample_rate": 8000},
    "transcription_config": {
        "language": "en",
        "enable_partials": True,
        "conversation_config": {"end_of_utterance_silence_trigger": 0.5},
    },
}


async def _messages(ws: aiohttp.ClientWebSocketResponse, until: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                out.append(json.loads(msg.data))
                if out[-1]["message"] == until:
                    break
    return out


async def test_fake_refuses_a_wrong_key_on_the_upgrade(fake: FakeSpeechmatics) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(fake.ws_url, headers={"Authorization": "Bearer nope"})
        assert info.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(fake.ws_url)
        ws = await http.ws_connect(f"{fake.ws_url}?jwt={KEY}")  # temporary-key form
        await ws.close()
    assert fake.rejected == [401, 401]


async def test_fake_rejects_audio_before_recognition_started(fake: FakeSpeechmatics) -> None:
    fake.session_delay = 0.3
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(fake.ws_url, headers={"Authorization": f"Bearer {KEY}"})
        await ws.send_json(START)
        await ws.send_bytes(b"\xff" * 160)
        msgs = await _messages(ws, "Error")
        assert msgs[-1]["type"] == "protocol_error"
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_fake_protocol_acks_transcripts_and_end_of_stream(fake: FakeSpeechmatics) -> None:
    fake.latency = 0.0
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(fake.ws_url, headers={"Authorization": f"Bearer {KEY}"})
        await ws.send_json(START)
        assert (await _messages(ws, "RecognitionStarted"))[-1]["id"]
        frames = ulaw_frames(0.1, 0.0)
        for frame in frames:
            await ws.send_bytes(frame)
        await ws.send_json({"message": "ForceEndOfUtterance"})
        msgs = await _messages(ws, "EndOfUtterance")
        acks = [m["seq_no"] for m in msgs if m["message"] == "AudioAdded"]
        assert acks == list(range(1, len(frames) + 1))
        partials = [m for m in msgs if m["message"] == "AddPartialTranscript"]
        assert partials and partials[0]["metadata"]["transcript"] == "book "
        final = next(m for m in msgs if m["message"] == "AddTranscript")
        assert final["metadata"]["transcript"].strip() == "book a table"
        assert [r["alternatives"][0]["content"] for r in final["results"]] == [
            "book",
            "a",
            "table",
        ]
        # silence past the configured trigger ends an utterance without ForceEndOfUtterance
        for frame in ulaw_frames(0.0, 0.8):
            await ws.send_bytes(frame)
        msgs = await _messages(ws, "EndOfUtterance")
        assert any(m.get("metadata", {}).get("transcript") == "for two people " for m in msgs)
        await ws.send_json({"message": "EndOfStream", "last_seq_no": fake.sessions[0].frames})
        assert (await _messages(ws, "EndOfTranscript"))[-1] == {"message": "EndOfTranscript"}
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1000


async def test_fake_rejects_a_bad_audio_format_and_reports_quota(fake: FakeSpeechmatics) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(fake.ws_url, headers={"Authorization": f"Bearer {KEY}"})
        bad = {**START, "audio_format": {"type": "raw", "encoding": "mp3", "sample_rate": 8000}}
        await ws.send_json(bad)
        assert (await _messages(ws, "Error"))[-1]["type"] == "invalid_audio_type"
        fake.quota_exceeded = True
        ws = await http.ws_connect(fake.ws_url, headers={"Authorization": f"Bearer {KEY}"})
        await ws.send_json(START)
        assert (await _messages(ws, "Error"))[-1]["type"] == "quota_exceeded"
        await ws.receive()
        assert ws.close_code == 4005


# --- the provider ----------------------------------------------------------------------------


def test_construction_checks_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPEECHMATICS_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="SPEECHMATICS_API_KEY"):
        SpeechmaticsSTT()
    monkeypatch.setenv("SPEECHMATICS_API_KEY", KEY)
    stt = SpeechmaticsSTT()
    assert isinstance(stt, STT)
    assert KEY not in repr(stt) and KEY not in repr(stt.options)
    assert (stt.sample_rate, stt.encoding) == (8000, "mulaw")
    with pytest.raises(PatterConfigError, match="ws_url"):
        SpeechmaticsSTT(ws_url="https://eu2.rt.speechmatics.com/v2")
    with pytest.raises(PatterConfigError, match="operating_point"):
        SpeechmaticsSTT(operating_point="ultra")
    with pytest.raises(PatterConfigError, match="max_delay"):
        SpeechmaticsSTT(max_delay=0.1)


def test_registering_imports_no_sdk() -> None:
    code = (
        "import getpatter, sys; from getpatter.plugins.speechmatics import *; "
        "print([m for m in sys.modules if m.startswith('speechmatics')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_streams_mulaw_and_forces_the_final(fake: FakeSpeechmatics) -> None:
    stt = SpeechmaticsSTT(api_key=KEY, ws_url=fake.ws_url, max_delay=0.8)
    stream = await stt.open(language="en-GB")
    got: list[Transcript] = []
    reader = asyncio.create_task(collect(stream, got))
    start = fake.sessions[0].start
    assert start is not None
    assert start["audio_format"] == {"type": "raw", "encoding": "mulaw", "sample_rate": 8000}
    config = start["transcription_config"]
    assert config["language"] == "en" and config["model"] == "enhanced"
    assert config["max_delay"] == 0.8 and config["enable_partials"] is True
    assert config["conversation_config"] == {"end_of_utterance_silence_trigger": 0.5}
    frames = ulaw_frames()
    for frame in frames:
        await stream.send(frame)
    t0 = time.monotonic()
    await stream.finalize()
    await wait_for(lambda: any(t.is_final for t in got))
    assert time.monotonic() - t0 < 0.5  # forced, not waiting for the engine's own delay
    final = next(t for t in got if t.is_final)
    assert final.text == "book a table" and final.speech_final
    assert final.confidence == pytest.approx(0.93)
    assert final.start is not None and final.end is not None and 0 < final.start < final.end
    assert [t.text for t in got if not t.is_final][:2] == ["book", "book a"]
    await wait_for(lambda: stream.acked == len(frames))
    assert bytes(fake.sessions[0].audio) == b"".join(frames)  # μ-law untouched
    assert fake.sessions[0].force_eou and "timestamp" in fake.sessions[0].force_eou[0]
    await stream.finalize()  # nothing new since: no second ForceEndOfUtterance
    await stream.aclose()
    await asyncio.wait_for(reader, 2)
    session = fake.sessions[0]
    assert session.end_of_stream == {"message": "EndOfStream", "last_seq_no": len(frames)}
    assert session.sent[-1] == {"message": "EndOfTranscript"} and session.closed
    assert len(session.force_eou) == 1


async def test_split_finals_are_joined_into_one_utterance(fake: FakeSpeechmatics) -> None:
    fake.split_finals = True
    stream = await SpeechmaticsSTT(api_key=KEY, ws_url=fake.ws_url).open()
    got: list[Transcript] = []
    reader = asyncio.create_task(collect(stream, got))
    for _ in range(2):
        for frame in ulaw_frames():
            await stream.send(frame)
        await stream.finalize()
    await wait_for(lambda: len([t for t in got if t.is_final]) == 2)
    finals = [t for t in got if t.is_final]
    assert [t.text for t in finals] == ["book a table", "for two people"]
    assert finals[1].start is not None and finals[0].end is not None
    assert finals[1].start > finals[0].end
    await stream.aclose()
    await reader


async def test_a_wrong_key_is_a_clear_error_without_the_key(fake: FakeSpeechmatics) -> None:
    bad = "sm-wrong-key-9876543210"
    with pytest.raises(PatterConnectionError) as info:
        await SpeechmaticsSTT(api_key=bad, ws_url=fake.ws_url).open()
    message = str(info.value)
    assert "Speechmatics" in message and "401" in message and "SPEECHMATICS_API_KEY" in message
    assert bad not in message and KEY not in message


async def test_quota_exceeded_is_a_clear_error(fake: FakeSpeechmatics) -> None:
    fake.quota_exceeded = True
    with pytest.raises(PatterConnectionError, match="Speechmatics quota exceeded") as info:
        await SpeechmaticsSTT(api_key=KEY, ws_url=fake.ws_url).open()
    assert KEY not in str(info.value)


async def test_a_dropped_socket_reconnects_and_replays_the_utterance(
    fake: FakeSpeechmatics,
) -> None:
    stream = await SpeechmaticsSTT(api_key=KEY, ws_url=fake.ws_url).open()
    got: list[Transcript] = []
    reader = asyncio.create_task(collect(stream, got))
    frames = ulaw_frames()
    for frame in frames[: len(frames) // 2]:
        await stream.send(frame)
    await wait_for(lambda: fake.sessions[0].frames == len(frames) // 2)
    assert await fake.drop_connections() == 1
    for frame in frames[len(frames) // 2 :]:
        await stream.send(frame)  # waits for the new session, then goes after the replay
    await stream.finalize()
    await wait_for(lambda: any(t.is_final for t in got))
    assert [t.text for t in got if t.is_final] == ["book a table"]
    assert stream.reconnects == 1 and len(fake.sessions) == 2
    assert bytes(fake.sessions[1].audio) == b"".join(frames)  # the whole utterance, once
    # and the call carries on
    for frame in frames:
        await stream.send(frame)
    await stream.finalize()
    await wait_for(lambda: len([t for t in got if t.is_final]) == 2)
    assert [t.text for t in got if t.is_final][1] == "for two people"
    await stream.aclose()
    await reader


async def test_aclose_is_bounded_when_the_server_is_slow(fake: FakeSpeechmatics) -> None:
    stream = await SpeechmaticsSTT(api_key=KEY, ws_url=fake.ws_url).open()
    fake.latency = 5.0  # EndOfTranscript would come 5 s later
    for frame in ulaw_frames():
        await stream.send(frame)
    t0 = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - t0 < stream.options.close_timeout + 0.5
    assert stream.closed
    await stream.send(b"\xff" * 160)  # after close: ignored, no error


# --- a whole call --------------------------------------------------------------------------


def said(s: Any, text: str) -> bool:
    """The agent's reply is in the transcript (it is added once the caller has heard it)."""
    return any(e["text"] == text for e in s.events.get("on_transcript", []))


async def test_a_call_through_the_fake_phone_network(
    serve: Callable[..., Any], net: FakeTwilio, fake: FakeSpeechmatics
) -> None:
    seen: list[str] = []

    def on_message(msg: dict[str, Any]) -> str:
        seen.append(msg["text"])
        return "A table for when?"

    tts = ScriptedTTS()
    stt = SpeechmaticsSTT(api_key=KEY, ws_url=fake.ws_url)
    s = await serve({"stt": stt, "tts": tts, "first_message": "Hi"}, on_message=on_message)
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0))
    await call.wait_for(lambda: said(s, "A table for when?"), 10)
    await call.hangup()
    await call.wait_ended()
    await wait_for(lambda: bool(s.events.get("on_call_end")))
    assert seen == ["book a table"]
    texts = [(e["role"], e["text"]) for e in s.events["on_call_end"][0]["transcript"]]
    assert texts[:3] == [
        ("assistant", "Hi"),
        ("user", "book a table"),
        ("assistant", "A table for when?"),
    ]
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 2000
    session = fake.sessions[0]
    assert session.force_eou and session.end_of_stream is not None  # finalized, then closed
    await wait_for(lambda: session.closed)

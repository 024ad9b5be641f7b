"""OpenAILLM, OpenAITTS and OpenAITranscribeSTT against FakeOpenAI over real sockets."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest

from getpatter.agent import Tool
from getpatter.core.audio import pcm16_bytes
from getpatter.core.providers import LLM, STT, TTS, TextDelta, ToolCallRequest, Transcript, Usage
from getpatter.core.registry import resolve
from getpatter.errors import PatterConfigError, PatterConnectionError
from getpatter.plugins.openai.llm import OpenAILLM
from getpatter.plugins.openai.stt import OpenAITranscribeSTT
from getpatter.plugins.openai.tts import OpenAITTS
from getpatter.testing.openai_http import FakeOpenAI, ToolCall
from getpatter.testing.providers import ScriptedSTT, ScriptedTTS
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech

KEY = "sk-live-secret-0123456789abcdef"
USER = [{"role": "user", "content": "When do you open?"}]
LOOKUP = {
    "name": "lookup_hours",
    "description": "Opening hours for a day",
    "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(KEY) as f:
        yield f


async def wait_for(cond: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def no_key(message: str) -> None:
    assert KEY not in message and KEY[:8] not in message and KEY[-4:] not in message


# --- the fake, spoken to with a bare HTTP client ---------------------------------------------


async def _post(fake: FakeOpenAI, path: str, key: str | None = KEY, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.base_url + path, headers=headers, **kw) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()


async def test_fake_auth_and_quota_errors_have_openai_shapes(fake: FakeOpenAI) -> None:
    body = {"model": "m", "messages": USER}
    status, _, raw = await _post(fake, "/chat/completions", key=None, json=body)
    assert status == 401 and json.loads(raw)["error"]["code"] is None
    status, _, raw = await _post(fake, "/chat/completions", key="sk-wrong-0000-1111", json=body)
    error = json.loads(raw)["error"]
    assert status == 401 and error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error" and "sk-wrong-0000-1111" not in error["message"]
    fake.quota_exceeded = True
    status, _, raw = await _post(fake, "/audio/speech", json={})
    assert status == 429 and json.loads(raw)["error"]["code"] == "insufficient_quota"
    assert fake.rejected == [401, 401, 429]


async def test_fake_chat_stream_follows_the_wire_format(fake: FakeOpenAI) -> None:
    fake.replies = ["Hi there.", [ToolCall("a", {"x": 1}, "call_a"), ToolCall("b", {"y": 22})]]
    fake.interleave_tool_calls = True
    body = {
        "model": "m",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, ctype, raw = await _post(fake, "/chat/completions", json=body)
    assert status == 200 and ctype.startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["delta"]["content"] == ""
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == "Hi there."
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    status, _, raw = await _post(fake, "/chat/completions", json=body)
    chunks = [json.loads(e[6:]) for e in raw.decode().split("\n\n") if e and "[DONE]" not in e]
    fragments = [f for c in chunks[:-1] for f in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert fragments[0] == {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "a", "arguments": ""},
    }
    assert [f["index"] for f in fragments[:4]] == [0, 1, 0, 1]  # interleaved
    assert set(fragments[2]) == {"index", "function"}
    args = {
        i: "".join(f["function"]["arguments"] for f in fragments if f["index"] == i) for i in (0, 1)
    }
    assert json.loads(args[0]) == {"x": 1} and json.loads(args[1]) == {"y": 22}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_fake_chat_checks_requests(fake: FakeOpenAI) -> None:
    orphan = [*USER, {"role": "tool", "tool_call_id": "call_x", "content": "{}"}]
    status, _, raw = await _post(fake, "/chat/completions", json={"model": "m", "messages": orphan})
    assert status == 400 and "tool_calls" in json.loads(raw)["error"]["message"]
    body = {"model": "m", "messages": USER, "stream_options": {"include_usage": True}}
    status, _, _ = await _post(fake, "/chat/completions", json=body)
    assert status == 400
    body = {"model": "m", "messages": USER, "stream": True}
    status, _, raw = await _post(fake, "/chat/completions", json=body)
    assert status == 200 and b"Okay." in raw and raw.endswith(b"data: [DONE]\n\n")


async def test_fake_speech_and_transcriptions(fake: FakeOpenAI) -> None:
    req = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hello there."}
    status, ctype, raw = await _post(fake, "/audio/speech", json={**req, "response_format": "pcm"})
    assert (status, ctype) == (200, "audio/pcm") and raw == fake.tone("Hello there.")
    assert len(raw) == int(12 * 0.06 * 24000) * 2
    status, _, raw = await _post(fake, "/audio/speech", json={**req, "response_format": "wav"})
    with wave.open(io.BytesIO(raw)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1)
        assert w.readframes(w.getnframes()) == fake.tone("Hello there.")
    status, _, raw = await _post(fake, "/audio/speech", json={**req, "response_format": "ogg"})
    assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_value"
    status, _, raw = await _post(fake, "/audio/speech", json=req)  # the default: mp3
    assert status == 400 and json.loads(raw)["error"]["code"] == "unsupported_by_fake"

    fake.transcripts = ["book a table"]

    def form(pcm: bytes, model: str = "whisper-1") -> aiohttp.FormData:
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(pcm)
        data = aiohttp.FormData()
        data.add_field("file", buffer.getvalue(), filename="a.wav", content_type="audio/wav")
        if model:
            data.add_field("model", model)
        return data

    loud = pcm16_bytes(speech(lead=0, tail=0))
    status, _, raw = await _post(fake, "/audio/transcriptions", data=form(loud))
    assert status == 200 and json.loads(raw)["text"] == "book a table"
    status, _, raw = await _post(fake, "/audio/transcriptions", data=form(bytes(16000)))
    assert status == 200 and json.loads(raw)["text"] == ""  # silence
    status, _, raw = await _post(fake, "/audio/transcriptions", data=form(bytes(400)))
    assert status == 400 and json.loads(raw)["error"]["code"] == "audio_too_short"
    status, _, raw = await _post(fake, "/audio/transcriptions", data=form(loud, model=""))
    assert status == 400 and json.loads(raw)["error"]["param"] == "model"
    assert fake.transcription_requests[0]["sample_rate"] == 8000


# --- construction and the registry ---------------------------------------------------------


def test_keys_come_from_the_environment_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for cls in (OpenAILLM, OpenAITTS, OpenAITranscribeSTT):
        with pytest.raises(PatterConfigError, match="OPENAI_API_KEY"):
            cls()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    llm, tts, stt = resolve("llm", "openai"), resolve("tts", "openai"), resolve("stt", "openai")
    assert isinstance(llm, OpenAILLM) and isinstance(llm, LLM)
    assert isinstance(tts, OpenAITTS) and isinstance(tts, TTS)
    assert isinstance(stt, OpenAITranscribeSTT) and isinstance(stt, STT)
    for provider in (llm, tts, stt):
        assert KEY not in repr(provider) and KEY not in repr(provider.options)
    assert (tts.sample_rate, tts.encoding) == (24000, "pcm16")
    assert (stt.sample_rate, stt.encoding) == (8000, "pcm16")
    assert OpenAILLM(api_key="ollama", base_url="http://localhost:11434/v1")  # any key will do
    with pytest.raises(PatterConfigError, match="base_url"):
        OpenAILLM(base_url="localhost:11434")
    with pytest.raises(PatterConfigError, match="temperature"):
        OpenAILLM(temperature=5)
    with pytest.raises(PatterConfigError, match="speed"):
        OpenAITTS(speed=10)


def test_registering_imports_no_sdk() -> None:
    code = (
        "import getpatter, sys; from getpatter.plugins.openai import *; "
        "from getpatter.core.registry import Registry; Registry().specs(); "
        "print([m for m in sys.modules if m.startswith('openai')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- OpenAILLM -------------------------------------------------------------------------------


async def test_llm_streams_text_and_usage(fake: FakeOpenAI) -> None:
    fake.replies = ["We open at nine."]
    llm = OpenAILLM(
        api_key=KEY, base_url=fake.base_url, temperature=0.2, max_tokens=50, extra_body={"seed": 7}
    )
    events = [e async for e in llm.chat(USER, [LOOKUP])]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "We open at nine."
    assert len([e for e in events if isinstance(e, TextDelta)]) == 4
    assert isinstance(events[-1], Usage) and events[-1].output_tokens == 4
    sent = fake.chat_requests[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "gpt-4o-mini" and sent["messages"] == USER
    assert sent["tools"] == [{"type": "function", "function": LOOKUP}]
    assert sent["tool_choice"] == "auto"
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.2, 50, 7)
    await llm.aclose()


async def test_llm_joins_interleaved_tool_call_fragments(fake: FakeOpenAI) -> None:
    fake.interleave_tool_calls = True
    fake.replies = [
        [
            ToolCall("lookup_hours", {"day": "monday"}, "call_1"),
            ToolCall("lookup_hours", {"day": "sunday, the day after"}, "call_2"),
        ]
    ]
    llm = OpenAILLM(api_key=KEY, base_url=fake.base_url)
    events = [e async for e in llm.chat(USER, [LOOKUP])]
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert calls == [
        ToolCallRequest("call_1", "lookup_hours", '{"day": "monday"}'),
        ToolCallRequest("call_2", "lookup_hours", '{"day": "sunday, the day after"}'),
    ]
    await llm.aclose()


async def test_llm_closing_the_iterator_closes_the_http_stream(fake: FakeOpenAI) -> None:
    fake.replies = ["one two three four five six seven eight nine ten"]
    fake.token_delay = 0.1
    llm = OpenAILLM(api_key=KEY, base_url=fake.base_url)
    stream = llm.chat(USER)
    first = await anext(stream)
    assert first == TextDelta("one")
    t0 = time.monotonic()
    await stream.aclose()  # a barge-in
    assert time.monotonic() - t0 < 0.2
    await wait_for(lambda: fake.aborted == 1, 2)
    assert fake.completed == 0
    await llm.aclose()


async def test_llm_auth_and_quota_errors(fake: FakeOpenAI) -> None:
    with pytest.raises(PatterConnectionError, match="refused the API key") as info:
        [e async for e in OpenAILLM(api_key="sk-wrong", base_url=fake.base_url).chat(USER)]
    assert "401" in str(info.value)
    fake.api_key = "sk-other"  # now KEY itself is the wrong one: it must not leak
    with pytest.raises(PatterConnectionError) as info:
        [e async for e in OpenAILLM(api_key=KEY, base_url=fake.base_url).chat(USER)]
    no_key(str(info.value))
    fake.api_key, fake.quota_exceeded = KEY, True
    with pytest.raises(PatterConnectionError, match="out of quota"):
        [e async for e in OpenAILLM(api_key=KEY, base_url=fake.base_url).chat(USER)]


async def test_llm_retries_a_drop_before_output_but_not_after(fake: FakeOpenAI) -> None:
    llm = OpenAILLM(api_key=KEY, base_url=fake.base_url)
    fake.replies = ["Sorry about that.", "Never mind."]
    fake.first_token_delay = 0.3
    task = asyncio.create_task(_drain(llm.chat(USER)))
    await wait_for(lambda: len(fake.chat_requests) == 1)
    await asyncio.sleep(0.1)
    assert await fake.drop_connections() >= 1  # before the first token: retried
    events = await task
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Never mind."
    assert len(fake.chat_requests) == 2
    fake.replies, fake.first_token_delay, fake.token_delay = ["a b c d e f"], 0.0, 0.2
    stream = llm.chat(USER)
    assert await anext(stream) == TextDelta("a")
    await fake.drop_connections()  # after words were spoken: an error, not a repeat
    with pytest.raises(PatterConnectionError, match="lost the connection"):
        async for _ in stream:
            pass
    assert len(fake.chat_requests) == 3
    await llm.aclose()


async def _drain(it: AsyncIterator[Any]) -> list[Any]:
    return [e async for e in it]


# --- OpenAITTS -------------------------------------------------------------------------------


async def test_tts_streams_24k_pcm(fake: FakeOpenAI) -> None:
    fake.audio_speed, fake.chunk_ms = 20.0, 50
    tts = OpenAITTS(api_key=KEY, base_url=fake.base_url, instructions="Warm and brisk.", speed=1.25)
    stream = await tts.open()
    chunks = [c async for c in stream.synthesize("Hello there, welcome to Acme.")]
    assert len(chunks) > 3 and b"".join(chunks) == fake.tone("Hello there, welcome to Acme.", 1.25)
    sent = fake.speech_requests[0]
    assert sent == {
        "model": "gpt-4o-mini-tts",
        "voice": "alloy",
        "input": "Hello there, welcome to Acme.",
        "response_format": "pcm",
        "instructions": "Warm and brisk.",
        "speed": 1.25,
    }
    assert [c async for c in stream.synthesize("   ")] == []  # nothing to say: no request
    await stream.aclose()


async def test_tts_closing_a_synthesis_cancels_it_and_the_stream_goes_on(fake: FakeOpenAI) -> None:
    fake.audio_speed, fake.chunk_ms = 1.0, 100  # real time: 3 s of audio takes 3 s
    stream = await OpenAITTS(api_key=KEY, base_url=fake.base_url).open()
    synthesis = stream.synthesize("A long sentence that takes a few seconds to say out loud.")
    assert await anext(synthesis)
    t0 = time.monotonic()
    await synthesis.aclose()  # a barge-in
    assert time.monotonic() - t0 < 0.2
    await wait_for(lambda: fake.aborted == 1, 2)
    fake.audio_speed = 0.0
    audio = b"".join([c async for c in stream.synthesize("Next one.")])
    assert audio == fake.tone("Next one.")
    await stream.aclose()


async def test_tts_errors_and_a_dropped_stream(fake: FakeOpenAI) -> None:
    bad = await OpenAITTS(api_key="sk-nope", base_url=fake.base_url).open()
    with pytest.raises(PatterConnectionError, match="OpenAI text-to-speech refused the API key"):
        [c async for c in bad.synthesize("Hi.")]
    await bad.aclose()
    fake.audio_speed, fake.chunk_ms = 4.0, 100
    stream = await OpenAITTS(api_key=KEY, base_url=fake.base_url).open()
    text = "This sentence is interrupted by the network and then carries on."
    got = bytearray()
    async for chunk in stream.synthesize(text):
        got.extend(chunk)
        if len(fake.speech_requests) == 1 and len(got) >= 9600:
            await fake.drop_connections()
    assert bytes(got) == fake.tone(text)  # retried once, without repeating what was played
    assert len(fake.speech_requests) == 2
    fake.quota_exceeded = True
    with pytest.raises(PatterConnectionError, match="out of quota") as info:
        [c async for c in stream.synthesize("Hi.")]
    no_key(str(info.value))
    await stream.aclose()


# --- OpenAITranscribeSTT ---------------------------------------------------------------------


async def _utterances(stream: Any, *texts: bytes) -> None:
    for pcm in texts:
        for i in range(0, len(pcm), 320):
            await stream.send(pcm[i : i + 320])
        await stream.finalize()


async def test_stt_transcribes_each_utterance_in_order(fake: FakeOpenAI) -> None:
    fake.transcripts = ["book a table", "for two"]
    stt = OpenAITranscribeSTT(api_key=KEY, base_url=fake.base_url, prompt="Acme, Rome")
    stream = await stt.open(language="it-IT")
    pcm = pcm16_bytes(speech(lead=0.1, tail=0.1))
    await _utterances(stream, pcm, b"\x01\x00" * 400, pcm)  # the middle one is under 0.1 s
    got: list[Transcript] = []
    async for t in stream.transcripts():
        got.append(t)
        if len(got) == 2:
            break
    assert [t.text for t in got] == ["book a table", "for two"]
    assert all(t.is_final and t.speech_final for t in got)
    assert got[0].start == 0.0 and got[1].start is not None and got[0].end is not None
    assert got[1].start >= got[0].end
    sent = fake.transcription_requests
    assert len(sent) == 2 and stream.requests == 2  # the too-short one was never sent
    assert sent[0]["model"] == "gpt-4o-transcribe" and sent[0]["language"] == "it"
    assert sent[0]["prompt"] == "Acme, Rome" and sent[0]["sample_rate"] == 8000
    assert sent[0]["seconds"] == pytest.approx(len(pcm) / 16000)
    await stream.aclose()


async def test_stt_errors_retry_and_close(fake: FakeOpenAI) -> None:
    pcm = pcm16_bytes(speech(lead=0.1, tail=0.1))
    fake.api_key = "sk-other"
    stream = await OpenAITranscribeSTT(api_key=KEY, base_url=fake.base_url).open()
    await _utterances(stream, pcm)
    with pytest.raises(PatterConnectionError, match="OpenAI transcription refused") as info:
        async for _ in stream.transcripts():
            pass
    no_key(str(info.value))
    await stream.aclose()
    fake.api_key, fake.transcribe_delay, fake.transcripts = KEY, 0.3, ["still here"]
    stream = await OpenAITranscribeSTT(api_key=KEY, base_url=fake.base_url).open()
    await _utterances(stream, pcm)
    await wait_for(lambda: len(fake.transcription_requests) == 1)
    await fake.drop_connections()  # mid-request: retried once
    assert (await anext(stream.transcripts())).text == "still here"
    assert stream.requests == 2
    await _utterances(stream, pcm)
    await wait_for(lambda: len(fake.transcription_requests) == 3)
    t0 = time.monotonic()
    await stream.aclose()  # hang-up while a request is in flight: prompt
    assert time.monotonic() - t0 < 0.2
    assert [t async for t in stream.transcripts()] == []


# --- whole calls -----------------------------------------------------------------------------


def said(s: Any, text: str) -> bool:
    return any(e["text"] == text for e in s.events.get("on_transcript", []))


async def _finish(s: Any, call: Any) -> list[tuple[str, str]]:
    await call.hangup()
    await call.wait_ended()
    await wait_for(lambda: bool(s.events.get("on_call_end")))
    return [(e["role"], e["text"]) for e in s.events["on_call_end"][0]["transcript"]]


async def test_a_call_with_the_llm_and_a_tool(
    serve: Callable[..., Any], net: FakeTwilio, fake: FakeOpenAI
) -> None:
    fake.replies = [ToolCall("lookup_hours", {"day": "monday"}, "call_9"), "We open at nine."]
    days: list[str] = []

    def lookup(args: dict[str, Any], ctx: Any) -> dict[str, str]:
        days.append(args["day"])
        return {"opens": "9:00"}

    agent = {
        "stt": ScriptedSTT(["when do you open on monday"]),
        "tts": ScriptedTTS(),
        "llm": OpenAILLM(api_key=KEY, base_url=fake.base_url),
        "tools": [Tool("lookup_hours", "Opening hours", LOOKUP["parameters"], handler=lookup)],
        "system_prompt": "You are Acme's receptionist.",
        "first_message": "Hi",
    }
    s = await serve(agent)
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0))
    await call.wait_for(lambda: said(s, "We open at nine."), 10)
    texts = await _finish(s, call)
    assert texts[:3] == [
        ("assistant", "Hi"),
        ("user", "when do you open on monday"),
        ("assistant", "We open at nine."),
    ]
    assert days == ["monday"]
    second = fake.chat_requests[1]["messages"]  # the tool round, accepted by the fake's checks
    assert second[0] == {"role": "system", "content": "You are Acme's receptionist."}
    assert second[-2]["tool_calls"][0]["id"] == "call_9"
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == "call_9"
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 2000


async def test_a_call_spoken_by_openai_tts(
    serve: Callable[..., Any], net: FakeTwilio, fake: FakeOpenAI
) -> None:
    tts = OpenAITTS(api_key=KEY, base_url=fake.base_url)
    s = await serve(
        {"stt": ScriptedSTT(["hello"]), "tts": tts, "first_message": "Hi, Acme here."},
        on_message=lambda m: "Sure thing.",
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0))
    await call.wait_for(lambda: said(s, "Sure thing."), 10)
    texts = await _finish(s, call)
    assert texts[:3] == [
        ("assistant", "Hi, Acme here."),
        ("user", "hello"),
        ("assistant", "Sure thing."),
    ]
    assert [r["input"] for r in fake.speech_requests] == ["Hi, Acme here.", "Sure thing."]
    heard = call.heard_audio().astype(np.float64)
    assert np.abs(heard).max() > 2000
    start = int(np.flatnonzero(np.abs(heard) > 500)[0])
    segment = heard[start : start + 4000]  # half a second of the agent's first words
    peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * 8000 / len(segment)
    assert abs(peak_hz - 440) < 10  # 24 kHz PCM resampled to 8 kHz, not played at 8 kHz


async def test_a_call_heard_by_openai_transcription(
    serve: Callable[..., Any], net: FakeTwilio, fake: FakeOpenAI
) -> None:
    fake.transcripts = ["what time do you open"]
    seen: list[str] = []
    s = await serve(
        {
            "stt": OpenAITranscribeSTT(api_key=KEY, base_url=fake.base_url),
            "tts": ScriptedTTS(),
            "first_message": "Hi",
        },
        on_message=lambda m: seen.append(m["text"]) or "At nine.",
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0))
    await call.wait_for(lambda: said(s, "At nine."), 10)
    texts = await _finish(s, call)
    assert seen == ["what time do you open"]
    assert texts[:3] == [
        ("assistant", "Hi"),
        ("user", "what time do you open"),
        ("assistant", "At nine."),
    ]
    assert fake.transcription_requests[0]["sample_rate"] == 8000
    assert 1.0 < fake.transcription_requests[0]["seconds"] < 5.0

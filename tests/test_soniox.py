"""SonioxSTT and FakeSoniox: the fake's protocol, the client against it, whole calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest

from getpatter.core.pipeline import PipelineOptions
from getpatter.core.providers import STT
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError
from getpatter.plugins.soniox.stt import SonioxSTT
from getpatter.testing.providers import ScriptedTTS
from getpatter.testing.soniox import FakeSoniox
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech
from stt_kit import collect, feed, finals, hear, said, wait_until

TEXT = "What time do you open?"
KEY = "sx-secret-key-0123456789"


@pytest.fixture
async def sx() -> AsyncIterator[FakeSoniox]:
    async with FakeSoniox(KEY, transcripts=[TEXT, "Thanks."], latency=0.01) as f:
        yield f


def client(sx: FakeSoniox, **kwargs: Any) -> SonioxSTT:
    return SonioxSTT(api_key=sx.api_key, base_url=sx.ws_url, **kwargs)


START = {
    "model": "stt-rt-v4",
    "audio_format": "mulaw",
    "sample_rate": 8000,
    "num_channels": 1,
    "enable_endpoint_detection": True,
}

# --- the fake's protocol, spoken by hand ---------------------------------------------------


async def raw(sx: FakeSoniox, **headers: str) -> tuple[aiohttp.ClientSession, Any]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(sx.ws_url, headers=headers)
    return http, ws


async def until(ws: Any, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        async for msg in ws:
            out.append(json.loads(msg.data))
            if done(out[-1]):
                break
    return out


@pytest.mark.parametrize("auth", ["Bearer wrong-key", None])
async def test_fake_refuses_a_bad_key_with_an_error_then_close(
    sx: FakeSoniox, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth else {}
    http, ws = await raw(sx, **headers)  # the upgrade succeeds, as on the real service
    try:
        if auth is None:
            await ws.send_str(json.dumps({**START, "api_key": "wrong-key"}))
        error = json.loads((await ws.receive()).data)
        assert error["error_code"] == 401 and error["error_type"] == "unauthenticated"
        assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    finally:
        await http.close()


async def test_fake_accepts_the_deprecated_key_in_the_start_request(sx: FakeSoniox) -> None:
    http, ws = await raw(sx)
    try:
        await ws.send_str(json.dumps({**START, "api_key": KEY}))
        await ws.send_str(json.dumps({"type": "finalize"}))
        (fin,) = await until(ws, lambda m: True)
        assert [t["text"] for t in fin["tokens"]] == ["<fin>"]
        assert sx.connections[0].config is not None
        assert sx.connections[0].config["api_key"] == "***"
    finally:
        await http.close()


@pytest.mark.parametrize(
    ("start", "code"),
    [
        ({**START, "model": "stt-rt-v9"}, 400),
        ({"model": "stt-rt-v4", "audio_format": "mulaw"}, 400),  # raw needs rate and channels
    ],
)
async def test_fake_validates_the_start_request(
    sx: FakeSoniox, start: dict[str, Any], code: int
) -> None:
    http, ws = await raw(sx, Authorization=f"Bearer {KEY}")
    try:
        await ws.send_str(json.dumps(start))
        error = json.loads((await ws.receive()).data)
        assert error["error_code"] == code and error["error_message"]
        assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    finally:
        await http.close()


async def test_fake_tokens_endpoint_finalize_and_end_of_audio(sx: FakeSoniox) -> None:
    http, ws = await raw(sx, Authorization=f"Bearer {KEY}")
    try:
        await ws.send_str(json.dumps(START))
        await ws.send_bytes(said(tail=0.8))
        got = await until(ws, lambda m: any(t["text"] == "<end>" for t in m["tokens"]))
        partials, last = got[:-1], got[-1]
        assert partials and all(not t["is_final"] for m in partials for t in m["tokens"])
        assert [t["text"] for t in last["tokens"]] == [
            "What",
            " time",
            " do",
            " you",
            " open?",
            "<end>",
        ]
        assert all(t["is_final"] for t in last["tokens"])
        assert last["final_audio_proc_ms"] > 0 and last["total_audio_proc_ms"] >= 2000
        await ws.send_bytes(said())  # a second utterance, ended by finalize
        await ws.send_str(json.dumps({"type": "finalize"}))
        got = await until(ws, lambda m: any(t["text"] == "<fin>" for t in m["tokens"]))
        assert "".join(t["text"] for t in got[-1]["tokens"]) == "Thanks.<fin>"
        await ws.send_str("")  # the end of audio
        done = await until(ws, lambda m: bool(m.get("finished")))
        assert done[-1]["tokens"] == []
        assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1000
    finally:
        await http.close()


# --- SonioxSTT against the fake ------------------------------------------------------------


async def test_streams_interims_then_the_final_at_the_endpoint(sx: FakeSoniox) -> None:
    stream = await client(sx).open(language="en-US")
    seen, reader = hear(stream)
    await feed(stream, said(tail=0.8))
    await wait_until(lambda: bool(finals(seen)))
    assert finals(seen) == [TEXT]
    interims = [t.text for t in seen if not t.is_final]
    assert interims and TEXT.startswith(interims[-1])
    final = seen[-1]
    assert final.speech_final and final.confidence == pytest.approx(0.95)
    assert final.start is not None and final.end is not None and 0 < final.start < final.end
    conn = sx.connections[0]
    assert conn.headers["Authorization"] == "***"  # the key went with the connection
    assert conn.config == {**START, "language_hints": ["en"]}  # and not in the start request
    await stream.aclose()
    await reader
    assert bytes(conn.audio) == said(tail=0.8)  # the carrier's μ-law, untouched


async def test_finalize_ends_the_utterance_at_once(sx: FakeSoniox) -> None:
    stream = await client(sx, enable_endpoint_detection=False, language="es").open()
    seen, reader = hear(stream)
    await feed(stream, said(tail=1.0))
    await asyncio.sleep(0.2)
    assert not finals(seen)  # no endpoint detection: the words wait for the finalize
    await stream.finalize()
    await wait_until(lambda: bool(finals(seen)))
    assert finals(seen) == [TEXT]
    conn = sx.connections[0]
    assert conn.count("finalize") == 1 and conn.config is not None
    assert conn.config["language_hints"] == ["es"] and not conn.config["enable_endpoint_detection"]
    await stream.aclose()
    await reader


async def test_keepalives_hold_an_idle_connection() -> None:
    async with FakeSoniox(KEY, idle_timeout=0.5, latency=0.01) as sx:
        stream = await client(sx, keepalive_s=0.15).open()
        reader = asyncio.create_task(collect(stream, []))
        await asyncio.sleep(1.2)
        assert len(sx.live) == 1 and stream.reconnects == 0
        assert sx.connections[0].count("keepalive") >= 5
        await stream.aclose()
        await reader


async def test_aclose_ends_the_audio_and_waits_for_finished(sx: FakeSoniox) -> None:
    stream = await client(sx, enable_endpoint_detection=False).open()
    seen, reader = hear(stream)
    await feed(stream, said())  # mid-utterance: the end of audio still makes it final
    await stream.aclose()
    await asyncio.wait_for(reader, 1)
    assert finals(seen) == [TEXT] and stream.finished
    conn = sx.connections[0]
    assert conn.ended_audio and conn.closed and conn.close_code == 1000
    await stream.send(b"\xff" * 160)  # after close: dropped, no error


async def test_aclose_is_bounded_when_soniox_does_not_answer() -> None:
    async with FakeSoniox(KEY, latency=5.0) as sx:
        stream = await client(sx, close_timeout=0.3).open()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stream.aclose()
        assert loop.time() - started < 1.5


@pytest.mark.parametrize(
    ("refuse", "error", "words"),
    [
        (None, PatterConnectionError, "SONIOX_API_KEY"),
        ((402, "payment_required", "Insufficient balance."), PatterConnectionError, "balance"),
        ((429, "rate_limited", "Too many concurrent streams."), PatterConnectionError, "too many"),
        ((400, "invalid_request", "Bad config."), ProviderError, "settings"),
    ],
)
async def test_refusals_fail_the_stream_clearly_without_the_key(
    refuse: tuple[int, str, str] | None, error: type[Exception], words: str
) -> None:
    async with FakeSoniox(KEY, refuse=refuse) as sx:
        used = "sx-wrong-key-9876543210" if refuse is None else KEY
        stream = await SonioxSTT(api_key=used, base_url=sx.ws_url).open()
        with pytest.raises(error) as err:
            async for _ in stream.transcripts():
                pass
        with pytest.raises(error):
            await stream.send(said())
        await stream.aclose()
    text = f"{err.value} {err.value!r}"
    assert words in text and "Soniox" in text and used not in text
    assert stream.reconnects == 0 and len(sx.connections) == 1  # no retry of a refusal


async def test_unreachable_is_a_connection_error() -> None:
    async with FakeSoniox(KEY) as sx:
        url = sx.ws_url
    with pytest.raises(PatterConnectionError, match="could not reach Soniox"):
        await SonioxSTT(api_key=KEY, base_url=url, connect_timeout=2).open()


async def test_a_dropped_socket_reconnects_and_replays_the_utterance(sx: FakeSoniox) -> None:
    stream = await client(sx, enable_endpoint_detection=False).open()
    seen, reader = hear(stream)
    audio = said()
    half = len(audio) // 2 // 160 * 160
    await feed(stream, audio[:half])
    await wait_until(lambda: len(sx.connections[0].audio) == half)
    assert await sx.drop_connections() == 1
    await feed(stream, audio[half:])
    await stream.finalize()
    await wait_until(lambda: bool(finals(seen)), 5)
    assert finals(seen) == [TEXT] and stream.reconnects == 1
    assert bytes(sx.connections[1].audio) == audio  # the whole utterance, once
    assert sx.connections[1].count("finalize") == 1
    await feed(stream, said())  # and the call carries on
    await stream.finalize()
    await wait_until(lambda: finals(seen) == [TEXT, "Thanks."])
    assert seen[-1].start is not None and seen[-1].start >= len(audio) / 8000 - 0.05
    await stream.aclose()
    await reader


async def test_a_connection_that_drops_again_at_once_fails_the_stream(sx: FakeSoniox) -> None:
    stream = await client(sx).open()
    reader = asyncio.create_task(collect(stream, []))
    await sx.drop_connections()
    await wait_until(lambda: len(sx.live) == 1 and len(sx.connections) == 2)
    await sx.drop_connections()
    with pytest.raises(PatterConnectionError, match="again"):
        await asyncio.wait_for(reader, 3)
    await stream.aclose()


# --- construction and registry -------------------------------------------------------------


def test_key_from_env_and_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIOX_API_KEY", "sx-env-key-000")
    stt = SonioxSTT()
    assert isinstance(stt, STT) and "sx-env-key-000" not in repr(stt) and "<set>" in repr(stt)
    assert (stt.sample_rate, stt.encoding) == (8000, "mulaw")
    monkeypatch.delenv("SONIOX_API_KEY")
    with pytest.raises(PatterConfigError, match="SONIOX_API_KEY"):
        SonioxSTT()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "ftp://x"},
        {"model": ""},
        {"keepalive_s": 30},
        {"max_endpoint_delay_ms": 100},
        {"language_hints": "en"},
        {"language": "english!"},
    ],
)
def test_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(PatterConfigError):
        SonioxSTT(api_key="k", **kwargs)


def test_base_url_spellings_and_registry() -> None:
    stt = SonioxSTT(api_key="k", base_url="https://stt-rt.soniox.com")
    assert stt.options.base_url == "wss://stt-rt.soniox.com/transcribe-websocket"
    assert isinstance(Registry().create("stt", "soniox", api_key="k"), SonioxSTT)


# --- whole calls through the fake phone network --------------------------------------------


def transcript_of(s: Any) -> list[dict[str, Any]]:
    return list(s.events.get("on_transcript", []))


async def test_a_call_transcribed_by_soniox(
    serve: Callable[..., Any], net: FakeTwilio, sx: FakeSoniox
) -> None:
    heard: list[str] = []
    s = await serve(
        {"stt": client(sx), "tts": ScriptedTTS(), "first_message": "Hi"},
        on_message=lambda m: heard.append(m["text"]) or "We open at nine.",
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0, tail=2.0))
    await wait_until(lambda: any(e["text"] == "We open at nine." for e in transcript_of(s)), 12)
    await call.hangup()
    await call.wait_ended()
    await wait_until(lambda: bool(s.events.get("on_call_end")), 5)
    assert heard == [TEXT]
    record = s.events["on_call_end"][0]
    texts = [(e["role"], e["text"]) for e in record["transcript"]]
    assert texts[:3] == [("assistant", "Hi"), ("user", TEXT), ("assistant", "We open at nine.")]
    assert record["metrics"]["providers"]["stt"] == {"provider": "soniox", "model": "stt-rt-v4"}
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 2000
    conn = sx.connections[0]
    await wait_until(lambda: conn.closed)
    assert conn.ended_audio and conn.close_code == 1000


async def test_a_refused_key_ends_the_call_with_a_spoken_goodbye(
    serve: Callable[..., Any], net: FakeTwilio, sx: FakeSoniox
) -> None:
    bad = "sx-wrong-key-1111"
    tts = ScriptedTTS()
    s = await serve(
        {"stt": SonioxSTT(api_key=bad, base_url=sx.ws_url), "tts": tts},
        on_message=lambda m: "Sure.",
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=1.0, tail=1.0))
    await call.wait_ended(10)
    await wait_until(lambda: bool(s.events.get("on_call_end")), 5)
    record = s.events["on_call_end"][0]
    assert record["end_reason"] == "stt_failed"
    assert record["transcript"][-1]["text"] == PipelineOptions().hearing_lost
    [error] = [e for e in record["events"] if e["kind"] == "error"]
    assert "SONIOX_API_KEY" in error["error"] and bad not in json.dumps(record)


async def test_losing_soniox_mid_call_ends_it_with_a_spoken_goodbye(
    serve: Callable[..., Any], net: FakeTwilio, sx: FakeSoniox
) -> None:
    s = await serve(
        {"stt": client(sx), "tts": ScriptedTTS(), "first_message": "Hi"},
        on_message=lambda m: "Sure.",
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=6.0, tail=2.0))
    await wait_until(lambda: any(e["text"] == "Hi" for e in transcript_of(s)), 5)
    await sx.drop_connections()
    await wait_until(lambda: len(sx.live) == 1 and len(sx.connections) == 2)
    await sx.drop_connections()
    await call.wait_ended(10)
    await wait_until(lambda: bool(s.events.get("on_call_end")), 5)
    record = s.events["on_call_end"][0]
    assert record["end_reason"] == "stt_failed"
    assert record["transcript"][-1] == {
        "role": "assistant",
        "text": PipelineOptions().hearing_lost,
    }

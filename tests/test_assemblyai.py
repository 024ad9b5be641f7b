"""AssemblyAISTT and FakeAssemblyAI: the fake's protocol, the client against it, a whole call."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest

from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError
from getpatter.plugins.assemblyai.stt import AssemblyAISTT
from getpatter.testing.assemblyai import FakeAssemblyAI
from getpatter.testing.providers import ScriptedTTS
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech
from stt_kit import collect, feed, finals, hear, said, wait_until

TEXT = "What time do you open?"


@pytest.fixture
async def aai() -> AsyncIterator[FakeAssemblyAI]:
    # Tests send audio faster than real time; the rate check has its own test.
    async with FakeAssemblyAI(transcripts=[TEXT, "Thanks."], latency=0.01, rate_slack=60) as f:
        yield f


def client(aai: FakeAssemblyAI, **kwargs: Any) -> AssemblyAISTT:
    return AssemblyAISTT(api_key=aai.api_key, base_url=aai.ws_url, **kwargs)


# --- the fake's protocol, spoken by hand ---------------------------------------------------


class Raw:
    """A hand-driven socket to the fake."""

    def __init__(self, aai: FakeAssemblyAI) -> None:
        self.aai = aai
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse

    async def open(
        self, query: str = "sample_rate=8000&encoding=pcm_mulaw", auth: str | None = None
    ) -> Raw:
        headers = {} if auth == "" else {"Authorization": auth or self.aai.api_key}
        self.ws = await self.http.ws_connect(f"{self.aai.ws_url}/v3/ws?{query}", headers=headers)
        return self

    async def until(self, kind: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            async for msg in self.ws:
                out.append(json.loads(msg.data))
                if out[-1]["type"] == kind:
                    break
        return out

    async def closed(self) -> tuple[dict[str, Any], int | None]:
        """The Error frame the fake sent before closing, and the close code."""
        async with asyncio.timeout(5):
            error = json.loads((await self.ws.receive()).data)
            assert (await self.ws.receive()).type == aiohttp.WSMsgType.CLOSE
        return error, self.ws.close_code

    async def send_chunks(self, audio: bytes, ms: int = 100) -> None:
        for i in range(0, len(audio), 8 * ms):
            chunk = audio[i : i + 8 * ms]
            if len(chunk) >= 400:
                await self.ws.send_bytes(chunk)

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def raw(aai: FakeAssemblyAI) -> AsyncIterator[Raw]:
    r = Raw(aai)
    yield r
    await r.close()


@pytest.mark.parametrize(
    ("auth", "why"),
    [
        ("wrong", "Invalid API key"),
        ("Bearer aai-test-key", "Invalid API key"),  # no scheme, ever
        ("", "Missing Authorization header"),
    ],
)
async def test_fake_refuses_bad_auth_inside_the_socket(raw: Raw, auth: str, why: str) -> None:
    await raw.open(auth=auth)  # the upgrade itself succeeds, as on the real service
    error, code = await raw.closed()
    assert error == {
        "type": "Error",
        "error_code": 1008,
        "error": f"Unauthorized Connection: {why}",
    }
    assert code == 1008


async def test_fake_takes_a_temporary_token(aai: FakeAssemblyAI, raw: Raw) -> None:
    aai.temp_tokens.add("tmp-123")
    await raw.open(query="sample_rate=8000&token=tmp-123", auth="")
    (begin,) = await raw.until("Begin")
    assert begin["id"] and begin["expires_at"] > 0


@pytest.mark.parametrize("query", ["encoding=pcm_mulaw", "sample_rate=8000&encoding=opus"])
async def test_fake_validates_the_query(raw: Raw, query: str) -> None:
    await raw.open(query=query)
    error, code = await raw.closed()
    assert code == 3006 and error["error_code"] == 3006


@pytest.mark.parametrize(("size", "ms"), [(160, 20), (8800, 1100)])
async def test_fake_rejects_frames_outside_50_to_1000_ms(raw: Raw, size: int, ms: int) -> None:
    await raw.open()
    await raw.until("Begin")
    await raw.ws.send_bytes(b"\xff" * size)
    error, code = await raw.closed()
    assert code == 3007
    assert error["error"] == f"Input duration violation: {ms} ms. Expected between 50 and 1000 ms"


async def test_fake_rejects_audio_faster_than_real_time() -> None:
    async with FakeAssemblyAI(rate_slack=0.5) as aai:
        r = Raw(aai)
        try:
            await r.open()
            await r.until("Begin")
            await r.send_chunks(said())
            error, code = await r.closed()
            assert code == 3007 and error["error"].startswith("Audio Transmission Rate Exceeded")
        finally:
            await r.close()


async def test_fake_turns_partial_end_of_turn_formatted_and_terminate(raw: Raw) -> None:
    await raw.open(query="sample_rate=8000&encoding=pcm_mulaw&format_turns=true")
    await raw.until("Begin")
    await raw.send_chunks(said(tail=0.6))
    got = await raw.until("Turn")
    assert got[0]["type"] == "SpeechStarted"
    while not (got[-1]["type"] == "Turn" and got[-1]["turn_is_formatted"]):
        got += await raw.until("Turn")
    turns = [m for m in got if m["type"] == "Turn"]
    partials, end, formatted = turns[:-2], turns[-2], turns[-1]
    assert partials and all(not t["end_of_turn"] for t in partials)
    assert all(t["turn_order"] == 0 for t in turns)
    last = partials[-1]
    assert not last["words"][-1]["word_is_final"]  # transcript holds the final words only
    assert last["transcript"] == " ".join(w["text"] for w in last["words"][:-1])
    assert end["end_of_turn"] and not end["turn_is_formatted"]
    assert end["transcript"] == "what time do you open"
    assert formatted["end_of_turn"] and formatted["transcript"] == TEXT
    await raw.send_chunks(said())  # a second turn, ended by ForceEndpoint
    await raw.ws.send_str(json.dumps({"type": "ForceEndpoint"}))
    got = await raw.until("Turn")
    while not got[-1]["end_of_turn"]:
        got += await raw.until("Turn")
    assert got[-1]["turn_order"] == 1 and got[-1]["transcript"] == "thanks"
    await raw.ws.send_str(json.dumps({"type": "Terminate"}))
    done = await raw.until("Termination")
    assert done[-1]["audio_duration_seconds"] >= 5
    assert (await raw.ws.receive()).type == aiohttp.WSMsgType.CLOSE
    assert raw.ws.close_code == 1000


async def test_fake_ends_the_session_on_an_unknown_message(raw: Raw) -> None:
    await raw.open()
    await raw.until("Begin")
    await raw.ws.send_str(json.dumps({"type": "Flush"}))
    error, code = await raw.closed()
    assert code == 3006 and error["error"] == "Invalid Message Type: Flush"


# --- AssemblyAISTT against the fake --------------------------------------------------------


async def test_streams_partials_then_the_formatted_turn(aai: FakeAssemblyAI) -> None:
    stream = await client(aai).open()
    seen, reader = hear(stream)
    await feed(stream, said(tail=0.6))  # the fake ends the turn after 400 ms of silence
    await wait_until(lambda: bool(finals(seen)))
    assert finals(seen) == [TEXT]
    interims = [t for t in seen if not t.is_final]
    assert interims and interims[-1].text.startswith("what time")
    final = seen[-1]
    assert final.speech_final and final.confidence == pytest.approx(0.93)
    assert final.start is not None and final.end is not None and final.end > final.start
    session = aai.sessions[0]
    assert session.query == {
        "sample_rate": "8000",
        "encoding": "pcm_mulaw",
        "speech_model": "universal-streaming-english",
        "format_turns": "true",
    }
    assert session.headers["AssemblyAI-Version"] == "2025-05-12"  # and the bare key: accepted
    assert all(50 <= ms <= 1000 for ms in session.frame_ms)
    await stream.aclose()
    await reader


async def test_finalize_pads_the_tail_and_forces_the_endpoint(aai: FakeAssemblyAI) -> None:
    stream = await client(aai).open(language="fr")
    seen, reader = hear(stream)
    frames = len(said()) // 160
    frames -= (frames - 1) % 3  # 60 ms chunks, and 20 ms left over
    audio = said()[: frames * 160]
    await feed(stream, audio)
    await stream.finalize()
    await wait_until(lambda: bool(finals(seen)))
    session = aai.sessions[0]
    assert session.count("ForceEndpoint") == 1 and finals(seen) == [TEXT]
    assert session.query["speech_model"] == "universal-streaming-multilingual"
    assert all(50 <= ms <= 1000 for ms in session.frame_ms)
    assert session.frame_ms[-1] == 50  # the last 20 ms, padded with silence
    assert sum(session.frame_ms) == pytest.approx(frames * 20 + 30, abs=0.1)
    await stream.aclose()
    await reader


@pytest.mark.parametrize("kwargs", [{"format_turns": False}, {"format_wait_s": 0.0}])
async def test_without_waiting_for_formatting_the_plain_turn_is_final(
    aai: FakeAssemblyAI, kwargs: dict[str, Any]
) -> None:
    stream = await client(aai, **kwargs).open()
    seen, reader = hear(stream)
    await feed(stream, said())
    await stream.finalize()
    await wait_until(lambda: bool(finals(seen)))
    await asyncio.sleep(0.2)  # a formatted copy, if any, comes and is not a second final
    assert finals(seen) == ["what time do you open"]
    await stream.aclose()
    await reader


async def test_pcm16_at_16khz(aai: FakeAssemblyAI) -> None:
    stt = client(aai, encoding="pcm_s16le", sample_rate=16000, chunk_ms=100)
    assert (stt.encoding, stt.sample_rate) == ("pcm16", 16000)
    stream = await stt.open()
    seen, reader = hear(stream)
    pcm = np.repeat(speech(lead=0.2, tail=0.0), 2).astype("<i2").tobytes()
    await feed(stream, pcm, frame=640)
    await stream.finalize()
    await wait_until(lambda: bool(finals(seen)))
    assert aai.sessions[0].query["encoding"] == "pcm_s16le"
    assert all(100 <= ms <= 1000 for ms in aai.sessions[0].frame_ms[:-1])
    await stream.aclose()
    await reader


async def test_aclose_terminates_and_waits_for_termination(aai: FakeAssemblyAI) -> None:
    stream = await client(aai).open()
    seen, reader = hear(stream)
    await feed(stream, said())  # a turn in flight: Terminate still gives its end
    await stream.aclose()
    await asyncio.wait_for(reader, 1)
    assert finals(seen) == [TEXT]
    assert stream.termination is not None and stream.termination["type"] == "Termination"
    session = aai.sessions[0]
    assert session.count("Terminate") == 1 and session.close_code == 1000 and session.closed
    await stream.send(b"\xff" * 160)  # after close: dropped, no error


async def test_aclose_is_bounded_when_assemblyai_does_not_answer() -> None:
    async with FakeAssemblyAI(latency=5.0, rate_slack=60) as aai:
        stream = await client(aai, close_timeout=0.3).open()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stream.aclose()
        assert loop.time() - started < 1.5
        await wait_until(lambda: not aai.live)


@pytest.mark.parametrize(
    ("refuse", "words"),
    [
        (None, "ASSEMBLYAI_API_KEY"),
        ((1008, "Unauthorized Connection: Insufficient account balance"), "balance"),
        ((3009, "Unauthorized Connection: Too many concurrent sessions"), "concurrent"),
    ],
)
async def test_refusals_are_connection_errors_without_the_key(
    refuse: tuple[int, str] | None, words: str
) -> None:
    key = "aai-secret-key-123456"
    async with FakeAssemblyAI(api_key=key, refuse=refuse) as aai:
        used = "aai-wrong-key-654321" if refuse is None else key
        with pytest.raises(PatterConnectionError) as err:
            await AssemblyAISTT(api_key=used, base_url=aai.ws_url).open()
    text = f"{err.value} {err.value!r}"
    assert words in text and "AssemblyAI" in text and used not in text
    assert err.value.__cause__ is None


async def test_refused_settings_are_a_provider_error(aai: FakeAssemblyAI) -> None:
    with pytest.raises(ProviderError, match="3006"):
        await client(aai, speech_model="universal-streaming-klingon").open()


async def test_a_protocol_violation_mid_call_fails_without_reconnecting() -> None:
    async with FakeAssemblyAI(rate_slack=0.5) as aai:
        stream = await client(aai).open()
        _seen, reader = hear(stream)
        with contextlib.suppress(ProviderError):  # send() may be the first to hear of it
            await feed(stream, said())  # much faster than real time
        with pytest.raises(ProviderError, match="3007"):
            await asyncio.wait_for(reader, 3)
        assert stream.reconnects == 0 and len(aai.sessions) == 1
        await stream.aclose()


async def test_unreachable_is_a_connection_error() -> None:
    async with FakeAssemblyAI() as aai:
        url = aai.ws_url
    with pytest.raises(PatterConnectionError, match="could not reach AssemblyAI"):
        await AssemblyAISTT(api_key="k", base_url=url, connect_timeout=2).open()


async def test_a_dropped_socket_reconnects_once_and_carries_on(aai: FakeAssemblyAI) -> None:
    stream = await client(aai).open()
    seen, reader = hear(stream)
    await feed(stream, said())
    await stream.finalize()
    await wait_until(lambda: finals(seen) == [TEXT])
    assert await aai.drop_connections() == 1
    await feed(stream, said(lead=0.0, tail=0.0)[:1600])  # during the outage: sent on after
    await wait_until(lambda: len(aai.sessions) == 2 and not aai.sessions[1].closed)
    await feed(stream, said(lead=0.0))
    await stream.finalize()
    await wait_until(lambda: finals(seen) == [TEXT, "Thanks."])
    assert stream.reconnects == 1
    assert all(50 <= ms <= 1000 for ms in aai.sessions[1].frame_ms)
    assert sum(aai.sessions[1].frame_ms) > len(said(lead=0.0)) / 8  # with the outage audio
    later = seen[-1]
    assert later.start is not None and later.start > 2.0  # times run on across sessions
    await stream.aclose()
    await reader


async def test_a_socket_that_drops_again_at_once_fails_the_stream(aai: FakeAssemblyAI) -> None:
    stream = await client(aai).open()
    reader = asyncio.create_task(collect(stream, []))
    await aai.drop_connections()
    await wait_until(lambda: len(aai.live) == 1 and len(aai.sessions) == 2)
    await asyncio.sleep(0.05)
    await aai.drop_connections()
    with pytest.raises(PatterConnectionError, match="again"):
        await asyncio.wait_for(reader, 3)
    with pytest.raises(PatterConnectionError):
        await stream.send(said())
    await stream.aclose()


# --- construction and registry -------------------------------------------------------------


def test_key_from_env_and_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", "aai-env-key-000")
    stt = AssemblyAISTT()
    assert "aai-env-key-000" not in repr(stt) and "<set>" in repr(stt)
    assert (stt.sample_rate, stt.encoding) == (8000, "mulaw")
    monkeypatch.delenv("ASSEMBLYAI_API_KEY")
    with pytest.raises(PatterConfigError, match="ASSEMBLYAI_API_KEY"):
        AssemblyAISTT()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "ftp://x"},
        {"encoding": "opus"},
        {"sample_rate": 4000},
        {"chunk_ms": 20},
        {"end_of_turn_confidence_threshold": 2},
        {"keyterms": "acme"},
    ],
)
def test_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(PatterConfigError):
        AssemblyAISTT(api_key="k", **kwargs)


def test_base_url_spellings_and_registry() -> None:
    stt = AssemblyAISTT(api_key="k", base_url="https://streaming.assemblyai.com/v3/ws")
    assert stt.options.base_url == "wss://streaming.assemblyai.com"
    assert isinstance(Registry().create("stt", "assemblyai", api_key="k"), AssemblyAISTT)


# --- a whole call through the fake phone network -------------------------------------------


def transcript_of(s: Any) -> list[dict[str, Any]]:
    return list(s.events.get("on_transcript", []))


async def test_a_call_transcribed_by_assemblyai(serve: Callable[..., Any], net: FakeTwilio) -> None:
    async with FakeAssemblyAI(transcripts=[TEXT], latency=0.05) as aai:  # real-time rate rule
        heard: list[str] = []
        s = await serve(
            {"stt": client(aai), "tts": ScriptedTTS(), "first_message": "Hi"},
            on_message=lambda m: heard.append(m["text"]) or "We open at nine.",
        )
        call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0, tail=2.0))
        reply = "We open at nine."
        await wait_until(lambda: any(e["text"] == reply for e in transcript_of(s)), 12)
        await call.hangup()
        await call.wait_ended()
        await wait_until(lambda: bool(s.events.get("on_call_end")), 5)
        assert heard == [TEXT]
        texts = [(e["role"], e["text"]) for e in s.events["on_call_end"][0]["transcript"]]
        assert texts[:3] == [("assistant", "Hi"), ("user", TEXT), ("assistant", reply)]
        assert np.abs(call.heard_audio().astype(np.int32)).max() > 2000
        session = aai.sessions[0]
        assert session.query["encoding"] == "pcm_mulaw" and session.error is None
        assert all(50 <= ms <= 1000 for ms in session.frame_ms)
        await wait_until(lambda: session.closed)
        assert session.count("Terminate") == 1 and session.close_code == 1000

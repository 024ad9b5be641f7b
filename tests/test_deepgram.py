"""DeepgramSTT and FakeDeepgram: the fake's protocol, the client against it, a whole call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest

from getpatter.core.pipeline import PipelineOptions
from getpatter.core.providers import Transcript
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError
from getpatter.plugins.deepgram.stt import DeepgramSTT
from getpatter.testing.deepgram import NET0001_REASON, FakeDeepgram
from getpatter.testing.providers import ScriptedTTS
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech
from stt_kit import feed, hear, said, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # websockets.legacy

QUERY = "encoding=mulaw&sample_rate=8000&channels=1"


@pytest.fixture
async def dg() -> AsyncIterator[FakeDeepgram]:
    async with FakeDeepgram(transcripts=["What time do you open?", "Thanks."], latency=0.01) as f:
        yield f


def client(dg: FakeDeepgram, **kwargs: Any) -> DeepgramSTT:
    return DeepgramSTT(api_key=dg.api_key, base_url=dg.ws_url, **kwargs)


# --- the fake's protocol, spoken by hand ---------------------------------------------------


async def raw(
    dg: FakeDeepgram, query: str = QUERY, auth: str | None = None
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession()
    headers = {"Authorization": auth if auth is not None else f"Token {dg.api_key}"}
    try:
        ws = await http.ws_connect(f"{dg.ws_url}/v1/listen?{query}", headers=headers)
    except BaseException:
        await http.close()
        raise
    return http, ws


async def messages(ws: aiohttp.ClientWebSocketResponse, until: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        async for msg in ws:
            out.append(json.loads(msg.data))
            if out[-1]["type"] == until:
                break
    return out


@pytest.mark.parametrize("auth", ["Token wrong", "", "Bearer dg-test-key", "dg-test-key"])
async def test_fake_refuses_bad_auth_on_the_upgrade(dg: FakeDeepgram, auth: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await raw(dg, auth=auth)
    assert err.value.status == 401
    assert dg.rejected == [401] and dg.connections == []


@pytest.mark.parametrize(
    "query",
    ["encoding=mulaw", "encoding=wav&sample_rate=8000", f"{QUERY}&utterance_end_ms=1000"],
)
async def test_fake_validates_the_query(dg: FakeDeepgram, query: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await raw(dg, query=query)
    assert err.value.status == 400


async def test_fake_endpointing_interims_utterance_end_and_close(dg: FakeDeepgram) -> None:
    query = f"{QUERY}&interim_results=true&endpointing=300&utterance_end_ms=1000&vad_events=true"
    http, ws = await raw(dg, query=query + "&smart_format=true")
    try:
        await ws.send_bytes(said(tail=1.4))
        got = await messages(ws, until="UtteranceEnd")
        kinds = [m["type"] for m in got]
        assert kinds[0] == "SpeechStarted" and kinds[-1] == "UtteranceEnd"
        results = [m for m in got if m["type"] == "Results"]
        interims, final = results[:-1], results[-1]
        assert interims and not any(m["is_final"] for m in interims)
        assert final["is_final"] and final["speech_final"] and not final["from_finalize"]
        assert final["channel"]["alternatives"][0]["transcript"] == "What time do you open?"
        assert got[-1]["last_word_end"] == final["channel"]["alternatives"][0]["words"][-1]["end"]
        await ws.send_str(json.dumps({"type": "Finalize"}))  # nothing left: an empty final
        (empty,) = await messages(ws, until="Results")
        assert empty["from_finalize"] and empty["channel"]["alternatives"][0]["transcript"] == ""
        assert empty["start"] == pytest.approx(final["start"] + final["duration"], abs=1e-3)
        await ws.send_str(json.dumps({"type": "CloseStream"}))
        (metadata,) = await messages(ws, until="Metadata")
        assert metadata["duration"] == pytest.approx(len(said(tail=1.4)) / 8000, abs=0.03)
        assert await ws.receive() and ws.close_code == 1000
    finally:
        await http.close()


async def test_fake_finalize_flushes_and_plain_text_without_smart_format(
    dg: FakeDeepgram,
) -> None:
    http, ws = await raw(dg, query=f"{QUERY}&endpointing=false")
    try:
        await ws.send_bytes(said())
        await ws.send_str(json.dumps({"type": "Finalize"}))
        (final,) = await messages(ws, until="Results")  # no interims, no SpeechStarted asked
        assert final["is_final"] and final["from_finalize"] and not final["speech_final"]
        assert final["channel"]["alternatives"][0]["transcript"] == "what time do you open"
        await ws.send_str('{"type": "Hello"}')
        (error,) = await messages(ws, until="Error")
        assert error["variant"] == "SchemaError" and not ws.closed
    finally:
        await http.close()


async def test_fake_closes_idle_sockets_like_net_0001() -> None:
    async with FakeDeepgram(idle_timeout=0.3) as dg:
        http, ws = await raw(dg)
        try:
            for _ in range(4):  # KeepAlive holds it open...
                await asyncio.sleep(0.15)
                await ws.send_str(json.dumps({"type": "KeepAlive"}))
            assert not ws.closed
            msg = await asyncio.wait_for(ws.receive(), 2)  # ...silence does not
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1011 and msg.extra == NET0001_REASON
            assert dg.connections[0].count("KeepAlive") == 4
        finally:
            await http.close()


# --- DeepgramSTT against the fake ----------------------------------------------------------


async def test_streams_interims_then_a_final(dg: FakeDeepgram) -> None:
    stream = await client(dg).open(language="en-US")
    seen, reader = hear(stream)
    await feed(stream, said(tail=0.5))
    await wait_until(lambda: any(t.is_final for t in seen))
    await stream.aclose()
    await reader
    interims = [t for t in seen if not t.is_final]
    finals = [t for t in seen if t.is_final and t.text]
    assert interims and all(not t.speech_final for t in interims)
    assert [(t.text, t.speech_final) for t in finals] == [("What time do you open?", True)]
    assert finals[0].confidence == pytest.approx(0.97) and finals[0].end > finals[0].start >= 0
    conn = dg.connections[0]
    assert conn.query == {
        "model": "nova-3",
        "language": "en-US",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "1",
        "interim_results": "true",
        "smart_format": "true",
        "punctuate": "true",
        "vad_events": "true",
        "endpointing": "300",
        "utterance_end_ms": "1000",
    }
    assert conn.headers["Authorization"] == "***"  # the fake checked `Token <key>`
    assert bytes(conn.audio) == said(tail=0.5)  # the carrier's bytes, untouched


async def test_finalize_turns_the_utterance_into_a_final(dg: FakeDeepgram) -> None:
    stream = await client(dg, endpointing_ms=None, language="es").open(language="en")
    seen, reader = hear(stream)
    await feed(stream, said())
    await stream.finalize()
    await wait_until(lambda: any(t.is_final for t in seen))
    final = next(t for t in seen if t.is_final)
    assert final.text == "What time do you open?" and not final.speech_final
    assert dg.connections[0].query["endpointing"] == "false"
    assert dg.connections[0].query["language"] == "es"  # the STT's own language wins
    assert dg.connections[0].count("Finalize") == 1
    await stream.aclose()
    await reader


async def test_utterance_end_is_an_empty_speech_final(dg: FakeDeepgram) -> None:
    stream = await client(dg).open()
    seen, reader = hear(stream)
    await feed(stream, said(tail=1.5))
    await wait_until(lambda: any(t.is_final and not t.text for t in seen))
    end = seen[-1]
    assert end == Transcript("", True, True, end=end.end) and end.end is not None
    await stream.aclose()
    await reader


async def test_keepalive_holds_an_idle_socket_open() -> None:
    async with FakeDeepgram(idle_timeout=0.5, latency=0.01) as dg:
        stream = await client(dg, keepalive_s=0.15).open()
        seen, reader = hear(stream)
        await asyncio.sleep(1.2)  # between utterances the pipeline sends nothing
        assert len(dg.live) == 1 and stream.reconnects == 0
        assert dg.connections[0].count("KeepAlive") >= 5
        await feed(stream, said())
        await stream.finalize()
        await wait_until(lambda: any(t.is_final for t in seen))
        await stream.aclose()
        await reader


async def test_aclose_flushes_waits_for_metadata_and_closes(dg: FakeDeepgram) -> None:
    stream = await client(dg, endpointing_ms=None).open()
    seen, reader = hear(stream)
    await feed(stream, said())  # mid-utterance: CloseStream still gives its final
    await stream.aclose()
    await asyncio.wait_for(reader, 1)  # the transcript stream ended
    assert [t.text for t in seen if t.is_final] == ["What time do you open?"]
    assert stream.metadata is not None and stream.metadata["type"] == "Metadata"
    conn = dg.connections[0]
    assert conn.count("CloseStream") == 1 and conn.close_code == 1000 and conn.closed
    await stream.send(b"\xff" * 160)  # after close: dropped, no error


async def test_aclose_is_bounded_when_deepgram_does_not_answer() -> None:
    async with FakeDeepgram(latency=5.0) as dg:
        stream = await client(dg, close_timeout=0.3).open()
        await feed(stream, said())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stream.aclose()
        assert loop.time() - started < 2.0
        await wait_until(lambda: not dg.live)


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, "API key"), (403, "API key"), (402, "credits"), (429, "concurrent")],
)
async def test_refusals_are_connection_errors_without_the_key(status: int, words: str) -> None:
    key = "dg-secret-key-123456"
    async with FakeDeepgram(api_key=key, refuse_status=status if status != 401 else None) as dg:
        stt = DeepgramSTT(
            api_key=key if status != 401 else "dg-wrong-key-654321", base_url=dg.ws_url
        )
        with pytest.raises(PatterConnectionError) as err:
            await stt.open()
    text = f"{err.value} {err.value!r}"
    assert words in text and "Deepgram" in text
    assert key not in text and "dg-wrong-key-654321" not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__


async def test_refused_settings_are_a_provider_error() -> None:
    async with FakeDeepgram(refuse_status=400) as dg:
        with pytest.raises(ProviderError, match="settings"):
            await client(dg, model="nova-9").open()


async def test_unreachable_is_a_connection_error() -> None:
    async with FakeDeepgram() as dg:
        url = dg.ws_url
    with pytest.raises(PatterConnectionError, match="could not reach Deepgram"):
        await DeepgramSTT(api_key="k", base_url=url, connect_timeout=2).open()


async def test_a_dropped_socket_reconnects_once_and_replays_the_utterance(
    dg: FakeDeepgram,
) -> None:
    stream = await client(dg, endpointing_ms=None).open()
    seen, reader = hear(stream)
    audio = said()
    half = len(audio) // 2 // 160 * 160
    await feed(stream, audio[:half])
    await wait_until(lambda: len(dg.connections[0].audio) == half)
    assert await dg.drop_connections() == 1
    await feed(stream, audio[half:])  # while reconnecting: kept for the new socket
    await stream.finalize()
    await wait_until(lambda: any(t.is_final for t in seen), 5)
    assert stream.reconnects == 1 and len(dg.connections) == 2
    assert bytes(dg.connections[1].audio) == audio  # the whole utterance, replayed
    assert [t.text for t in seen if t.is_final] == ["What time do you open?"]
    assert dg.connections[1].count("Finalize") == 1
    await feed(stream, said())  # and the call carries on
    await stream.finalize()
    await wait_until(lambda: [t.text for t in seen if t.is_final][-1:] == ["Thanks."])
    assert seen[-1].start is not None and seen[-1].start >= len(audio) / 8000 - 0.05
    await stream.aclose()
    await reader


async def test_a_socket_that_drops_again_at_once_fails_the_stream(dg: FakeDeepgram) -> None:
    stream = await client(dg).open()
    _seen, reader = hear(stream)
    await dg.drop_connections()
    await wait_until(lambda: len(dg.live) == 1 and len(dg.connections) == 2)
    await dg.drop_connections()
    with pytest.raises(PatterConnectionError, match="again"):
        await asyncio.wait_for(reader, 3)
    with pytest.raises(PatterConnectionError):
        await stream.send(said())
    await stream.aclose()


# --- construction and registry -------------------------------------------------------------


def test_key_from_env_and_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-env-key-000")
    stt = DeepgramSTT()
    assert "dg-env-key-000" not in repr(stt) and "<set>" in repr(stt)
    assert stt.sample_rate == 8000 and stt.encoding == "mulaw"
    monkeypatch.delenv("DEEPGRAM_API_KEY")
    with pytest.raises(PatterConfigError, match="DEEPGRAM_API_KEY"):
        DeepgramSTT()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "ftp://x"},
        {"model": ""},
        {"keepalive_s": 12},
        {"endpointing_ms": -1},
        {"utterance_end_ms": 1000, "interim_results": False},
        {"keyterms": "acme"},
    ],
)
def test_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(PatterConfigError):
        DeepgramSTT(api_key="k", **kwargs)


def test_base_url_spellings() -> None:
    for url in ("https://api.deepgram.com/", "wss://api.deepgram.com/v1/listen"):
        assert DeepgramSTT(api_key="k", base_url=url).options.base_url == "wss://api.deepgram.com"


def test_registered_by_name() -> None:
    stt = Registry().create("stt", "deepgram", api_key="k")
    assert isinstance(stt, DeepgramSTT)


# --- a whole call through the fake phone network -------------------------------------------


def transcript_of(s: Any) -> list[dict[str, Any]]:
    """The call's transcript so far, as on_transcript reported it."""
    return list(s.events.get("on_transcript", []))


async def test_a_call_transcribed_by_deepgram(
    serve: Callable[..., Any], net: FakeTwilio, dg: FakeDeepgram
) -> None:
    heard: list[str] = []
    tts = ScriptedTTS()
    s = await serve(
        {"stt": client(dg), "tts": tts, "first_message": "Hi"},
        on_message=lambda m: heard.append(m["text"]) or "We open at nine.",
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0, tail=2.0))
    await wait_until(lambda: any(e["text"] == "We open at nine." for e in transcript_of(s)), 12)
    await call.hangup()
    await call.wait_ended()
    await wait_until(lambda: bool(s.events.get("on_call_end")), 5)
    assert heard == ["What time do you open?"]
    record = s.events["on_call_end"][0]
    texts = [(e["role"], e["text"]) for e in record["transcript"]]
    assert texts[:3] == [
        ("assistant", "Hi"),
        ("user", "What time do you open?"),
        ("assistant", "We open at nine."),
    ]
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 2000
    conn = dg.connections[0]
    assert conn.query["encoding"] == "mulaw" and conn.audio  # carrier μ-law straight through
    await wait_until(lambda: conn.closed)
    assert conn.count("CloseStream") == 1 and conn.close_code == 1000


async def lose_deepgram(dg: FakeDeepgram, s: Any, call: Any) -> dict[str, Any]:
    """Drop the socket, and the reconnect at once too; the call's record once it is over."""
    await dg.drop_connections()
    await wait_until(lambda: len(dg.live) == 1 and len(dg.connections) == 2)
    await dg.drop_connections()
    await call.wait_ended(10)
    await wait_until(lambda: bool(s.events.get("on_call_end")), 5)
    record: dict[str, Any] = s.events["on_call_end"][0]
    return record


async def test_losing_deepgram_mid_call_ends_it_with_a_spoken_goodbye(
    serve: Callable[..., Any], net: FakeTwilio, dg: FakeDeepgram
) -> None:
    """The socket drops, the reconnect drops at once too: the agent can still speak, so it
    says it can't hear any more and hangs up, rather than the line going dead."""
    tts = ScriptedTTS()
    s = await serve(
        {"stt": client(dg), "tts": tts, "first_message": "Hi"}, on_message=lambda m: "Sure."
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=6.0, tail=2.0))
    await wait_until(lambda: any(e["text"] == "Hi" for e in transcript_of(s)), 5)
    record = await lose_deepgram(dg, s, call)
    goodbye = PipelineOptions().hearing_lost
    assert record["end_reason"] == "stt_failed"
    assert record["transcript"][-1] == {"role": "assistant", "text": goodbye}
    assert " ".join(tts.texts[1:]) == goodbye and call.said == []  # the agent's own voice
    assert call.status == "completed"
    [error] = [e for e in record["events"] if e["kind"] == "error"]
    assert error["where"] == "stt" and "PatterConnectionError" in error["error"]


async def test_with_the_tts_gone_too_the_carrier_says_the_goodbye(
    serve: Callable[..., Any], net: FakeTwilio, dg: FakeDeepgram
) -> None:
    tts = ScriptedTTS(fail_with=ProviderError("TTS is down"))
    s = await serve({"stt": client(dg), "tts": tts}, on_message=lambda m: "Sure.")
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=6.0, tail=2.0))
    await wait_until(lambda: len(dg.live) == 1)
    record = await lose_deepgram(dg, s, call)
    assert record["end_reason"] == "stt_failed"
    assert call.said == [PipelineOptions().hearing_lost]


async def test_a_call_whose_final_never_comes_still_gets_its_answer(
    serve: Callable[..., Any], net: FakeTwilio, dg: FakeDeepgram
) -> None:
    """Deepgram shows interims but never the final (not even for Finalize): the caller is
    still answered, from the last interim, and the turn's metrics say so."""
    dg.stall = "no_final"
    heard: list[str] = []
    s = await serve(
        {"stt": client(dg), "tts": ScriptedTTS()},
        on_message=lambda m: heard.append(m["text"]) or "We open at nine.",
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=1.0, tail=3.0))
    await wait_until(lambda: any(e["text"] == "We open at nine." for e in transcript_of(s)), 12)
    await call.hangup()
    await wait_until(lambda: bool(s.events.get("on_call_end")), 5)
    assert len(heard) == 1 and "What time do you open?".startswith(heard[0])
    [turn] = s.events["on_call_end"][0]["metrics"]["turns"]
    assert turn["stt_timeout"] is True and turn["user_text"] == heard[0]
    assert dg.connections[0].count("Finalize") == 2  # at the end of speech, and at the deadline

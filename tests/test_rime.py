"""RimeTTS: the fake Rime socket's protocol, the client over real sockets (sentences, barge-in,
drops, refusals), and a whole call spoken by Rime (the fake) through the fake phone network."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from getpatter.core.audio import pcm16_bytes
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError
from getpatter.plugins.rime.tts import RimeTTS
from getpatter.testing.engines import speech_tone
from getpatter.testing.rime import FakeRime
from getpatter.testing.twilio import FakeTwilio

from call_kit import fake_fixture, loaded_on_import, peak, poll, said
from tts_kit import (
    CUT,
    DIALOGUE,
    SENTENCES,
    audio_of,
    call_spoken_by,
    interrupt,
    mulaw,
    mulaw_len,
    say,
    say_cut,
    until,
)

KEY = "rime_SECRET-do-not-print-77"


fake = fake_fixture(FakeRime, KEY)


def tts_for(fake: FakeRime, **kwargs: Any) -> RimeTTS:
    return RimeTTS(api_key=KEY, base_url=fake.base_url, **kwargs)


async def connect(http: aiohttp.ClientSession, fake: FakeRime, query: str) -> Any:
    return await http.ws_connect(
        f"{fake.ws_url}?{query}", headers={"Authorization": f"Bearer {KEY}"}
    )


# --- the fake ------------------------------------------------------------------------------


async def test_fake_checks_the_key_and_the_speaker(fake: FakeRime) -> None:
    async with aiohttp.ClientSession() as http:
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer wrong"}, 401),
        ):
            async with http.get(fake.ws_url + "?speaker=astra", headers=headers) as resp:
                assert resp.status == status
        async with http.get(fake.ws_url, headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status == 400
    assert fake.rejected == [401, 401, 400]


async def test_fake_segment_never_speaks_at_flush_with_the_latest_context(fake: FakeRime) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await connect(
            http, fake, "speaker=astra&audioFormat=mulaw&samplingRate=8000&segment=never"
        )
        await ws.send_json({"text": "Hello there. "})
        await ws.send_json({"text": "How are you? ", "contextId": "c1"})
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive_json(timeout=0.3)  # nothing before the flush, sentence ends or not
        await ws.send_json({"operation": "flush"})
        events = await until(ws, "done")
        assert audio_of(events) == mulaw("Hello there. How are you?")
        assert {e["contextId"] for e in events} == {"c1"}
        stamps = next(e for e in events if e["type"] == "timestamps")["word_timestamps"]
        assert stamps["words"][0] == "Hello" and len(stamps["start"]) == len(stamps["end"]) == 5
        await ws.send_json({"operation": "dance"})
        assert (await ws.receive_json(timeout=2))["type"] == "error"  # and the socket stays
        await ws.send_json({"text": "Bye. ", "contextId": "c2"})
        await ws.send_json({"operation": "eos"})
        events = await until(ws, "done")
        assert audio_of(events) == mulaw("Bye.") and events[-1] == {
            "type": "done",
            "contextId": "c2",
        }
        assert (await ws.receive(timeout=2)).type == aiohttp.WSMsgType.CLOSE


async def test_fake_clear_drops_only_text_not_yet_submitted(fake: FakeRime) -> None:
    fake.audio_speed, fake.chunk_ms = 2.0, 50
    async with aiohttp.ClientSession() as http:
        ws = await connect(
            http, fake, "speaker=astra&audioFormat=pcm&samplingRate=16000&segment=never"
        )
        await ws.send_json({"text": "A sentence already being spoken.", "contextId": "a"})
        await ws.send_json({"operation": "flush"})
        assert (await ws.receive_json(timeout=2))["type"] == "chunk"
        await ws.send_json({"text": "Never said.", "contextId": "b"})
        await ws.send_json({"operation": "clear"})
        events = await until(ws, "done")
        assert events[-1]["contextId"] == "a"  # the running synthesis went on to its end
        assert len(audio_of(events)) + 1600 >= len(pcm16_bytes(speech_tone("x" * 31, 16000)))
        await ws.send_json({"operation": "flush"})
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive_json(timeout=0.3)  # the cleared text is gone
        assert [t for t, _ in fake.sessions[0].synthesized] == ["A sentence already being spoken."]
        await ws.close()


async def test_fake_by_sentence_and_wav(fake: FakeRime) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, fake, "speaker=cove&lang=fra")
        await ws.send_json({"text": "Bonjour "})
        await ws.send_json({"text": "tout le monde. "})
        events = await until(ws, "done")
        audio = audio_of(events)
        assert audio[:4] == b"RIFF" and audio[44:] == pcm16_bytes(
            speech_tone("Bonjour tout le monde.", 24000)
        )
        assert not [e for e in events if e["type"] == "timestamps"]  # not for French
        await ws.close()


# --- the client ----------------------------------------------------------------------------


async def test_sentences_in_the_carriers_format_each_on_its_context(fake: FakeRime) -> None:
    tts = tts_for(fake, speaker="cove", model_id="mistv2")
    stream = await tts.open()
    assert await say(stream, "Hello there.") == mulaw("Hello there.")
    assert await say(stream, "  How can   I help? ") == mulaw("How can I help?")
    await stream.aclose()
    session = fake.sessions[0]
    assert len(fake.sessions) == 1 and session.headers["Authorization"] == f"Bearer {KEY}"
    assert session.query == {
        "speaker": "cove",
        "modelId": "mistv2",
        "audioFormat": "mulaw",
        "samplingRate": "8000",
        "lang": "eng",
        "segment": "never",
    }
    assert session.received == [
        {"text": "Hello there. ", "contextId": "s1"},
        {"operation": "flush"},
        {"text": "How can I help? ", "contextId": "s2"},
        {"operation": "flush"},
    ]
    assert not fake.live_sessions


async def test_closing_the_iterator_clears_closes_and_reopens_at_once() -> None:
    async with FakeRime(KEY, audio_speed=1.0, chunk_ms=50) as fake:
        stream = await tts_for(fake).open()
        assert await interrupt(stream) < 0.2
        first = fake.sessions[0]
        assert first.received[-1] == {"operation": "clear"}
        await poll(lambda: first.closed and len(fake.sessions) == 2, 50, 0.02)
        assert first.closed and len(fake.live_sessions) == 1  # the next one is ready
        assert await say(stream, "Sure.") == mulaw("Sure.")  # nothing of the cancelled one
        assert fake.sessions[1].synthesized == [("Sure.", "s2")]
        await stream.aclose()


async def test_bad_key_or_quota_is_a_connection_error_without_the_key(fake: FakeRime) -> None:
    wrong = "rime_WRONG-secret-31337"
    with pytest.raises(PatterConnectionError, match="RIME_API_KEY") as err:
        await RimeTTS(api_key=wrong, base_url=fake.base_url).open()
    assert wrong not in str(err.value)
    fake.refuse_with = 429
    with pytest.raises(PatterConnectionError, match="429"):
        await tts_for(fake).open()


async def test_a_socket_dropped_mid_sentence_reconnects_once_and_carries_on() -> None:
    async with FakeRime(KEY, audio_speed=4.0, chunk_ms=50) as fake:
        stream = await tts_for(fake).open()
        got, drops = await say_cut(stream, fake, at=(800,))
        assert drops == [1]
        assert got == mulaw(CUT)  # whole, and nothing twice
        assert len(fake.sessions) == 2
        with pytest.raises(PatterConnectionError, match="dropped again"):
            await say_cut(stream, fake, at=(800, 1600))
        await stream.aclose()


async def test_an_error_event_fails_the_sentence_and_the_socket_goes_on(fake: FakeRime) -> None:
    stream = await tts_for(fake, extra_params={"audioFormat": "mp3"}).open()
    with pytest.raises(ProviderError, match="not produced"):
        await say(stream, "Compressed, please.")
    assert fake.sessions[0].query["audioFormat"] == "mp3"
    await stream.aclose()


async def test_pcm_output(fake: FakeRime) -> None:
    stream = await tts_for(fake, sample_rate=16000, encoding="pcm16").open()
    assert await say(stream, "Wideband.") == pcm16_bytes(speech_tone("Wideband.", 16000))
    assert fake.sessions[0].query["audioFormat"] == "pcm"
    await stream.aclose()


def test_config_errors_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIME_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="RIME_API_KEY"):
        RimeTTS()
    with pytest.raises(PatterConfigError, match="8000 Hz only"):
        RimeTTS(api_key=KEY, sample_rate=16000)
    with pytest.raises(PatterConfigError, match="wss://"):
        RimeTTS(api_key=KEY, base_url="ftp://rime.example")
    monkeypatch.setenv("RIME_API_KEY", KEY)
    tts = RimeTTS(base_url="https://users-ws.rime.ai/ws3", speed_alpha=1.2)
    assert KEY not in repr(tts) and KEY not in repr(tts.options) and KEY not in tts.options.url
    url = urlsplit(tts.options.url)
    assert (url.scheme, url.netloc, url.path) == ("wss", "users-ws.rime.ai", "/ws3")
    assert parse_qs(url.query)["speedAlpha"] == ["1.2"]


def test_registered_and_lazy() -> None:
    assert Registry().load("tts", "rime") is RimeTTS
    assert loaded_on_import("rime", ("aiohttp", "getpatter.plugins.rime.")) == "[]"


# --- a whole call ----------------------------------------------------------------------------


async def test_a_call_spoken_by_rime(serve: Callable[..., Any], net: FakeTwilio) -> None:
    async with FakeRime(KEY, audio_speed=4.0) as fake:
        record, call = await call_spoken_by(
            serve, net, fake, tts_for(fake), lambda m: m.get("operation") == "flush"
        )
        assert len(fake.sessions) == 1 and not fake.live_sessions  # one socket, closed at the end
        assert [t for t, _ in fake.sessions[0].synthesized] == SENTENCES
        assert said(record)[:3] == DIALOGUE
        heard = call.heard_audio()
        assert peak(heard) > 2000
        assert len(heard) >= 0.9 * mulaw_len(SENTENCES)

"""RimeTTS: the fake Rime socket's protocol, the client over real sockets (sentences, barge-in,
drops, refusals), and a whole call spoken by Rime (the fake) through the fake phone network."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import numpy as np
import pytest

from getpatter.core.audio import pcm16_bytes, ulaw_encode
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError
from getpatter.plugins.rime.tts import RimeStream, RimeTTS
from getpatter.testing.engines import speech_tone
from getpatter.testing.providers import ScriptedSTT
from getpatter.testing.rime import FakeRime
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech

KEY = "rime_SECRET-do-not-print-77"


def mulaw(text: str) -> bytes:
    return ulaw_encode(speech_tone(text, 8000))


@pytest.fixture
async def fake() -> AsyncIterator[FakeRime]:
    async with FakeRime(KEY) as f:
        yield f


def tts_for(fake: FakeRime, **kwargs: Any) -> RimeTTS:
    return RimeTTS(api_key=KEY, base_url=fake.base_url, **kwargs)


async def say(stream: RimeStream, text: str) -> bytes:
    return b"".join([chunk async for chunk in stream.synthesize(text)])


async def connect(http: aiohttp.ClientSession, fake: FakeRime, query: str) -> Any:
    return await http.ws_connect(
        f"{fake.ws_url}?{query}", headers={"Authorization": f"Bearer {KEY}"}
    )


async def until(ws: Any, kind: str) -> list[dict[str, Any]]:
    out = []
    while True:
        msg = await ws.receive_json(timeout=3)
        out.append(msg)
        if msg["type"] == kind:
            return out


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["data"]) for e in events if e["type"] == "chunk")


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
        sentence = stream.synthesize("A long sentence that the caller is about to interrupt.")
        await anext(sentence)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sentence.aclose()
        assert loop.time() - started < 0.2
        first = fake.sessions[0]
        assert first.received[-1] == {"operation": "clear"}
        for _ in range(50):
            if first.closed and len(fake.sessions) == 2:
                break
            await asyncio.sleep(0.02)
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
        text = "This sentence is cut by the network halfway through."
        got = b""
        async for chunk in stream.synthesize(text):
            got += chunk
            if len(got) == 800:
                assert await fake.drop_connections() == 1
        assert got == mulaw(text)  # whole, and nothing twice
        assert len(fake.sessions) == 2
        got = b""
        with pytest.raises(PatterConnectionError, match="dropped again"):
            async for chunk in stream.synthesize(text):
                got += chunk
                if len(got) in (800, 1600):
                    await fake.drop_connections()
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
    code = (
        "import getpatter, sys\nfrom getpatter.plugins.rime import *\n"
        "print([m for m in sys.modules if m.startswith(('aiohttp', 'getpatter.plugins.rime.'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- a whole call ----------------------------------------------------------------------------


async def test_a_call_spoken_by_rime(serve: Callable[..., Any], net: FakeTwilio) -> None:
    async with FakeRime(KEY, audio_speed=4.0) as fake:
        s = await serve(
            {
                "stt": ScriptedSTT(["what time do you open"]),
                "tts": tts_for(fake),
                "first_message": "Acme, hello!",
            },
            on_message=lambda msg: "We open at nine. See you then!",
        )
        call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0, tail=2.0))

        def flushes() -> int:
            return sum(1 for m in fake.received if m.get("operation") == "flush")

        await call.wait_for(lambda: flushes() >= 3, 15)
        await asyncio.sleep(2.5)
        await call.hangup()
        await call.wait_ended()
        for _ in range(50):
            if s.events.get("on_call_end") and not fake.live_sessions:
                break
            await asyncio.sleep(0.05)
        assert len(fake.sessions) == 1 and not fake.live_sessions  # one socket, closed at the end
        assert [t for t, _ in fake.sessions[0].synthesized] == [
            "Acme, hello!",
            "We open at nine.",
            "See you then!",
        ]
        said = [(e["role"], e["text"]) for e in s.events["on_call_end"][0]["transcript"]]
        assert said[:3] == [
            ("assistant", "Acme, hello!"),
            ("user", "what time do you open"),
            ("assistant", "We open at nine. See you then!"),
        ]
        heard = call.heard_audio()
        assert np.abs(heard.astype(np.int32)).max() > 2000
        assert len(heard) >= 0.9 * sum(
            len(mulaw(t)) for t in ["Acme, hello!", "We open at nine.", "See you then!"]
        )

"""ElevenLabsTTS: the fake service's protocol, the client over real sockets, and a whole call
spoken by ElevenLabs (the fake) through the fake phone network."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError
from getpatter.plugins.elevenlabs.tts import ElevenLabsTTS
from getpatter.testing.elevenlabs import FakeElevenLabs
from getpatter.testing.engines import speech_tone
from getpatter.testing.twilio import FakeTwilio

from call_kit import fake_fixture, hang_up, loaded_on_import, peak, poll, said
from tts_kit import (
    ANSWER,
    CUT,
    QUESTION,
    SENTENCES,
    mulaw,
    mulaw_len,
    say,
    say_cut,
    spoken_call,
    whole_call,
)

KEY = "xi-SECRET-key-do-not-print-42"
VOICE = "voice123"
HELP = "Acme, how can I help?"
HELPED = [HELP, *SENTENCES[1:]]


def ulaw_len(text: str) -> int:
    return len(speech_tone(text, 8000))


fake = fake_fixture(FakeElevenLabs, KEY)


def tts_for(fake: FakeElevenLabs, **kwargs: Any) -> ElevenLabsTTS:
    return ElevenLabsTTS(VOICE, api_key=KEY, base_url=fake.base_url, **kwargs)


async def socket(
    fake: FakeElevenLabs, endpoint: str, query: str, headers: dict[str, str] | None = None
):
    http = aiohttp.ClientSession()
    url = f"{fake.ws_url}/v1/text-to-speech/{VOICE}/{endpoint}?{query}"
    return http, await http.ws_connect(url, headers=headers or {})


async def drain(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    out = []
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            out.append(json.loads(msg.data))
    return out


# --- the fake ------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["xi_api_key", "xi-api-key"])
async def test_fake_stream_input_bos_text_flush_eos(fake: FakeElevenLabs, field: str) -> None:
    http, ws = await socket(
        fake, "stream-input", "model_id=eleven_flash_v2_5&output_format=ulaw_8000"
    )
    await ws.send_json({"text": " ", "voice_settings": {"stability": 0.5}, field: KEY})
    await ws.send_json({"text": "Hello there. ", "flush": True})
    first = await ws.receive_json(timeout=2)  # a flush makes audio before EOS
    assert first["audio"] and first["isFinal"] is None and first["alignment"]["chars"]
    await ws.send_json({"text": "Bye now. "})
    await ws.send_json({"text": ""})
    rest = await drain(ws)
    await http.close()
    assert rest[-1] == {"isFinal": True} and ws.close_code == 1000
    audio = b"".join(base64.b64decode(m["audio"]) for m in [first, *rest[:-1]])
    expected = mulaw("Hello there.") + mulaw("Bye now.")
    assert audio == expected  # exactly the requested μ-law at 8 kHz


async def test_fake_socket_auth_settings_and_inactivity(fake: FakeElevenLabs) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{fake.base_url}/v1/text-to-speech/{VOICE}/stream-input?output_format=ulaw_8000"
        async with http.get(url, headers={"xi-api-key": "wrong"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["detail"]["status"] == "invalid_api_key"
    http, ws = await socket(fake, "stream-input", "output_format=ulaw_8000")
    await ws.send_json({"text": " ", "xi_api_key": "wrong"})
    messages = await drain(ws)
    assert messages[0]["error"] == "invalid_api_key" and ws.close_code == 1008
    await http.close()
    http, ws = await socket(fake, "stream-input", "output_format=ulaw_8000", {"xi-api-key": KEY})
    await ws.send_json({"text": " ", "voice_settings": {"stability": 0.5}})
    await ws.send_json({"text": "Hi. ", "voice_settings": {"stability": 0.9}})
    messages = await drain(ws)
    assert "voice_settings" in messages[-1]["message"] and ws.close_code == 1008
    await http.close()
    http, ws = await socket(
        fake, "stream-input", "output_format=ulaw_8000&inactivity_timeout=1", {"xi-api-key": KEY}
    )
    await ws.send_json({"text": " "})
    await drain(ws)
    assert ws.close_code == 1008
    await http.close()


async def test_fake_multi_context_finals_and_the_context_limit(fake: FakeElevenLabs) -> None:
    http, ws = await socket(
        fake, "multi-stream-input", "output_format=pcm_16000", {"xi-api-key": KEY}
    )
    for ctx in ("a", "b"):
        await ws.send_json({"text": " ", "context_id": ctx})
        await ws.send_json({"text": f"Context {ctx}. ", "context_id": ctx, "flush": True})
        await ws.send_json({"context_id": ctx, "close_context": True})
    seen: dict[str, int] = {}
    finals: list[str] = []
    while len(finals) < 2:
        msg = await ws.receive_json(timeout=2)
        if msg.get("isFinal"):
            finals.append(msg["contextId"])
        else:
            seen[msg["contextId"]] = seen.get(msg["contextId"], 0) + len(
                base64.b64decode(msg["audio"])
            )
    assert sorted(finals) == ["a", "b"]
    assert seen == {c: 2 * len(speech_tone(f"Context {c}.", 16000)) for c in "ab"}
    for ctx in "cdefgh":
        await ws.send_json({"text": "Held open. ", "context_id": ctx})
    messages = await drain(ws)
    assert messages[-1]["error"] == "max_active_conversations" and ws.close_code == 1008
    await http.close()


async def multi(fake: FakeElevenLabs, query: str = "output_format=ulaw_8000"):
    return await socket(fake, "multi-stream-input", query, {"xi-api-key": KEY})


async def until_final(ws: aiohttp.ClientWebSocketResponse, *contexts: str) -> dict[str, int]:
    """Audio bytes per context until every one of `contexts` got its final; each message
    must name its context."""
    audio: dict[str, int] = {}
    waiting = set(contexts)
    while waiting:
        msg = await ws.receive_json(timeout=3)
        assert msg["contextId"]  # contextId on every message of a context
        if msg.get("isFinal"):
            waiting.discard(msg["contextId"])
        else:
            audio[msg["contextId"]] = audio.get(msg["contextId"], 0) + len(
                base64.b64decode(msg["audio"])
            )
    return audio


async def test_fake_close_context_speaks_flushed_text_and_drops_the_rest(
    fake: FakeElevenLabs,
) -> None:
    http, ws = await multi(fake)
    await ws.send_json({"text": " ", "context_id": "a"})
    await ws.send_json({"text": "Flushed. ", "context_id": "a", "flush": True})
    await ws.send_json({"text": "Never flushed. ", "context_id": "a"})
    await ws.send_json({"context_id": "a", "close_context": True})
    assert await until_final(ws, "a") == {"a": ulaw_len("Flushed.")}
    # the id may be used again: a new context, not linked to the closed one
    await ws.send_json({"text": "Again. ", "context_id": "a", "flush": True})
    await ws.send_json({"context_id": "a", "close_context": True})
    assert await until_final(ws, "a") == {"a": ulaw_len("Again.")}
    await ws.send_json({"close_socket": True})
    await drain(ws)
    assert ws.close_code == 1000 and fake.sessions[0].finals == ["a", "a"]
    await http.close()


async def test_fake_contexts_time_out_unless_kept_alive(fake: FakeElevenLabs) -> None:
    http, ws = await multi(fake, "output_format=ulaw_8000&inactivity_timeout=1")
    for ctx in ("kept", "idle"):
        await ws.send_json({"text": " ", "context_id": ctx})
    for _ in range(6):  # 1.5 s: keep-alives (an empty text) for one context only
        await asyncio.sleep(0.25)
        await ws.send_json({"text": "", "context_id": "kept"})
    session = fake.sessions[0]
    assert session.timed_out == ["idle"] and session.finals == ["idle"]
    await ws.send_json({"text": "Still here. ", "context_id": "kept", "flush": True})
    await ws.send_json({"context_id": "kept", "close_context": True})
    assert await until_final(ws, "kept") == {"kept": ulaw_len("Still here.")}
    await http.close()


async def test_fake_voice_settings_are_per_context(fake: FakeElevenLabs) -> None:
    http, ws = await multi(fake)
    await ws.send_json({"text": " ", "context_id": "a", "voice_settings": {"stability": 0.5}})
    await ws.send_json({"text": " ", "context_id": "b", "voice_settings": {"stability": 0.9}})
    same = {"stability": 0.5}  # the same settings again: allowed
    await ws.send_json({"text": "Hi. ", "context_id": "a", "voice_settings": same, "flush": True})
    assert (await ws.receive_json(timeout=2))["contextId"] == "a"  # all three were read
    assert fake.sessions[0].context_settings == {
        "a": {"stability": 0.5},
        "b": {"stability": 0.9},
    }
    await ws.send_json({"text": "Hi. ", "context_id": "b", "voice_settings": {"stability": 0.1}})
    messages = await drain(ws)
    assert "voice_settings" in messages[-1]["message"] and ws.close_code == 1008
    await http.close()


async def test_fake_closing_contexts_count_toward_the_limit(fake: FakeElevenLabs) -> None:
    http, ws = await multi(fake)
    for ctx in "abcde":  # five contexts stuck speaking, each closed: still live
        fake.stall_next(0, whole_socket=False)
        await ws.send_json({"text": "Stuck. ", "context_id": ctx, "flush": True})
        await ws.send_json({"context_id": ctx, "close_context": True})
    await ws.send_json({"text": "One too many. ", "context_id": "f", "flush": True})
    messages = await drain(ws)
    assert messages[-1]["error"] == "max_active_conversations" and ws.close_code == 1008
    await http.close()


@pytest.mark.parametrize("race", ["silent", "empty_final"])
async def test_fake_close_race(race: str) -> None:
    async with FakeElevenLabs(KEY, first_audio_delay=0.05) as fake:
        fake.close_race = race  # type: ignore[assignment]
        http, ws = await multi(fake)
        # closed right after its flush, before its audio started: lost
        await ws.send_json({"text": "Lost. ", "context_id": "a", "flush": True})
        await ws.send_json({"context_id": "a", "close_context": True})
        # closed once its audio has started: spoken in full
        await ws.send_json({"text": "Kept. ", "context_id": "b", "flush": True})
        first = await ws.receive_json(timeout=2)
        if first["contextId"] == "a":  # "empty_final": the lost context's final, no audio
            assert first == {"isFinal": True, "contextId": "a"}
            first = await ws.receive_json(timeout=2)
        assert first["contextId"] == "b" and first["audio"]
        await ws.send_json({"context_id": "b", "close_context": True})
        audio = await until_final(ws, "b")
        assert audio["b"] + len(base64.b64decode(first["audio"])) == ulaw_len("Kept.")
        session = fake.sessions[0]
        assert session.lost == ["a"] and "a" not in audio
        assert session.finals == (["a", "b"] if race == "empty_final" else ["b"])
        await http.close()


async def test_fake_stalled_context_leaves_the_socket_working(fake: FakeElevenLabs) -> None:
    http, ws = await multi(fake)
    fake.stall_next(0, whole_socket=False)
    await ws.send_json({"text": "Stuck. ", "context_id": "a", "flush": True})
    await ws.send_json({"text": "Fine. ", "context_id": "b", "flush": True})
    await ws.send_json({"context_id": "b", "close_context": True})
    assert await until_final(ws, "b") == {"b": ulaw_len("Fine.")}
    assert fake.sessions[0].audio_bytes == {"b": ulaw_len("Fine.")}
    fake.empty_next()
    await ws.send_json({"text": "Empty. ", "context_id": "c", "flush": True})
    await ws.send_json({"context_id": "c", "close_context": True})
    assert await until_final(ws, "c") == {}
    await http.close()


async def test_fake_http_stream(fake: FakeElevenLabs) -> None:
    url = f"{fake.base_url}/v1/text-to-speech/{VOICE}/stream"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url,
            params={"output_format": "pcm_16000"},
            json={"text": "Hi."},
            headers={"xi-api-key": KEY},
        ) as resp:
            assert resp.status == 200 and len(await resp.read()) == 2 * len(
                speech_tone("Hi.", 16000)
            )
        async with http.post(url, json={"text": "Hi."}, headers={"xi-api-key": "nope"}) as resp:
            assert resp.status == 401
        async with http.post(
            url, params={"output_format": "ulaw_8000"}, json={}, headers={"xi-api-key": KEY}
        ) as resp:
            assert resp.status == 422 and (await resp.json())["detail"][0]["loc"] == [
                "body",
                "text",
            ]
        fake.quota_exceeded = True
        async with http.post(
            url,
            params={"output_format": "ulaw_8000"},
            json={"text": "x"},
            headers={"xi-api-key": KEY},
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["detail"]["status"] == "quota_exceeded"


# --- the client ----------------------------------------------------------------------------


async def test_one_socket_per_call_one_context_per_sentence(fake: FakeElevenLabs) -> None:
    tts = tts_for(fake, voice_settings={"stability": 0.4})
    assert (tts.sample_rate, tts.encoding) == (8000, "mulaw")
    stream = await tts.open()
    assert await say(stream, "Hello there.") == mulaw("Hello there.")
    assert len(await say(stream, "  How can   I help?")) == ulaw_len("How can I help?")
    await stream.aclose()
    assert len(fake.sessions) == 1
    session = fake.sessions[0]
    assert session.endpoint == "multi-stream-input" and session.headers["xi-api-key"] == KEY
    assert session.query["output_format"] == "ulaw_8000"
    assert session.query["model_id"] == "eleven_flash_v2_5"
    sent = session.received
    settings = {"stability": 0.4}
    assert sent[0] == {"text": " ", "context_id": "s1", "voice_settings": settings}
    assert sent[1] == {"text": "Hello there. ", "context_id": "s1", "flush": True}
    assert sent[2] == {"context_id": "s1", "close_context": True}
    # the settings go on each context's first message: they are per context
    assert sent[3] == {"text": " ", "context_id": "s2", "voice_settings": settings}
    assert session.context_settings == {"s1": settings, "s2": settings}
    assert sent[-1] == {"close_socket": True}
    assert session.finals == ["s1", "s2"]
    assert session.close_code == 1000


async def test_closing_the_iterator_cancels_at_once_and_the_socket_carries_on() -> None:
    async with FakeElevenLabs(KEY, audio_speed=1.0, chunk_ms=50) as fake:
        stream = await tts_for(fake).open()
        loop = asyncio.get_running_loop()
        for _ in range(6):  # more than the 5 contexts a socket may hold
            sentence = stream.synthesize("This is a long sentence that the caller interrupts.")
            await anext(sentence)
            started = loop.time()
            await sentence.aclose()
            assert loop.time() - started < 0.1
        after = await say(stream, "Sure.")
        assert after == mulaw("Sure.")  # none of the cancelled audio
        assert not any(m.get("error") for s in fake.sessions for m in s.received)
        assert len(fake.sessions) == 2  # replaced once, when 4 cancelled contexts were open
        await stream.aclose()


async def test_close_race_audio_still_arrives() -> None:
    """Against a service that loses a context closed before its audio started, the client
    closes each context only once its audio has begun: nothing is lost."""
    async with FakeElevenLabs(KEY, first_audio_delay=0.05) as fake:
        fake.close_race = "silent"
        stream = await tts_for(fake).open()
        for text in ("First sentence.", "Second one.", "Third."):
            assert await say(stream, text) == mulaw(text)
        session = fake.sessions[0]
        assert session.lost == [] and session.finals == ["s1", "s2", "s3"]
        for i, message in enumerate(session.received):
            if message.get("close_context"):
                assert session.received_at[i] >= session.first_audio_at[message["context_id"]]
        await stream.aclose()


async def test_a_lost_context_is_retried_over_http() -> None:
    """The deadline of core.synthesis, with the real plugin: a context that never gives audio
    (an empty generation, a stalled one) is closed and the sentence asked for over HTTP."""
    from getpatter.core.synthesis import synthesize

    async with FakeElevenLabs(KEY) as fake:
        stream = await tts_for(fake).open()
        retries: list[str] = []

        async def speak(text: str) -> bytes:
            audio = synthesize(stream, text, first_audio_timeout=0.3, on_retry=retries.append)
            return b"".join([chunk async for chunk in audio])

        fake.empty_next()  # no audio; no isFinal either, as its close never comes
        assert await speak("Hello there.") == mulaw("Hello there.")
        fake.stall_next(0, whole_socket=False)  # accepted, then nothing
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await speak("Still there?") == mulaw("Still there?")
        assert 0.3 <= loop.time() - started < 0.6
        assert retries == ["no audio within 0.3 s"] * 2
        assert [r["body"]["text"] for r in fake.http_requests] == ["Hello there.", "Still there?"]
        session = fake.sessions[0]
        closes = [m["context_id"] for m in session.received if m.get("close_context")]
        assert closes == ["s1", "s2"]  # both freed when the deadline gave up on them
        assert await say(stream, "Socket again.") == mulaw("Socket again.")
        await stream.aclose()
        # over HTTP, an empty answer is seen at once: no need to wait for the deadline
        stream = await tts_for(fake, transport="http").open()
        fake.empty_next()
        started = loop.time()
        assert await speak("Hi.") == mulaw("Hi.")
        assert loop.time() - started < 0.3 and retries[-1] == "the stream ended without audio"
        await stream.aclose()


async def test_accepts_is_final_spelled_snake_case(fake: FakeElevenLabs) -> None:
    """The AsyncAPI examples spell the final flag `is_final`; the schema says `isFinal`."""
    stream = await tts_for(fake).open()
    original = fake.sessions[0].ws.send_json

    async def respelled(data: Any, *args: Any, **kwargs: Any) -> None:
        if "isFinal" in data and data["isFinal"] is True:
            data = {"is_final": True, "contextId": data["contextId"]}
        await original(data, *args, **kwargs)

    fake.sessions[0].ws.send_json = respelled  # type: ignore[method-assign]
    assert await say(stream, "Hi.") == mulaw("Hi.")
    await stream.aclose()


async def test_bad_key_fails_at_open_without_showing_it(fake: FakeElevenLabs) -> None:
    wrong = "xi-WRONG-secret-777"
    with pytest.raises(PatterConnectionError, match="ElevenLabs") as err:
        await ElevenLabsTTS(api_key=wrong, base_url=fake.base_url).open()
    assert wrong not in str(err.value) and "ELEVENLABS_API_KEY" in str(err.value)
    stream = await ElevenLabsTTS(api_key=wrong, base_url=fake.base_url, transport="http").open()
    with pytest.raises(PatterConnectionError, match="invalid_api_key") as err:
        await say(stream, "Hi.")
    assert wrong not in str(err.value)
    await stream.aclose()
    fake.quota_exceeded = True
    stream = await tts_for(fake).open()
    with pytest.raises(PatterConnectionError, match="quota"):
        await say(stream, "Hi.")
    await stream.aclose()


async def test_a_socket_dropped_mid_sentence_reconnects_once_and_carries_on() -> None:
    async with FakeElevenLabs(KEY, audio_speed=4.0, chunk_ms=50) as fake:
        stream = await tts_for(fake).open()
        got, drops = await say_cut(stream, fake, at=(800,))
        assert drops == [1]
        assert got == mulaw(CUT)  # whole, and nothing twice
        assert len(fake.sessions) == 2
        assert await say(stream, "Still here.") == mulaw("Still here.")
        await stream.aclose()


async def test_http_fallback_when_the_socket_is_refused(fake: FakeElevenLabs) -> None:
    fake.refuse_sockets = 503
    stream = await tts_for(fake, socket_retry_after=0.3).open()  # sentences go over HTTP
    assert await say(stream, "Over HTTP.") == mulaw("Over HTTP.")
    request = fake.http_requests[0]
    assert request["query"]["output_format"] == "ulaw_8000"
    assert request["body"] == {"text": "Over HTTP.", "model_id": "eleven_flash_v2_5"}
    fake.refuse_sockets = None
    assert len(await say(stream, "Still HTTP.")) == ulaw_len("Still HTTP.")
    assert len(fake.http_requests) == 2 and fake.rejected == [503]  # not retried at once
    await asyncio.sleep(0.35)
    assert len(await say(stream, "Socket again.")) == ulaw_len("Socket again.")
    assert len(fake.sessions) == 1 and len(fake.http_requests) == 2
    await stream.aclose()


async def test_http_transport_streams_and_cancels() -> None:
    async with FakeElevenLabs(KEY, audio_speed=1.0, chunk_ms=50) as fake:
        tts = tts_for(fake, transport="http", output_format="pcm_16000")
        assert (tts.sample_rate, tts.encoding) == (16000, "pcm16")
        stream = await tts.open()
        assert len(await say(stream, "Hi.")) == 2 * len(speech_tone("Hi.", 16000))
        sentence = stream.synthesize("A long answer the caller will not wait for at all.")
        await anext(sentence)
        await sentence.aclose()
        await poll(lambda: fake.http_cancelled, 50, 0.02)
        assert fake.http_cancelled == 1
        await stream.aclose()


def test_config_errors_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="ELEVENLABS_API_KEY"):
        ElevenLabsTTS()
    with pytest.raises(PatterConfigError, match="ulaw_8000"):
        ElevenLabsTTS(api_key=KEY, output_format="mp3_44100_128")
    tts = ElevenLabsTTS(api_key=KEY)
    assert KEY not in repr(tts) and KEY not in repr(tts.options)
    assert tts.options.base_url == "https://api.elevenlabs.io"
    assert tts.options.ws_base == "wss://api.elevenlabs.io"


def test_registered_and_lazy() -> None:
    assert Registry().load("tts", "elevenlabs") is ElevenLabsTTS
    assert loaded_on_import("elevenlabs", ("elevenlabs", "aiohttp")) == "[]"


# --- a whole call ----------------------------------------------------------------------------


async def test_a_call_spoken_by_elevenlabs(serve: Callable[..., Any], net: FakeTwilio) -> None:
    async with FakeElevenLabs(KEY, audio_speed=4.0) as fake:
        record, call = await whole_call(
            serve,
            net,
            tts_for(fake),
            lambda: bool(fake.sessions) and len(fake.sessions[0].finals) >= 3,
            lambda: fake.sessions[0].closed,
            first_message=HELP,
        )
        assert len(fake.sessions) == 1  # one socket for the whole call
        texts = [m["text"] for m in fake.sessions[0].received if m.get("flush")]
        assert texts == ["Acme, how can I help? ", "We open at nine. ", "See you then! "]
        assert fake.sessions[0].closed  # closed at the end of the call
        assert said(record)[:2] == [("assistant", HELP), ("user", QUESTION)]
        heard = call.heard_audio()
        assert peak(heard) > 2000
        assert len(heard) >= 0.9 * mulaw_len(HELPED)


async def test_a_silent_socket_counts_as_dropped(
    fake: FakeElevenLabs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpatter.plugins.elevenlabs.tts.STALL_SECONDS", 0.3)
    stream = await tts_for(fake).open()
    fake.stall_next(after_chunks=2)
    text = "The service goes quiet in the middle of this one."
    assert await say(stream, text) == mulaw(text)
    assert len(fake.sessions) == 2
    await stream.aclose()


def _speech_spans(call: Any, gap: float = 0.3) -> list[tuple[float, float]]:
    """(first, last) receive times of the runs of agent audio at the carrier."""
    times = [t for t, event, _ in call.received if event == "media"]
    spans: list[tuple[float, float]] = []
    for t in times:
        if spans and t - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], t)
        else:
            spans.append((t, t))
    return spans


async def test_a_call_through_the_close_race(serve: Callable[..., Any], net: FakeTwilio) -> None:
    """The service of pipecat issue 4681: a context closed before its audio started is lost.
    The greeting and the answer are still heard, with nothing asked for twice."""
    async with FakeElevenLabs(KEY, first_audio_delay=0.05, audio_speed=4.0) as fake:
        fake.close_race = "silent"
        s, call = await spoken_call(serve, net, tts_for(fake), HELP)
        await call.wait_for(lambda: bool(fake.sessions) and len(fake.sessions[0].finals) >= 3, 15)
        await asyncio.sleep(1.5)
        record = await hang_up(s, call, tries=100)
        assert fake.sessions[0].lost == [] and not fake.http_requests
        assert said(record) == [("assistant", HELP), ("user", QUESTION), ("assistant", ANSWER)]
        assert len(call.heard_audio()) >= 0.9 * mulaw_len(HELPED)
        assert all(t["tts_retry"] == 0 for t in record["metrics"]["turns"])


async def test_a_call_with_a_stalled_sentence(serve: Callable[..., Any], net: FakeTwilio) -> None:
    """A sentence the service accepts and never answers: the caller hears it anyway, through
    the HTTP retry, within the first-audio deadline; the turn counts one tts_retry."""
    async with FakeElevenLabs(KEY, audio_speed=4.0) as fake:
        s, call = await spoken_call(serve, net, tts_for(fake), HELP)
        await call.wait_for(lambda: bool(fake.sessions) and fake.sessions[0].finals == ["s1"], 10)
        fake.stall_next(0, whole_socket=False)  # the answer's first sentence
        # its second sentence (asked for at once, on its own context) is ready long before
        await call.wait_for(lambda: len(fake.sessions[0].finals) >= 2 and fake.http_requests, 15)
        await asyncio.sleep(1.5)
        record = await hang_up(s, call, tries=100)
        assert [r["body"]["text"] for r in fake.http_requests] == ["We open at nine."]
        asked = next(
            t
            for t, m in zip(fake.sessions[0].received_at, fake.sessions[0].received, strict=True)
            if m.get("text") == "We open at nine. "
        )
        answer = [span for span in _speech_spans(call) if span[0] > asked]
        # heard within the deadline (1.5 s) plus the HTTP round trip and the carrier's hop
        assert answer and answer[0][0] - asked < 1.5 + 0.5
        assert said(record)[-1] == ("assistant", ANSWER)
        assert [t["tts_retry"] for t in record["metrics"]["turns"]] == [0, 1]

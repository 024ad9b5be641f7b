"""CartesiaTTS: the fake service's protocol, the client over real sockets (continuations,
cancel, drops), and a whole call spoken by Cartesia (the fake) through the fake phone network."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import cartesia
import pytest

from getpatter.core.audio import pcm16_bytes
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError
from getpatter.plugins.cartesia.tts import CartesiaTTS
from getpatter.testing.cartesia import FakeCartesia
from getpatter.testing.cartesia.server import encode
from getpatter.testing.engines import speech_tone
from getpatter.testing.twilio import FakeTwilio

from call_kit import fake_fixture, loaded_on_import, peak, said
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

KEY = "sk_car_SECRET-do-not-print-99"
VERSION = {"Cartesia-Version": "2026-08-14"}
MULAW = {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}


fake = fake_fixture(FakeCartesia, KEY)


def tts_for(fake: FakeCartesia, **kwargs: Any) -> CartesiaTTS:
    return CartesiaTTS(api_key=KEY, base_url=fake.base_url, ws_url=fake.ws_url, **kwargs)


def request(context: str, transcript: str, **extra: Any) -> dict[str, Any]:
    return {
        "context_id": context,
        "model_id": "sonic-3",
        "transcript": transcript,
        "voice": {"mode": "id", "id": "v1"},
        "output_format": MULAW,
        **extra,
    }


# --- the fake ------------------------------------------------------------------------------


async def test_fake_checks_key_and_version_like_the_service(fake: FakeCartesia) -> None:
    async with aiohttp.ClientSession() as http:
        for headers, status in (
            ({**VERSION}, 401),
            ({**VERSION, "Authorization": "Bearer wrong"}, 401),
            ({"Authorization": f"Bearer {KEY}"}, 400),
        ):
            async with http.get(fake.ws_url, headers=headers) as resp:
                assert resp.status == status
                body = await resp.json()
                assert body["status_code"] == status and body["title"] and body["request_id"]
        for headers, query in (
            ({**VERSION, "X-API-Key": KEY}, ""),
            ({}, f"?api_key={KEY}&cartesia_version=2024-06-10"),
        ):
            ws = await http.ws_connect(fake.ws_url + query, headers=headers)
            await ws.close()
        assert fake.rejected == [401, 401, 400]


async def test_fake_contexts_continuations_and_flush_ids(fake: FakeCartesia) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            fake.ws_url, headers={"Authorization": f"Bearer {KEY}", **VERSION}
        )
        await ws.send_json(request("c1", "Hello, ", **{"continue": True}))
        await ws.send_json(request("c1", "world. ", **{"continue": True}))
        await ws.send_json(request("c1", "", **{"continue": True, "flush": True}))
        first = await until(ws, "flush_done")
        assert audio_of(first) == mulaw("Hello, world.")  # transcripts joined verbatim
        assert {m["flush_id"] for m in first} == {1} and first[-1]["flush_done"] is True
        chunk = first[0]
        assert chunk["context_id"] == "c1" and chunk["status_code"] == 206 and not chunk["done"]
        await ws.send_json(request("c1", "Again. ", **{"continue": False}))
        second = await until(ws, "done")
        assert audio_of(second) == mulaw("Again.") and second[0]["flush_id"] == 2
        assert second[-1] == {"type": "done", "done": True, "context_id": "c1", "status_code": 206}
        await ws.send_json(request("c1", "More. ", **{"continue": True}))
        assert (await ws.receive_json())["type"] == "error"  # the context has finished
        await ws.send_json(request("c2", "x", **{"continue": True}))
        await ws.send_json({**request("c2", "y", **{"continue": True}), "model_id": "sonic-2"})
        error = await ws.receive_json(timeout=3)
        assert (
            error["type"] == "error"
            and error["context_id"] == "c2"
            and "model_id" in error["message"]
        )
        bad = {
            **request("c3", "x"),
            "output_format": {"container": "mp3", "encoding": "pcm_mulaw", "sample_rate": 8000},
        }
        await ws.send_json(bad)
        error = await ws.receive_json(timeout=3)
        assert error["status_code"] == 400 and error["done"] is True and error["context_id"] == "c3"
        await ws.close()


@pytest.mark.parametrize(
    ("encoding", "rate"), [("pcm_s16le", 16000), ("pcm_f32le", 24000), ("pcm_alaw", 8000)]
)
async def test_fake_audio_is_in_exactly_the_requested_format(
    fake: FakeCartesia, encoding: str, rate: int
) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            fake.ws_url, headers={"Authorization": f"Bearer {KEY}", **VERSION}
        )
        fmt = {"container": "raw", "encoding": encoding, "sample_rate": rate}
        await ws.send_json(
            {**request("c", "Format check."), "output_format": fmt, "add_timestamps": True}
        )
        messages = await until(ws, "done")
        assert audio_of(messages) == encode(speech_tone("Format check.", rate), encoding)
        stamps = next(m for m in messages if m["type"] == "timestamps")["word_timestamps"]
        assert stamps["words"] == ["Format", "check."] and stamps["start"][0] == 0
        await ws.close()


async def test_fake_cancel_stops_a_context_and_buffer_delay_generates(fake: FakeCartesia) -> None:
    fake.audio_speed, fake.chunk_ms = 1.0, 50
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            fake.ws_url, headers={"Authorization": f"Bearer {KEY}", **VERSION}
        )
        await ws.send_json(request("long", "A long sentence that will be cancelled soon. "))
        assert (await ws.receive_json(timeout=2))["type"] == "chunk"
        await ws.send_json({"context_id": "long", "cancel": True})
        await ws.send_json(
            request("late", "Waits. ", **{"continue": True, "max_buffer_delay_ms": 200})
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (msg := await ws.receive_json(timeout=3))["context_id"] == "long":
            pass  # a chunk already in flight
        assert msg["context_id"] == "late" and 0.15 < loop.time() - started < 1.0
        await asyncio.sleep(0.3)
        assert fake.sessions[0].cancelled == ["long"] and "long" not in fake.sessions[0].done
        await ws.close()


async def test_the_official_sdk_reads_the_fake(fake: FakeCartesia) -> None:
    client = cartesia.AsyncCartesia(
        api_key=KEY, base_url=fake.base_url, websocket_base_url=fake.websocket_base_url
    )
    conn = await client.tts.websocket_connect().enter()
    ctx = conn.context(model_id="sonic-3", voice={"mode": "id", "id": "v1"}, output_format=MULAW)
    await ctx.push("Hello from the SDK. ")
    await ctx.no_more_inputs()
    events = [event async for event in ctx.receive()]
    assert [e.type for e in events][-1] == "done"
    assert b"".join(e.audio for e in events if e.type == "chunk") == mulaw("Hello from the SDK.")
    await conn.close()
    await client.close()
    assert fake.sessions[0].headers["Authorization"] == f"Bearer {KEY}"


# --- the client ----------------------------------------------------------------------------


async def test_sentences_of_a_reply_continue_one_context(fake: FakeCartesia) -> None:
    stream = await tts_for(fake, continue_within=0.3).open()
    assert await say(stream, "Hello there.") == mulaw("Hello there.")
    assert await say(stream, "How can I help?") == mulaw("How can I help?")
    await asyncio.sleep(0.5)  # a gap: the next reply gets its own context
    assert await say(stream, "Goodbye.") == mulaw("Goodbye.")
    await stream.aclose()
    session = fake.sessions[0]
    assert len(fake.sessions) == 1 and session.version == "2026-08-14"
    assert session.headers["Authorization"] == f"Bearer {KEY}" and not session.errors
    sent = session.received
    first = sent[0]
    assert first["transcript"] == "Hello there. " and first["continue"] is True
    assert first["output_format"] == MULAW and first["language"] == "en"
    assert first["voice"] == {"mode": "id", "id": "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"}
    assert first["model_id"] == "sonic-3"
    assert [m["transcript"] for m in sent] == [
        "Hello there. ",
        "",
        "How can I help? ",
        "",
        "",
        "Goodbye. ",
        "",
    ]
    one, two = first["context_id"], sent[5]["context_id"]
    assert [m["context_id"] for m in sent] == [one] * 5 + [two] * 2
    assert sent[4]["continue"] is False  # the first reply's context is ended
    assert session.done == [one]


async def test_closing_the_iterator_cancels_at_once() -> None:
    async with FakeCartesia(KEY, audio_speed=1.0, chunk_ms=50) as fake:
        stream = await tts_for(fake).open()
        assert await interrupt(stream) < 0.1
        assert await say(stream, "Sure.") == mulaw("Sure.")  # nothing of the cancelled one
        session = fake.sessions[0]
        cancelled = session.received[2]
        assert cancelled == {"context_id": session.received[0]["context_id"], "cancel": True}
        assert session.received[3]["context_id"] != cancelled["context_id"]
        await stream.aclose()


async def test_bad_key_or_quota_is_a_connection_error_without_the_key(fake: FakeCartesia) -> None:
    wrong = "sk_car_WRONG-secret-31337"
    with pytest.raises(PatterConnectionError, match="CARTESIA_API_KEY") as err:
        await CartesiaTTS(api_key=wrong, base_url=fake.base_url, ws_url=fake.ws_url).open()
    assert wrong not in str(err.value)
    fake.refuse_with = 429
    with pytest.raises(PatterConnectionError, match="429"):
        await tts_for(fake).open()


async def test_a_socket_dropped_mid_sentence_reconnects_once_and_carries_on() -> None:
    async with FakeCartesia(KEY, audio_speed=4.0, chunk_ms=50) as fake:
        stream = await tts_for(fake).open()
        got, drops = await say_cut(stream, fake, at=(800,))
        assert drops == [1]
        assert got == mulaw(CUT)  # whole, and nothing twice
        assert len(fake.sessions) == 2
        with pytest.raises(PatterConnectionError, match="dropped again"):
            await say_cut(stream, fake, at=(800, 1600))
        await stream.aclose()


def test_config_errors_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="CARTESIA_API_KEY"):
        CartesiaTTS()
    with pytest.raises(PatterConfigError, match="/tts/websocket"):
        CartesiaTTS(api_key=KEY, ws_url="wss://api.cartesia.ai/other")
    with pytest.raises(PatterConfigError, match="8000 for mulaw"):
        CartesiaTTS(api_key=KEY, sample_rate=16000)
    tts = CartesiaTTS(api_key=KEY, sample_rate=16000, encoding="pcm16")
    assert (tts.sample_rate, tts.encoding) == (16000, "pcm16")
    assert KEY not in repr(tts) and KEY not in repr(tts.options)
    assert tts.options.websocket_base_url == "wss://api.cartesia.ai"


async def test_pcm_output(fake: FakeCartesia) -> None:
    stream = await tts_for(fake, sample_rate=16000, encoding="pcm16").open()
    assert await say(stream, "Wideband.") == pcm16_bytes(speech_tone("Wideband.", 16000))
    assert fake.sessions[0].received[0]["output_format"]["encoding"] == "pcm_s16le"
    await stream.aclose()


def test_registered_and_lazy() -> None:
    assert Registry().load("tts", "cartesia") is CartesiaTTS
    assert loaded_on_import("cartesia", ("cartesia", "websockets")) == "[]"


# --- a whole call ----------------------------------------------------------------------------


async def test_a_call_spoken_by_cartesia(serve: Callable[..., Any], net: FakeTwilio) -> None:
    async with FakeCartesia(KEY, audio_speed=4.0) as fake:
        record, call = await call_spoken_by(
            serve, net, fake, tts_for(fake), lambda m: m.get("flush")
        )
        assert len(fake.sessions) == 1 and not fake.live_sessions  # one socket, closed at the end
        spoken = [m for m in fake.received if m.get("transcript")]
        assert [m["transcript"] for m in spoken] == [
            "Acme, hello! ",
            "We open at nine. ",
            "See you then! ",
        ]
        greeting, *reply = [m["context_id"] for m in spoken]
        assert reply[0] == reply[1] != greeting  # the reply's sentences continue one context
        assert said(record)[:3] == DIALOGUE
        heard = call.heard_audio()
        assert peak(heard) > 2000
        assert len(heard) >= 0.9 * mulaw_len(SENTENCES)


async def test_a_silent_socket_counts_as_dropped(
    fake: FakeCartesia, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpatter.plugins.cartesia.tts.STALL_SECONDS", 0.3)
    stream = await tts_for(fake).open()
    fake.stall_next(after_chunks=2)
    text = "The service goes quiet in the middle of this one."
    assert await say(stream, text) == mulaw(text)
    assert len(fake.sessions) == 2
    await stream.aclose()

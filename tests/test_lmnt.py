"""LmntTTS: the fake LMNT session's protocol, the client (the official SDK) over real sockets,
and a whole call spoken by LMNT (the fake) through the fake phone network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import lmnt
import pytest

from getpatter.core.audio import pcm16_bytes
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError
from getpatter.plugins.lmnt.tts import LmntTTS
from getpatter.testing.engines import speech_tone
from getpatter.testing.lmnt import FakeLmnt, ulaw_wav_header
from getpatter.testing.twilio import FakeTwilio

from call_kit import fake_fixture, loaded_on_import, peak, poll, said
from tts_kit import (
    CUT,
    DIALOGUE,
    SENTENCES,
    call_spoken_by,
    interrupt,
    mulaw,
    mulaw_len,
    say,
    say_cut,
)

KEY = "lmnt_SECRET-do-not-print-55"


fake = fake_fixture(FakeLmnt, KEY)


def tts_for(fake: FakeLmnt, **kwargs: Any) -> LmntTTS:
    return LmntTTS(api_key=KEY, base_url=fake.base_url, **kwargs)


# --- the fake ------------------------------------------------------------------------------


async def test_fake_wants_the_key_in_the_first_message(fake: FakeLmnt) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(fake.ws_url)  # no auth on the upgrade
        await ws.send_json({"X-API-Key": "wrong", "voice": "leah"})
        error = await ws.receive_json(timeout=2)
        assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
        assert (await ws.receive(timeout=2)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
        ws = await http.ws_connect(fake.ws_url)
        await ws.send_json({"X-API-Key": KEY, "voice": "leah", "sample_rate": 44100})
        assert (await ws.receive_json(timeout=2))["error"]["type"] == "invalid_request_error"
    assert fake.refused == ["authentication_error", "invalid_request_error"]


async def test_fake_flushes_resets_and_finishes(fake: FakeLmnt) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(fake.ws_url)
        init = {"X-API-Key": KEY, "voice": "leah", "format": "ulaw", "sample_rate": 8000}
        await ws.send_json({**init, "return_timestamps": True})
        assert (await ws.receive_json(timeout=2))["type"] == "ready"
        await ws.send_json({"type": "text", "text": "Hello "})
        await ws.send_json({"type": "text", "text": "there."})
        await ws.send_json({"type": "flush", "nonce": 1})
        audio, events = b"", []
        while True:
            msg = await ws.receive(timeout=2)
            if msg.type == aiohttp.WSMsgType.BINARY:
                audio += msg.data
                continue
            events.append(msg.json())
            if events[-1]["type"] == "flush_complete":
                break
        assert audio == ulaw_wav_header() + mulaw("Hello there.")
        assert events[0]["type"] == "timestamps" and events[0]["timestamps"][0]["text"] == "Hello"
        assert events[-1] == {"type": "flush_complete", "nonce": 1}
        await ws.send_json({"type": "text", "text": "Never said."})
        await ws.send_json({"type": "reset", "nonce": 2})
        assert await ws.receive_json(timeout=2) == {"type": "reset_complete", "nonce": 2}
        await ws.send_json({"type": "text", "text": "Bye."})
        await ws.send_json({"type": "finish"})
        rest = b""
        while (msg := await ws.receive(timeout=2)).type != aiohttp.WSMsgType.CLOSE:
            if msg.type == aiohttp.WSMsgType.BINARY:
                rest += msg.data
        assert rest == mulaw("Bye.")  # one header a session, and the socket closed after it
    assert fake.sessions[0].spoken == ["Hello there.", "Bye."]


async def test_the_official_sdk_reads_the_fake(fake: FakeLmnt) -> None:
    client = lmnt.AsyncLmnt(api_key=KEY, base_url=fake.base_url)
    session = await client.speech.sessions.create(
        voice="leah", format="pcm_s16le", sample_rate=16000
    )
    first = await session.__anext__()
    assert first.type == "ready"
    await session.send_text("From the SDK.")
    nonce = await session.send_flush()
    audio = b""
    async for message in session:
        if message.type == "audio":
            audio += message.audio
        elif message.type == "flush_complete":
            assert message.nonce == nonce
            break
    assert audio == pcm16_bytes(speech_tone("From the SDK.", 16000))
    init = fake.sessions[0].init
    assert init["X-API-Key"] == KEY and init["lmnt-version"] and init["voice"] == "leah"
    await session.close()
    await client.close()


# --- the client ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["session", "flush", None])
async def test_sentences_in_the_carriers_format_without_the_wav_header(header: Any) -> None:
    async with FakeLmnt(KEY, ulaw_wav_header=header, chunk_ms=7) as fake:
        stream = await tts_for(fake, voice="morgan").open()
        assert await say(stream, "Hello there.") == mulaw("Hello there.")
        assert await say(stream, "How can I help?") == mulaw("How can I help?")
        await stream.aclose()
        session = fake.sessions[0]
        assert len(fake.sessions) == 1 and not fake.live_sessions
        assert {k: session.init.get(k) for k in ("voice", "format", "sample_rate", "language")} == {
            "voice": "morgan",
            "format": "ulaw",
            "sample_rate": 8000,
            "language": "en",
        }
        assert [m["type"] for m in session.received] == ["text", "flush", "text", "flush"]
        assert session.received[0]["text"] == "Hello there. "


async def test_closing_the_iterator_ends_the_session_and_opens_the_next() -> None:
    async with FakeLmnt(KEY, audio_speed=1.0, chunk_ms=50) as fake:
        stream = await tts_for(fake).open()
        assert await interrupt(stream) < 0.2
        await poll(lambda: fake.sessions[0].closed and len(fake.live_sessions) == 1, 50, 0.02)
        assert fake.sessions[0].closed and len(fake.sessions) == 2
        assert await say(stream, "Sure.") == mulaw("Sure.")  # nothing of the cancelled one
        assert fake.sessions[1].spoken == ["Sure."]
        await stream.aclose()


async def test_bad_key_is_a_connection_error_without_the_key(fake: FakeLmnt) -> None:
    wrong = "lmnt_WRONG-secret-31337"
    with pytest.raises(PatterConnectionError, match="LMNT_API_KEY") as err:
        await LmntTTS(api_key=wrong, base_url=fake.base_url).open()
    assert wrong not in str(err.value)
    await fake.stop()
    with pytest.raises(PatterConnectionError, match="could not open"):
        await tts_for(fake).open()


async def test_a_session_dropped_mid_sentence_reconnects_once_and_carries_on() -> None:
    async with FakeLmnt(KEY, audio_speed=4.0, chunk_ms=50) as fake:
        stream = await tts_for(fake).open()
        got, drops = await say_cut(stream, fake, at=(800,))
        assert drops == [1]
        assert got == mulaw(CUT)  # whole, and nothing twice
        assert len(fake.sessions) == 2
        with pytest.raises(PatterConnectionError, match="dropped again"):
            await say_cut(stream, fake, at=(800, 1600))
        await stream.aclose()


async def test_pcm_output(fake: FakeLmnt) -> None:
    stream = await tts_for(fake, sample_rate=24000, encoding="pcm16").open()
    assert await say(stream, "Wideband.") == pcm16_bytes(speech_tone("Wideband.", 24000))
    assert fake.sessions[0].init["format"] == "pcm_s16le"
    await stream.aclose()


def test_config_errors_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMNT_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="LMNT_API_KEY"):
        LmntTTS()
    with pytest.raises(PatterConfigError, match="8000 for mulaw"):
        LmntTTS(api_key=KEY, sample_rate=16000)
    monkeypatch.setenv("LMNT_API_KEY", KEY)
    tts = LmntTTS(sample_rate=16000, encoding="pcm16")
    assert (tts.sample_rate, tts.encoding) == (16000, "pcm16")
    assert KEY not in repr(tts) and KEY not in repr(tts.options)


def test_registered_and_lazy() -> None:
    assert Registry().load("tts", "lmnt") is LmntTTS
    assert loaded_on_import("lmnt", ("lmnt", "websockets")) == "[]"


# --- a whole call ----------------------------------------------------------------------------


async def test_a_call_spoken_by_lmnt(serve: Callable[..., Any], net: FakeTwilio) -> None:
    async with FakeLmnt(KEY, audio_speed=4.0) as fake:
        record, call = await call_spoken_by(
            serve, net, fake, tts_for(fake), lambda m: m.get("type") == "flush"
        )
        assert len(fake.sessions) == 1 and not fake.live_sessions
        assert fake.sessions[0].spoken == SENTENCES
        assert said(record)[:3] == DIALOGUE
        heard = call.heard_audio()
        assert peak(heard) > 2000
        assert len(heard) >= 0.9 * mulaw_len(SENTENCES)

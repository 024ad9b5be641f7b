"""Every TTS plugin, against its fake, with the next sentence asked for while one still
streams (what a reply does): each sentence gets exactly its own audio, in full, and a
sentence cancelled mid-way (a barge-in, or one given up) does not take the one queued behind
it down with it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from getpatter.core.audio import ulaw_encode
from getpatter.core.providers import TTSStream
from getpatter.testing.engines import speech_tone

FIRST = "We open at nine in the morning."
SECOND = "On Saturdays we open at ten."


@dataclass
class Rig:
    stream: TTSStream
    fake: Any
    audio: Callable[[str], bytes]  # what the fake makes for a text


def mulaw(text: str) -> bytes:
    return ulaw_encode(speech_tone(text, 8000))


@contextlib.asynccontextmanager
async def rig_for(name: str) -> AsyncIterator[Rig]:
    pace = {"first_audio_delay": 0.05, "audio_speed": 4.0, "chunk_ms": 50}
    async with contextlib.AsyncExitStack() as stack:
        if name == "elevenlabs":
            from getpatter.plugins.elevenlabs.tts import ElevenLabsTTS
            from getpatter.testing.elevenlabs import FakeElevenLabs

            fake: Any = await stack.enter_async_context(FakeElevenLabs("k", **pace))
            tts: Any = ElevenLabsTTS(api_key="k", base_url=fake.base_url)
            audio = mulaw
        elif name == "cartesia":
            from getpatter.plugins.cartesia.tts import CartesiaTTS
            from getpatter.testing.cartesia import FakeCartesia

            fake = await stack.enter_async_context(FakeCartesia("k", **pace))
            tts = CartesiaTTS(api_key="k", base_url=fake.base_url, ws_url=fake.ws_url)
            audio = mulaw
        elif name == "lmnt":
            from getpatter.plugins.lmnt.tts import LmntTTS
            from getpatter.testing.lmnt import FakeLmnt

            fake = await stack.enter_async_context(FakeLmnt("k", **pace))
            tts = LmntTTS(api_key="k", base_url=fake.base_url)
            audio = mulaw
        elif name == "rime":
            from getpatter.plugins.rime.tts import RimeTTS
            from getpatter.testing.rime import FakeRime

            fake = await stack.enter_async_context(FakeRime("k", **pace))
            tts = RimeTTS(api_key="k", base_url=fake.base_url)
            audio = mulaw
        else:
            from getpatter.plugins.openai.tts import OpenAITTS
            from getpatter.testing.openai_http import FakeOpenAI

            fake = await stack.enter_async_context(FakeOpenAI("sk-k"))
            fake.first_byte_delay, fake.audio_speed, fake.chunk_ms = 0.05, 4.0, 50
            tts = OpenAITTS(api_key="sk-k", base_url=fake.base_url)
            audio = fake.tone
        stream = await tts.open()
        stack.push_async_callback(stream.aclose)
        yield Rig(stream, fake, audio)


PROVIDERS = ["elevenlabs", "cartesia", "lmnt", "rime", "openai"]


async def collect(stream: TTSStream, text: str, started: asyncio.Event | None = None) -> bytes:
    out = b""
    async for chunk in stream.synthesize(text):
        out += chunk
        if started is not None:
            started.set()
    return out


async def asked_for(rig: Rig, text: str, within: float = 5.0) -> None:
    """Until the fake has received a request carrying `text` (socket message or HTTP body)."""
    http = hasattr(rig.fake, "speech_requests")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        messages = rig.fake.speech_requests if http else rig.fake.received
        if any(text in json.dumps(m, default=str) for m in messages):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{text!r} never reached the fake")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_sentence_asked_for_while_one_streams_gets_its_own_audio(provider: str) -> None:
    async with rig_for(provider) as rig:
        started = asyncio.Event()
        first = asyncio.create_task(collect(rig.stream, FIRST, started))
        await started.wait()  # the first is streaming: ask for the second now
        second = asyncio.create_task(collect(rig.stream, SECOND))
        assert await first == rig.audio(FIRST)
        assert await second == rig.audio(SECOND)
        # and the stream carries on as before
        assert await collect(rig.stream, FIRST) == rig.audio(FIRST)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_two_sentences_asked_for_at_once_each_get_their_own_audio(provider: str) -> None:
    """A reply whose text came whole asks for its first two sentences together (Rime would
    merge two flushes waiting together into one synthesis: the plugin must not let them)."""
    async with rig_for(provider) as rig:
        first = asyncio.create_task(collect(rig.stream, FIRST))
        second = asyncio.create_task(collect(rig.stream, SECOND))
        assert await asyncio.wait_for(first, 5) == rig.audio(FIRST)
        assert await asyncio.wait_for(second, 5) == rig.audio(SECOND)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancelling_a_sentence_spares_the_one_behind_it(provider: str) -> None:
    async with rig_for(provider) as rig:
        started = asyncio.Event()
        first = asyncio.create_task(collect(rig.stream, FIRST, started))
        await started.wait()
        second = asyncio.create_task(collect(rig.stream, SECOND))
        await asked_for(rig, SECOND)  # its text has gone out, queued behind the first
        first.cancel()  # given up mid-way
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(second, 5) == rig.audio(SECOND)


async def test_cartesia_continues_one_context_for_a_sentence_asked_for_ahead() -> None:
    """Prosody: the second sentence goes on the first's context (continue: true), its audio
    is the second flush's, and cancelling the first cancels that context and asks for the
    second on a new one."""
    async with rig_for("cartesia") as rig:
        started = asyncio.Event()
        first = asyncio.create_task(collect(rig.stream, FIRST, started))
        await started.wait()
        second = asyncio.create_task(collect(rig.stream, SECOND))
        await first, await second
        texts = [m for m in rig.fake.received if m.get("transcript")]
        assert [m["transcript"] for m in texts] == [f"{FIRST} ", f"{SECOND} "]
        assert texts[0]["context_id"] == texts[1]["context_id"] and texts[1]["continue"] is True

"""The first-audio deadline of `core.synthesis`, with every streaming TTS plugin against its
fake: a sentence the service accepts and never answers is asked for again (the plugin's
fallback path when it has one) and heard; a second stall ends in `SpeechFailed`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from getpatter.core.providers import TTSStream
from getpatter.core.synthesis import SpeechFailed, synthesize
from getpatter.testing.engines import speech_tone

DEADLINE = 0.3
TEXT = "We open at nine tomorrow."


@dataclass
class Rig:
    stream: TTSStream
    stall: Callable[[], None]  # the next synthesis: accepted, then silence
    expected: int  # bytes of audio for TEXT
    retry_went_out: Callable[[], bool]  # the retry took the path this plugin should use


async def elevenlabs(stack: AsyncExitStack, transport: str) -> Rig:
    from getpatter.plugins.elevenlabs.tts import ElevenLabsTTS
    from getpatter.testing.elevenlabs import FakeElevenLabs

    fake = await stack.enter_async_context(FakeElevenLabs("el-key"))
    tts = ElevenLabsTTS(api_key="el-key", base_url=fake.base_url, transport=transport)  # type: ignore[arg-type]
    stream = await tts.open()
    stack.push_async_callback(stream.aclose)

    def stall() -> None:
        fake.stall_next(0, whole_socket=False)

    def retry_went_out() -> bool:  # over HTTP (the stalled try was on the socket, or HTTP too)
        return len(fake.http_requests) == (1 if transport == "websocket" else 3)

    return Rig(stream, stall, len(speech_tone(TEXT, 8000)), retry_went_out)


async def cartesia(stack: AsyncExitStack) -> Rig:
    from getpatter.plugins.cartesia.tts import CartesiaTTS
    from getpatter.testing.cartesia import FakeCartesia

    fake = await stack.enter_async_context(FakeCartesia("car-key"))
    tts = CartesiaTTS(api_key="car-key", base_url=fake.base_url, ws_url=fake.ws_url)
    stream = await tts.open()
    stack.push_async_callback(stream.aclose)
    return Rig(
        stream,
        lambda: fake.stall_next(0),
        len(speech_tone(TEXT, 8000)),
        lambda: len(fake.sessions) == 2,  # on a fresh socket
    )


async def openai(stack: AsyncExitStack) -> Rig:
    from getpatter.plugins.openai.tts import OpenAITTS
    from getpatter.testing.openai_http import FakeOpenAI

    fake = await stack.enter_async_context(FakeOpenAI("sk-key"))
    stream = await OpenAITTS(api_key="sk-key", base_url=fake.base_url).open()
    stack.push_async_callback(stream.aclose)

    def stall() -> None:
        fake.stall_speech += 1

    return Rig(stream, stall, len(fake.tone(TEXT)), lambda: len(fake.speech_requests) == 3)


RIGS: dict[str, Callable[[AsyncExitStack], Any]] = {
    "elevenlabs-websocket": lambda s: elevenlabs(s, "websocket"),
    "elevenlabs-http": lambda s: elevenlabs(s, "http"),
    "cartesia": cartesia,
    "openai": openai,
}


@pytest.fixture(params=list(RIGS))
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async with AsyncExitStack() as stack:
        yield await RIGS[request.param](stack)


async def speak(rig: Rig, retries: list[str]) -> bytes:
    audio = synthesize(rig.stream, TEXT, first_audio_timeout=DEADLINE, on_retry=retries.append)
    return b"".join([chunk async for chunk in audio])


async def test_a_stalled_sentence_is_heard_after_one_retry(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    retries: list[str] = []
    assert len(await speak(rig, retries)) == rig.expected and retries == []
    rig.stall()
    started = loop.time()
    assert len(await speak(rig, retries)) == rig.expected
    assert DEADLINE <= loop.time() - started < DEADLINE + 0.5
    assert retries == [f"no audio within {DEADLINE:g} s"]
    assert rig.retry_went_out()
    # and the stream is still good for the next sentence
    assert len(await speak(rig, retries)) == rig.expected and len(retries) == 1


async def test_two_stalls_end_in_speech_failed(rig: Rig) -> None:
    rig.stall()
    rig.stall()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SpeechFailed, match="retry"):
        await speak(rig, [])
    assert loop.time() - started < 2 * DEADLINE + 0.5


async def test_local_tts_goes_through_the_deadline() -> None:
    from getpatter.plugins.local.tts import LocalTTS

    try:
        stream = await LocalTTS().open()
    except Exception as exc:  # espeak-ng not installed here
        pytest.skip(f"local TTS unavailable: {exc!r}")
    try:
        retries: list[str] = []
        audio = synthesize(stream, TEXT, first_audio_timeout=1.5, on_retry=retries.append)
        assert len(b"".join([chunk async for chunk in audio])) > 8000 and retries == []
    finally:
        await stream.aclose()

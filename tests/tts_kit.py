"""What the TTS provider tests repeat (LMNT, Rime, Cartesia, ElevenLabs): the test tone in the
carrier's format, a sentence synthesized whole, and a call in which an agent speaking through
the provider greets, hears one question and answers it in two sentences."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import aiohttp

from getpatter.core.audio import ulaw_encode
from getpatter.core.providers import TTS, TTSStream
from getpatter.testing.engines import speech_tone
from getpatter.testing.providers import ScriptedSTT
from getpatter.testing.twilio import FakeCall, FakeTwilio

from call_kit import hang_up
from helpers import CALLER, NUMBER, speech

GREETING = "Acme, hello!"
QUESTION = "what time do you open"
ANSWER = "We open at nine. See you then!"
SENTENCES = [GREETING, "We open at nine.", "See you then!"]
DIALOGUE = [("assistant", GREETING), ("user", QUESTION), ("assistant", ANSWER)]


def mulaw(text: str) -> bytes:
    """What the fakes speak for `text` at 8 kHz μ-law: its tone stand-in."""
    return ulaw_encode(speech_tone(text, 8000))


def mulaw_len(texts: list[str]) -> int:
    return sum(len(mulaw(t)) for t in texts)


async def until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    """The JSON messages of a fake's socket up to and including the first of type `kind`
    (Rime, Cartesia)."""
    out = []
    while True:
        msg = await ws.receive_json(timeout=3)
        out.append(msg)
        if msg["type"] == kind:
            return out


def audio_of(messages: list[dict[str, Any]]) -> bytes:
    """The audio of the `chunk` messages among `messages`, base64-decoded (Rime, Cartesia)."""
    return b"".join(base64.b64decode(m["data"]) for m in messages if m["type"] == "chunk")


async def say(stream: TTSStream, text: str) -> bytes:
    return b"".join([chunk async for chunk in stream.synthesize(text)])


async def spoken_call(
    serve: Callable[..., Any], net: FakeTwilio, tts: TTS, first_message: str = GREETING
) -> tuple[Any, FakeCall]:
    """Serve an agent speaking through `tts` that answers ANSWER; the caller asks QUESTION."""
    s = await serve(
        {"stt": ScriptedSTT([QUESTION]), "tts": tts, "first_message": first_message},
        on_message=lambda msg: ANSWER,
    )
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0, tail=2.0))
    return s, call


async def whole_call(
    serve: Callable[..., Any],
    net: FakeTwilio,
    tts: TTS,
    spoken: Callable[[], bool],
    closed: Callable[[], object],
    first_message: str = GREETING,
) -> tuple[dict[str, Any], FakeCall]:
    """A `spoken_call` played until the provider was asked for all three sentences (`spoken`)
    and 2.5 s more, then hung up; waits for the end record and the provider's sessions to
    be `closed`: (the end record, the call)."""
    s, call = await spoken_call(serve, net, tts, first_message)
    await call.wait_for(spoken, 15)
    await asyncio.sleep(2.5)
    return await hang_up(s, call, closed), call


LONG = "A long sentence that the caller is about to interrupt."
CUT = "This sentence is cut by the network halfway through."


async def interrupt(stream: TTSStream, text: str = LONG) -> float:
    """Start `text`, take its first chunk, close the iterator (a barge-in): the seconds the
    close took."""
    sentence = stream.synthesize(text)
    await anext(sentence)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sentence.aclose()
    return loop.time() - started


async def say_cut(
    stream: TTSStream, fake: Any, at: tuple[int, ...], text: str = CUT
) -> tuple[bytes, list[int]]:
    """Synthesize `text`, dropping the fake's connections once the audio so far is `at` bytes
    long: (the audio, how many connections each drop closed)."""
    got, drops = b"", []
    async for chunk in stream.synthesize(text):
        got += chunk
        if len(got) in at:
            drops.append(await fake.drop_connections())
    return got, drops


async def call_spoken_by(
    serve: Callable[..., Any], net: FakeTwilio, fake: Any, tts: TTS, is_flush: Callable[[Any], Any]
) -> tuple[dict[str, Any], FakeCall]:
    """`whole_call` for a fake that logs each message it `received` and lists its
    `live_sessions`: spoken once three messages were flushes, closed with no session live."""
    return await whole_call(
        serve,
        net,
        tts,
        lambda: sum(1 for m in fake.received if is_flush(m)) >= 3,
        lambda: not fake.live_sessions,
    )

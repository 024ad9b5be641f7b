"""A pipeline agent with on_message answers whole calls through the fake phone network."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from getpatter.testing.providers import ScriptedSTT, ScriptedTTS
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech


async def test_on_message_agent_end_to_end(serve: Callable[..., Any], net: FakeTwilio) -> None:
    seen: list[dict[str, Any]] = []

    async def on_message(msg: dict[str, Any]) -> str:
        seen.append(msg)
        return f"You said: {msg['text']}."

    stt = ScriptedSTT(["what time do you open", "thanks"])
    tts = ScriptedTTS()
    s = await serve(
        {"stt": stt, "tts": tts, "first_message": "Acme, how can I help?"},
        on_message=on_message,
    )
    audio = np.concatenate([speech(lead=2.5, tail=2.0), speech(lead=0.0, tail=2.0)])
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    await call.wait_for(lambda: len(tts.texts) >= 3, 15)
    await asyncio.sleep(1.0)
    await call.hangup()
    await call.wait_ended()
    for _ in range(50):
        if s.events.get("on_call_end"):
            break
        await asyncio.sleep(0.05)
    assert [m["text"] for m in seen] == ["what time do you open", "thanks"]
    assert seen[1]["history"][:2] == [
        {"role": "assistant", "content": "Acme, how can I help?"},
        {"role": "user", "content": "what time do you open"},
    ]
    assert seen[0]["caller"] == CALLER and seen[0]["call_id"] == call.call_sid
    record = s.events["on_call_end"][0]
    texts = [(e["role"], e["text"]) for e in record["transcript"]]
    assert texts[:3] == [
        ("assistant", "Acme, how can I help?"),
        ("user", "what time do you open"),
        ("assistant", "You said: what time do you open."),
    ]
    # The caller heard agent speech (tone stand-ins) — real audio came down the line.
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 2000
    assert stt.streams[0].closed


async def test_a_sentence_generator_is_heard_sentence_by_sentence(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    """issue 16's `on_message`: one sentence per yield, with a lookup between yields (the 1 s
    sleeps scaled down). Each sentence is spoken as soon as it is yielded, and the transcript
    reads as the sentences joined with spaces."""
    loop = asyncio.get_running_loop()
    yielded: list[float] = []

    async def on_message(msg: dict[str, Any]) -> Any:
        yielded.append(loop.time())
        yield "First, let me check the calendar."
        await asyncio.sleep(0.4)  # a database lookup
        yielded.append(loop.time())
        yield "Tuesday at ten is free."
        await asyncio.sleep(0.4)
        yielded.append(loop.time())
        yield "I have booked it for you."

    tts = ScriptedTTS()
    s = await serve({"stt": ScriptedSTT(["book me in"]), "tts": tts}, on_message=on_message)
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=0.5, tail=2.0))
    await call.wait_for(lambda: len(tts.texts) >= 3, 15)
    await asyncio.sleep(3.0)
    await call.hangup()
    await call.wait_ended()
    for _ in range(50):
        if s.events.get("on_call_end"):
            break
        await asyncio.sleep(0.05)
    assert tts.texts == [
        "First, let me check the calendar.",
        "Tuesday at ten is free.",
        "I have booked it for you.",
    ]
    # each sentence reached the TTS as it was yielded (not when the generator ended) …
    assert all(0 <= a - y < 0.1 for a, y in zip(tts.asked_at, yielded, strict=True))
    # … and the caller was hearing the first before the generator had finished
    media = [t for t, event, _ in call.received if event == "media"]
    assert media and media[0] < yielded[-1]
    record = s.events["on_call_end"][0]
    said = [e["text"] for e in record["transcript"] if e["role"] == "assistant"]
    assert said == [
        "First, let me check the calendar. Tuesday at ten is free. I have booked it for you."
    ]

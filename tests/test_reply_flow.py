"""How a reply reaches the caller, on the virtual clock: sentence-yielding generators, token
streams, and TTS sentences that never sound (stall → retry → apology; only what was heard is
kept)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from getpatter.core.pipeline import PipelineOptions
from getpatter.testing.clock import run_virtual
from getpatter.testing.providers import ScriptedLLM, ScriptedSTT, ScriptedTTS

from helpers import speech
from pipeline_harness import Harness, open_call

SPEECH = speech("hello.wav", lead=0.2, tail=0.0)
APOLOGY = PipelineOptions().apology


def virtual(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def test() -> None:
        run_virtual(fn())

    test.__name__ = fn.__name__
    return test


def now() -> float:
    return asyncio.get_running_loop().time()


def agent_said(h: Harness) -> list[str]:
    return [t["text"] for t in h.transcripts if t["role"] == "assistant"]


def silences(h: Harness, after: float) -> list[float]:
    """Gaps between the agent's media frames at the carrier after `after` (each frame 20 ms)."""
    times = [t for t in h.carrier.times("media") if t >= after]
    return [b - a - 0.02 for a, b in itertools.pairwise(times)]


# --- sentence-yielding generators ------------------------------------------------------------


@virtual
async def test_a_sentence_generator_is_heard_sentence_by_sentence() -> None:
    yielded: list[float] = []

    async def on_message(msg: dict[str, Any]) -> AsyncIterator[str]:
        for sentence in (
            "First, let me check the calendar.",
            "Tuesday at ten is free.",
            "I have booked it for you.",
        ):
            if yielded:
                await asyncio.sleep(1.0)  # a database lookup
            yielded.append(now())
            yield sentence

    h = await open_call(stt=ScriptedSTT(["book me in"]), on_message=on_message)
    await h.feed(SPEECH)
    await h.silence(6.0)
    assert h.tts.texts == [
        "First, let me check the calendar.",
        "Tuesday at ten is free.",
        "I have booked it for you.",
    ]
    # each sentence went to the TTS the moment it was yielded, not when the generator ended
    assert [round(a - y, 6) for a, y in zip(h.tts.asked_at, yielded, strict=True)] == [0, 0, 0]
    first_frame = h.carrier.times("media")[0]
    assert first_frame - yielded[0] < 0.03
    # joined as a reader would, in the transcript and in the model's history
    said = "First, let me check the calendar. Tuesday at ten is free. I have booked it for you."
    assert agent_said(h) == [said]
    assert h.engine_call.history[-1] == {"role": "assistant", "content": said}
    await h.close()


@virtual
async def test_a_sentence_split_over_yields_waits_only_a_moment() -> None:
    yielded: list[float] = []

    async def on_message(msg: dict[str, Any]) -> AsyncIterator[str]:
        yield "Let me check"
        yielded.append(now())
        yield " the calendar."
        await asyncio.sleep(1.0)
        yield "Tuesday works."

    h = await open_call(stt=ScriptedSTT(["book me in"]), on_message=on_message)
    await h.feed(SPEECH)
    await h.silence(4.0)
    assert h.tts.texts == ["Let me check the calendar.", "Tuesday works."]
    assert h.tts.asked_at[0] - yielded[0] == pytest.approx(0.05)  # the sentence end's hold
    await h.close()


@virtual
async def test_token_delta_streams_are_cut_as_before() -> None:
    """An LLM streaming word tokens with small gaps: no spaces added, "Dr." and "1.5" whole,
    and the first clause out before the first full stop."""
    reply = (
        "Sure, I can book that appointment for you right now. Dr. Smith is free at 1.5 hours "
        "past nine. Shall I go ahead?"
    )
    llm = ScriptedLLM([reply], token_delay=0.1)  # longer than the 50 ms sentence hold
    h = await open_call(stt=ScriptedSTT(["book me in"]), llm=llm)
    await h.feed(SPEECH)
    await h.silence(12.0)
    assert h.tts.texts == [
        "Sure, I can book that appointment for you right now.",
        "Dr. Smith is free at 1.5 hours past nine.",
        "Shall I go ahead?",
    ]
    assert agent_said(h) == [reply]
    await h.close()


@virtual
async def test_first_clause_of_a_token_stream_goes_out_early() -> None:
    reply = "Well, the thing is that we can, in fact, do that for you today if you like."
    h = await open_call(stt=ScriptedSTT(["hi"]), llm=ScriptedLLM([reply], token_delay=0.05))
    await h.feed(SPEECH)
    await h.silence(8.0)
    assert h.tts.texts[0] == "Well, the thing is that we can,"
    assert agent_said(h) == [reply]
    await h.close()


@virtual
async def test_barge_in_mid_sentence_of_a_sentence_generator() -> None:
    closed: list[bool] = []

    async def on_message(msg: dict[str, Any]) -> AsyncIterator[str]:
        try:
            yield "We have many departments and services to tell you about, one by one."
            await asyncio.sleep(0.5)
            yield "The first is hardware, and it is on the ground floor by the door."
            await asyncio.sleep(5.0)
            yield "Never heard."
        finally:
            closed.append(True)

    h = await open_call(stt=ScriptedSTT(["tell me", "stop"]), on_message=on_message)
    await h.feed(SPEECH)
    await h.silence(1.5)  # the reply plays
    await h.feed(SPEECH)  # and the caller talks over it
    clears = h.carrier.times("clear")
    assert len(clears) == 1
    await h.silence(3.0)
    assert closed == [True]  # the generator was closed, its last sentence never asked for
    assert "Never heard." not in h.tts.texts
    cut = next(t for t in h.transcripts if t.get("interrupted"))
    first = "We have many departments and services to tell you about, one by one."
    assert 0 < len(cut["text"].split()) < len(first.split())
    assert first.startswith(cut["text"])
    await h.close()


# --- the first-audio deadline ------------------------------------------------------------------


REPLY = "Let me see what we have. We open at nine. We close at six."


@virtual
async def test_a_stalled_sentence_is_retried_and_the_caller_hears_it() -> None:
    tts = ScriptedTTS(stall=[2])  # the second sentence: accepted, then nothing
    h = await open_call(stt=ScriptedSTT(["hours?"]), tts=tts, on_message=lambda m: REPLY)
    await h.feed(SPEECH)
    start = now()
    await h.silence(8.0)
    # the third sentence is asked for while the second waits (one ahead of the one playing)
    assert tts.texts == [
        "Let me see what we have.",
        "We open at nine.",
        "We close at six.",
        "We open at nine.",
    ]
    assert tts.asked_at[3] - tts.asked_at[1] == pytest.approx(PipelineOptions().first_audio_timeout)
    assert max(silences(h, start)) <= 2.0  # no dead air inside the reply past the deadline
    assert agent_said(h) == [REPLY]
    turn = h.session.metrics.turns[-1]
    assert turn["tts_retry"] == 1 and turn["agent_text"] == REPLY
    assert [e["reason"] for e in h.session.events if e["kind"] == "tts_retry"] == [
        "no audio within 1.5 s"
    ]
    await h.close()


@virtual
async def test_a_sentence_that_never_sounds_is_not_in_the_transcript() -> None:
    # the second sentence stalls, and on the retry (the 4th synthesis: the third sentence,
    # asked for ahead, is the 3rd) too
    tts = ScriptedTTS(stall=[2, 4])
    h = await open_call(stt=ScriptedSTT(["hours?"]), tts=tts, on_message=lambda m: REPLY)
    await h.feed(SPEECH)
    start = now()
    await h.silence(8.0)
    nine, six = "We open at nine.", "We close at six."
    assert tts.texts == ["Let me see what we have.", nine, six, nine, APOLOGY]
    assert max(silences(h, start)) <= 2 * PipelineOptions().first_audio_timeout + 0.1
    said = f"Let me see what we have. {APOLOGY}"  # "six", made ahead, was dropped unheard
    assert agent_said(h) == [said]
    assert h.engine_call.history[-1] == {"role": "assistant", "content": said}
    assert h.session.metrics.turns[-1]["agent_text"] == said
    assert any(e["kind"] == "reply_error" for e in h.session.events)
    await h.close()


@virtual
async def test_an_empty_answer_counts_as_no_audio() -> None:
    tts = ScriptedTTS(empty=[1])  # the stream ends at once, without a byte of audio
    h = await open_call(stt=ScriptedSTT(["hi"]), tts=tts, on_message=lambda m: "Hello there.")
    await h.feed(SPEECH)
    await h.silence(3.0)
    assert tts.texts == ["Hello there.", "Hello there."]
    assert tts.asked_at[1] == tts.asked_at[0]  # no need to wait for the deadline
    assert agent_said(h) == ["Hello there."]
    await h.close()


@virtual
async def test_a_stalled_greeting_is_retried() -> None:
    tts = ScriptedTTS(stall=[1])
    h = await open_call(tts=tts, on_message=lambda m: "ok", first_message="Thanks for calling!")
    await h.silence(3.0)
    media = h.carrier.times("media")
    assert media and media[0] - 1000 <= PipelineOptions().first_audio_timeout + 0.03
    assert agent_said(h) == ["Thanks for calling!"]
    assert h.session.metrics.turns[0]["tts_retry"] == 1
    await h.close()


def test_heard_audio_is_real_speech() -> None:
    """The stand-in TTS audio is loud enough that the gaps measured above are real silences."""
    from getpatter.testing.engines import speech_tone

    assert np.abs(speech_tone("We open at nine.").astype(np.int32)).max() > 2000

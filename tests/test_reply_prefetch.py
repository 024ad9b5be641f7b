"""Sentences synthesized ahead and sentences given up mid-way, on the virtual clock.

The stand-in TTS has a real first-byte time (200 ms) and streams at about real time, the case
where asking for a sentence only after the one before has all arrived leaves one first-byte
time of silence at every sentence boundary. What the caller hears is rebuilt from the frames
the carrier received: each 20 ms frame plays from the later of its arrival and the end of the
one before, so a silence is a frame arriving after the one before has finished playing."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from getpatter.core.pipeline import PipelineOptions
from getpatter.testing.clock import run_virtual
from getpatter.testing.engines import SPEECH_SECONDS_PER_CHAR
from getpatter.testing.providers import ScriptedSTT, ScriptedTTS

from helpers import speech
from pipeline_harness import Harness, open_call

SPEECH = speech("hello.wav", lead=0.2, tail=0.0)
APOLOGY = PipelineOptions().apology
GAP = 1.0  # PipelineOptions.audio_gap_timeout's default
FIRST_BYTE = 0.2
SENTENCES = (
    "Let me look that up for you right away.",
    "We open at nine in the morning on weekdays.",
    "On Saturdays we open at ten and close at four.",
)
REPLY = " ".join(SENTENCES)


def virtual(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def test() -> None:
        run_virtual(fn())

    test.__name__ = fn.__name__
    return test


def realtime_tts(**kwargs: Any) -> ScriptedTTS:
    """A TTS with a 200 ms first byte that streams at real time, 50 ms chunks."""
    return ScriptedTTS(first_byte_delay=FIRST_BYTE, audio_speed=1.0, chunk_ms=50, **kwargs)


def heard_silences(h: Harness, after: float = 0.0) -> list[float]:
    """The silences the caller heard between the agent's frames (sent after `after`)."""
    frames = [(t, m["n"]) for t, m in h.carrier.log if m["event"] == "media" and t >= after]
    silences, end = [], None
    for t, n in frames:
        if end is not None and t > end + 1e-9:
            silences.append(t - end)
        end = max(t, end if end is not None else t) + n / 8000
    return silences


def agent_said(h: Harness) -> list[str]:
    return [t["text"] for t in h.transcripts if t["role"] == "assistant"]


async def answer(tts: ScriptedTTS, reply: str = REPLY, **options: Any) -> Harness:
    h = await open_call(
        stt=ScriptedSTT(["when do you open"]),
        tts=tts,
        on_message=lambda m: reply,
        options=PipelineOptions(**options),
    )
    await h.feed(SPEECH)
    return h


def seconds(text: str) -> float:
    return len(text) * SPEECH_SECONDS_PER_CHAR


# --- the next sentence is synthesized while the current one plays ----------------------------


@pytest.mark.parametrize("serial", [False, True], ids=["independent", "one-socket"])
def test_no_silence_at_sentence_boundaries(serial: bool) -> None:
    async def main() -> None:
        tts = realtime_tts(serial=serial)
        h = await answer(tts)
        await h.silence(6.0)
        assert tts.texts == list(SENTENCES)
        assert agent_said(h) == [REPLY]
        # the second sentence went to the TTS with the first, not once the first had arrived
        assert tts.asked_at[1] - tts.asked_at[0] < 0.01
        # and the caller heard no gap: at most a frame (scheduler tick) at a boundary
        assert max(heard_silences(h), default=0.0) <= 0.021
        turn = h.session.metrics.turns[-1]
        assert turn["latency"]["tts_ttfb_ms"] == pytest.approx(1000 * FIRST_BYTE, abs=1)
        assert turn["tts_retry"] == 0 and turn["tts_gap"] == 0
        await h.close()

    run_virtual(main())


@virtual
async def test_without_lookahead_each_boundary_waits_a_first_byte() -> None:
    """The baseline (`tts_lookahead=0`, the old behaviour): a first byte of silence."""
    tts = realtime_tts()
    h = await answer(tts, tts_lookahead=0)
    await h.silence(6.0)
    assert agent_said(h) == [REPLY]
    gaps = heard_silences(h)
    assert [g for g in gaps if g > 0.021] == [pytest.approx(FIRST_BYTE, abs=0.021)] * 2
    await h.close()


@virtual
async def test_synthesis_runs_one_sentence_ahead_only() -> None:
    """A barge-in can cut what was asked for: at most one sentence beyond the playing one."""
    sentences = [f"This is sentence number {n} of a long answer." for n in range(1, 6)]
    tts = realtime_tts()
    h = await answer(tts, " ".join(sentences))
    await h.silence(12.0)
    assert tts.texts == sentences
    for k in range(2, 5):  # sentence k+1 is asked for once sentence k-1's audio is all in
        all_in = tts.first_audio_at[k - 1] + seconds(sentences[k - 2])
        assert tts.asked_at[k] >= all_in - 0.06  # (its last 50 ms chunk)
    await h.close()


@virtual
async def test_a_tts_that_serializes_is_not_taken_for_a_stalled_one() -> None:
    """On one socket the second sentence's audio starts after the first's (3 s here, past the
    1.5 s first-audio deadline): its deadline counts from the first's last audio."""
    long = "This first sentence is a long one, and it takes a good while to say out loud."
    tts = realtime_tts(serial=True)
    h = await answer(tts, f"{long} Then a short one.")
    await h.silence(7.0)
    assert tts.texts == [long, "Then a short one."]  # no retry
    assert tts.first_audio_at[2] - tts.asked_at[1] > PipelineOptions().first_audio_timeout
    assert h.session.metrics.turns[-1]["tts_retry"] == 0
    assert max(heard_silences(h), default=0.0) <= 0.021
    await h.close()


@virtual
async def test_a_queued_sentence_that_never_sounds_is_retried_in_time() -> None:
    """A sentence asked for ahead that gives nothing is asked for again the mid-sentence gap
    after the one before's last audio (not the first-audio deadline after that): the caller
    hears no more silence than inside a sentence that stops, plus a first byte."""
    tts = realtime_tts(stall=[2])
    h = await answer(tts)
    await h.silence(8.0)
    assert tts.texts == [SENTENCES[0], SENTENCES[1], SENTENCES[2], SENTENCES[1]]
    chunks = -(-int(seconds(SENTENCES[0]) * 8000) // 400)  # of 50 ms
    first_last_audio = tts.first_audio_at[1] + (chunks - 1) * 0.05
    assert tts.asked_at[3] - first_last_audio == pytest.approx(GAP, abs=0.021)
    assert agent_said(h) == [REPLY]
    assert GAP < max(heard_silences(h)) <= GAP + FIRST_BYTE + 0.021
    assert h.session.metrics.turns[-1]["tts_retry"] == 1
    await h.close()


@virtual
async def test_barge_in_during_prefetch_leaves_nothing_stale() -> None:
    turns: list[str] = []

    def on_message(msg: dict[str, Any]) -> str | None:
        turns.append(msg["text"])
        return REPLY if len(turns) == 1 else None

    tts = realtime_tts()
    h = await open_call(
        stt=ScriptedSTT(["when do you open", "stop"]), tts=tts, on_message=on_message
    )
    await h.feed(SPEECH)
    await h.silence(0.5)  # the first sentence plays, the second is being made
    assert tts.texts == list(SENTENCES[:2])
    await h.feed(SPEECH)  # the caller talks over it
    clears = h.carrier.times("clear")
    assert len(clears) == 1
    await h.silence(4.0)
    # nothing of the interrupted reply after the clear; its prefetched sentence was cancelled
    assert [t for t in h.carrier.times("media") if t > clears[0]] == []
    assert sorted(tts.cancelled_texts) == sorted(SENTENCES[:2])
    assert tts.texts == list(SENTENCES[:2])  # the third was never asked for
    cut = next(t for t in h.transcripts if t.get("interrupted"))
    assert 0 < len(cut["text"].split()) < len(SENTENCES[0].split())
    assert SENTENCES[0].startswith(cut["text"])
    await h.close()


# --- a sentence whose audio stops mid-way --------------------------------------------------


@virtual
async def test_a_sentence_stalled_mid_way_is_given_up_for_the_next() -> None:
    assert PipelineOptions().audio_gap_timeout == GAP
    tts = realtime_tts(stall_mid={1: 6})  # the first sentence stops after 0.3 s of audio
    h = await answer(tts)
    await h.silence(8.0)
    # the caller heard 0.3 s, then silence until the gap ran out (1 s after the last audio,
    # which came 50 ms before it finished playing), then the second sentence, made meanwhile
    silences = heard_silences(h)
    assert max(silences) == pytest.approx(GAP - 0.05, abs=0.021)
    assert len([g for g in silences if g > 0.021]) == 1
    assert tts.cancelled_texts == [SENTENCES[0]]  # the stalled request was closed
    said = agent_said(h)
    assert len(said) == 1 and said[0].endswith(f"{SENTENCES[1]} {SENTENCES[2]}")
    # of the first sentence, only words heard (at ~150 words a minute: no rate measured yet)
    heard = said[0][: -len(f"{SENTENCES[1]} {SENTENCES[2]}")].split()
    assert heard == ["Let"]
    turn = h.session.metrics.turns[-1]
    assert turn["tts_gap"] == 1 and turn["tts_retry"] == 0 and turn["agent_text"] == said[0]
    events = [e for e in h.session.events if e["kind"] == "tts_gap"]
    assert len(events) == 1 and events[0]["heard"] == pytest.approx(0.3)
    assert h.engine_call.history[-1] == {"role": "assistant", "content": said[0]}
    await h.close()


@virtual
async def test_a_stall_in_a_sentence_made_ahead_is_covered_by_its_audio() -> None:
    """The second sentence stops after 0.25 s of audio, made while the first played: it is
    given up the moment that audio has played, for the third (made meanwhile): no silence."""
    tts = realtime_tts(stall_mid={2: 5})
    h = await answer(tts)
    await h.silence(8.0)
    assert max(heard_silences(h)) <= 0.021
    said = agent_said(h)
    assert len(said) == 1
    assert said[0].startswith(SENTENCES[0]) and said[0].endswith(SENTENCES[2])
    # the second sentence cut at the reply's measured rate: 0.25 s of it
    heard = said[0][len(SENTENCES[0]) : -len(SENTENCES[2])].split()
    assert heard == SENTENCES[1].split()[:2]
    assert h.session.metrics.turns[-1]["tts_gap"] == 1
    await h.close()


@virtual
async def test_a_pause_while_the_caller_still_has_audio_is_not_a_stall() -> None:
    """A TTS far ahead of real time may pause: only a pause the caller would hear counts."""
    long = (
        "This sentence is long enough to fill more than three seconds of audio which is "
        "plenty for this test."
    )
    # 2 s of audio at once, then 1.5 s of nothing (past the 1 s gap), then the rest
    tts = ScriptedTTS(first_byte_delay=FIRST_BYTE, pause={1: (20, 1.5)})
    h = await answer(tts, long)
    await h.silence(6.0)
    assert seconds(long) >= 3.0
    assert tts.texts == [long] and tts.cancelled == 0
    assert agent_said(h) == [long]
    assert h.session.metrics.turns[-1]["tts_gap"] == 0
    assert max(heard_silences(h), default=0.0) <= 0.021
    await h.close()


@virtual
async def test_a_stall_in_the_last_sentence_ends_in_the_apology() -> None:
    tts = realtime_tts(stall_mid={3: 4})
    h = await answer(tts)
    await h.silence(10.0)
    said = agent_said(h)
    assert len(said) == 1
    assert said[0].startswith(f"{SENTENCES[0]} {SENTENCES[1]}") and said[0].endswith(APOLOGY)
    assert SENTENCES[2] not in said[0]
    assert tts.texts[-1] == APOLOGY
    assert max(heard_silences(h)) < 1.1
    assert h.session.metrics.turns[-1]["tts_gap"] == 1
    await h.close()


@virtual
async def test_guardrails_screen_each_sentence_before_the_tts_sees_it() -> None:
    """With sentences made ahead, a blocked sentence still never reaches the TTS: it is
    screened when it is asked for, the replacement is said instead, and the reply stops."""
    from getpatter.agent import Guardrail

    guard = Guardrail("No weekend talk", blocked_terms=["Saturdays"], replacement="Let me check.")
    tts = realtime_tts()
    h = await open_call(
        stt=ScriptedSTT(["when do you open"]),
        tts=tts,
        on_message=lambda m: f"{REPLY} We also open on holidays.",
        guardrails=[guard],
    )
    await h.feed(SPEECH)
    await h.silence(6.0)
    assert tts.texts == [SENTENCES[0], SENTENCES[1], "Let me check."]
    assert agent_said(h) == [f"{SENTENCES[0]} {SENTENCES[1]} Let me check."]
    assert [e["name"] for e in h.session.events if e["kind"] == "guardrail"] == [guard.name]
    await h.close()

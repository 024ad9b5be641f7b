"""The pipeline engine on the virtual clock: turns, streaming, tools, guardrails, barge-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from getpatter.agent import Guardrail, Tool
from getpatter.core.pipeline import PipelineOptions
from getpatter.testing.clock import run_virtual
from getpatter.testing.providers import ScriptedLLM, ScriptedSTT, ScriptedTTS, ToolCallScript

from helpers import speech
from pipeline_harness import Harness, open_call

SPEECH = speech("hello.wav", lead=0.2, tail=0.0)


def virtual(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def test() -> None:
        run_virtual(fn())

    test.__name__ = fn.__name__
    return test


def speech_onset(samples: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 1000)
    return float(loud[0]) / 8000


async def settle(h: Harness, seconds: float = 3.0) -> None:
    await h.silence(seconds)


@virtual
async def test_a_turn_from_speech_to_agent_audio() -> None:
    h = await open_call(
        stt=ScriptedSTT(["what are your hours"]),
        on_message=lambda msg: f"We are open nine to five, {msg['caller']}.",
    )
    await h.feed(SPEECH)
    speech_end = h.t
    await settle(h)
    media = h.carrier.times("media")
    assert media and media[0] >= 1000 + speech_end  # the agent waited for the caller
    turn = next(e for e in h.session.events if e["kind"] == "turn")
    assert turn["final_to_first_audio"] < 0.005  # zero-latency providers: nothing added
    # VAD end-silence (600 ms) is most of the caller-stop → agent-audio delay.
    assert turn["speech_end_to_first_audio"] < 0.05
    assert [(t["role"], t["text"]) for t in h.transcripts] == [
        ("user", "what are your hours"),
        ("assistant", "We are open nine to five, +15557654321."),
    ]
    # the first clause goes to TTS on its own, so the first words start early
    assert h.tts.texts == ["We are open nine to five,", "+15557654321."]
    await h.close()


@virtual
async def test_streaming_on_message_speaks_before_the_generator_ends() -> None:
    async def on_message(msg: dict[str, Any]) -> AsyncIterator[str]:
        yield "Let me look that up for you. "
        await asyncio.sleep(2.0)
        yield "It is on the second floor."

    h = await open_call(stt=ScriptedSTT(["where is the office"]), on_message=on_message)
    await h.feed(SPEECH)
    t_end = asyncio.get_running_loop().time()
    await settle(h, 4.0)
    media = h.carrier.times("media")
    # the first sentence is heard long before the generator finishes (it sleeps 2 s);
    # what delay there is comes from the VAD's end-of-speech silence
    assert media[0] - t_end < 0.7
    assert h.tts.texts == ["Let me look that up for you.", "It is on the second floor."]
    assert h.transcripts[-1]["text"] == "Let me look that up for you. It is on the second floor."
    await h.close()


@virtual
async def test_tool_loop_with_an_llm() -> None:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def schedule(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        seen.append((args, ctx))
        return {"confirmation": "ACME-123"}

    tool = Tool(
        name="schedule_appointment",
        description="Book it.",
        parameters={
            "type": "object",
            "properties": {"date": {"type": "string"}},
            "required": ["date"],
        },
        handler=schedule,
    )
    llm = ScriptedLLM(
        [ToolCallScript("schedule_appointment", {"date": "2026-12-01"}), "Booked: ACME-123."]
    )
    h = await open_call(
        stt=ScriptedSTT(["book me for december first"]),
        llm=llm,
        tools=[tool],
        system_prompt="You book things for {company}.",
        variables={"company": "Acme"},
    )
    await h.feed(SPEECH)
    await settle(h)
    assert seen and seen[0][0] == {"date": "2026-12-01"}
    assert seen[0][1]["call_id"] == h.session.call_id
    assert llm.requests[0][0] == {"role": "system", "content": "You book things for Acme."}
    second = llm.requests[1]
    assert second[-1]["role"] == "tool" and "ACME-123" in second[-1]["content"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "schedule_appointment"
    names = {t["name"] for t in llm.tools_seen[0]}
    assert {"schedule_appointment", "end_call", "transfer_call"} <= names
    assert h.tts.texts == ["Booked: ACME-123."]
    await h.close()


@virtual
async def test_guardrail_replaces_the_sentence_and_stops_the_reply() -> None:
    guard = Guardrail(
        name="No legal advice",
        blocked_terms=["sue", "lawsuit"],
        replacement="I can't give legal advice.",
    )
    llm = ScriptedLLM(["You should sue them right away. Then call me back. Bye."])
    h = await open_call(stt=ScriptedSTT(["can I sue"]), llm=llm, guardrails=[guard])
    await h.feed(SPEECH)
    await settle(h)
    assert h.tts.texts == ["I can't give legal advice."]
    assert h.transcripts[-1]["text"] == "I can't give legal advice."
    assert any(e["kind"] == "guardrail" for e in h.session.events)
    await h.close()


@pytest.mark.parametrize("with_on_message", [False, True])
def test_first_message_is_spoken(with_on_message: bool) -> None:
    async def main() -> None:
        kwargs: dict[str, Any] = {"first_message": "Thanks for calling Acme!"}
        if with_on_message:
            kwargs["on_message"] = lambda msg: "ok"
        else:
            kwargs["llm"] = ScriptedLLM(["ok"])
        h = await open_call(**kwargs)
        await h.silence(2.0)
        assert h.tts.texts == ["Thanks for calling Acme!"]
        assert h.carrier.times("media")[0] - 1000 < 0.01
        assert h.transcripts == [
            {"call_id": h.session.call_id, "role": "assistant", "text": "Thanks for calling Acme!"}
        ]
        await h.close()

    run_virtual(main())


@virtual
async def test_barge_in_clears_fast_sends_nothing_stale_and_cuts_history() -> None:
    greeting = "Welcome to Acme. " + "We have many departments and services to tell you about. " * 3
    h = await open_call(
        stt=ScriptedSTT(["stop please"]),
        on_message=lambda msg: "Okay, stopping.",
        first_message=greeting,
    )
    await h.silence(1.0)
    onset_audio_t = h.t + speech_onset(SPEECH)
    await h.feed(SPEECH)
    clears = h.carrier.times("clear")
    assert len(clears) == 1
    # barge-in latency: caller's speech onset (audio) → clear at the carrier
    latency = clears[0] - (1000 + onset_audio_t)
    assert 0 < latency <= 0.15
    await settle(h)
    # no agent frame between the clear and the reply to the caller's new turn
    reply_frames = [t for t in h.carrier.times("media") if t > clears[0]]
    assert reply_frames and reply_frames[0] - clears[0] > 0.5
    cut = next(t for t in h.transcripts if t.get("interrupted"))
    assert cut["role"] == "assistant"
    heard_words = len(cut["text"].split())
    assert 0 < heard_words < len(greeting.split())
    assert greeting.startswith(cut["text"][:10])
    history = h.engine_call.history
    assert history[0] == {"role": "assistant", "content": cut["text"]}
    assert history[1]["role"] == "user" and history[2]["content"] == "Okay, stopping."
    await h.close()


@virtual
async def test_barge_in_can_be_switched_off() -> None:
    h = await open_call(
        stt=ScriptedSTT(["hello"]),
        on_message=lambda msg: "hi",
        first_message="This is a long announcement that must be heard in full by every caller.",
        options=PipelineOptions(barge_in=False),
    )
    await h.silence(0.5)
    await h.feed(SPEECH)
    await settle(h)
    assert not h.carrier.times("clear")
    await h.close()


@virtual
async def test_slow_llm_gets_an_apology_and_the_call_survives() -> None:
    llm = ScriptedLLM(["too late"], first_token_delay=30.0)
    h = await open_call(
        stt=ScriptedSTT(["hello", "again"]),
        llm=llm,
        options=PipelineOptions(first_token_timeout=2.0),
    )
    await h.feed(SPEECH)
    await settle(h, 4.0)
    assert h.tts.texts == [PipelineOptions().apology]
    assert h.session.state == "live"
    await h.close()


@virtual
async def test_failing_tts_gets_an_apology() -> None:
    tts = ScriptedTTS(fail_with=RuntimeError("tts down"), fail_first=2)
    h = await open_call(stt=ScriptedSTT(["hi"]), tts=tts, on_message=lambda m: "Hello there.")
    await h.feed(SPEECH)
    await settle(h)
    # the sentence is tried twice (one retry), then the caller hears the apology
    assert tts.texts == ["Hello there.", "Hello there.", PipelineOptions().apology]
    assert [t["text"] for t in h.transcripts if t["role"] == "assistant"] == [
        PipelineOptions().apology
    ]
    assert h.carrier.times("media")
    assert h.session.state == "live"
    await h.close()


@virtual
async def test_failing_on_message_gets_an_apology() -> None:
    def on_message(msg: dict[str, Any]) -> str:
        raise ValueError("bug in user code")

    h = await open_call(stt=ScriptedSTT(["hi"]), on_message=on_message)
    await h.feed(SPEECH)
    await settle(h)
    assert h.tts.texts == [PipelineOptions().apology]
    await h.close()


@virtual
async def test_dtmf_is_a_turn() -> None:
    got: list[dict[str, Any]] = []

    def on_message(msg: dict[str, Any]) -> str:
        got.append(msg)
        return "You pressed a key."

    h = await open_call(on_message=on_message)
    await h.session.on_dtmf("5")
    await h.silence(2.0)
    assert got[0]["dtmf"] == "5" and "5" in got[0]["text"]
    assert h.tts.texts == ["You pressed a key."]
    await h.close()


@virtual
async def test_end_call_tool_hangs_up_after_the_goodbye() -> None:
    llm = ScriptedLLM([ToolCallScript("end_call", {}), "Goodbye!"])
    h = await open_call(stt=ScriptedSTT(["bye"]), llm=llm)
    await h.feed(SPEECH)
    await settle(h)
    assert h.tts.texts == ["Goodbye!"]
    assert h.control.hangups == [h.session.call_id]
    last_media = h.carrier.times("media")[-1]
    assert last_media < asyncio.get_running_loop().time()
    await h.close()


class _TalkThenTool:
    """A model that speaks, calls a tool in the same turn, then answers in the next round."""

    def __init__(self) -> None:
        self.rounds = 0

    async def chat(self, messages: Any, tools: Any = ()) -> AsyncIterator[Any]:
        from getpatter.core.providers import TextDelta, ToolCallRequest

        self.rounds += 1
        if self.rounds == 1:
            yield TextDelta("Let me check.")
            yield ToolCallRequest("call_1", "lookup", "{}")
        else:
            yield TextDelta("We open at nine.")


@virtual
async def test_text_of_separate_tool_rounds_keeps_its_words_apart() -> None:
    async def lookup(args: dict[str, Any], ctx: dict[str, Any]) -> str:
        return "9am"

    tool = Tool(name="lookup", description="Look up.", handler=lookup)
    h = await open_call(stt=ScriptedSTT(["hours?"]), llm=_TalkThenTool(), tools=[tool])  # type: ignore[arg-type]
    await h.feed(SPEECH)
    await settle(h)
    assert h.tts.texts == ["Let me check.", "We open at nine."]
    assert h.transcripts[-1]["text"] == "Let me check. We open at nine."
    await h.close()


@virtual
async def test_a_burst_of_buffered_frames_barges_in_once() -> None:
    from getpatter.core.audio import ulaw_encode
    from getpatter.core.media import InboundAudio

    h = await open_call(
        stt=ScriptedSTT(["stop"]),
        on_message=lambda msg: "ok",
        first_message="A long announcement that keeps going for quite a while, on and on.",
    )
    await h.silence(0.5)
    voiced = SPEECH[int(0.2 * 8000) + 2000 :]
    for i in range(0, 20 * 160, 160):  # 400 ms of speech arriving in one network burst
        h.session.push_audio(InboundAudio(ulaw_encode(voiced[i : i + 160]), h.t))
        h.t += 0.02
    await h.silence(2.0)
    assert len(h.carrier.times("clear")) == 1
    assert len([t for t in h.transcripts if t.get("interrupted")]) == 1
    await h.close()

"""The turn bench: the whole pipeline, over a call through the simulated phone network.

Each run is one call (`getpatter.testing.simulator`): a real `Patter.serve()` on 127.0.0.1, a
fake Twilio that places the call and plays the caller's turns — the corpus's utterances — at
real time in μ-law, and the agent built from the chosen providers. Without an LLM the agent's
brain is an `on_message` that answers every turn with one short sentence (so the figure is
STT + TTS + the pipeline); with one, the agent has the receptionist prompt and tool.

Per turn: caller stops (the last voiced sample leaves the phone) → the agent's first audio
reaches the phone. It includes the VAD's end-of-speech wait, as every real turn does. When
the call's record has the pipeline's turn events, the figure is split at the final
transcript: caller stops → final, and final → first audio at the phone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from getpatter.bench._jobs import run_jobs
from getpatter.bench.corpus import RECEPTIONIST_PROMPT, TOOLS, Utterance
from getpatter.bench.results import Result
from getpatter.bench.stt import vad_end_silence

__all__ = ["GREETING", "REPLY", "bench_turn"]

log = logging.getLogger(__name__)

GREETING = "Acme Dental, hello."
REPLY = "Sure, one moment please."
_PHONE = "+15550001234"


async def _book(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    return {"confirmation": "ACME-123", **args}


def _app(stt: Any, tts: Any, llm: Any | None) -> tuple[Any, Any, dict[str, Any]]:
    from getpatter import Patter, Tool, Twilio

    phone = Patter(
        carrier=Twilio(account_sid="AC" + "0" * 32, auth_token="simulated"),
        phone_number=_PHONE,
        webhook_url="localhost",  # the simulator points the carrier at its own network
        persist=False,
    )
    serve_kwargs: dict[str, Any] = {"dashboard": False}
    if llm is None:

        async def on_message(message: dict[str, Any]) -> str:
            return REPLY

        serve_kwargs["on_message"] = on_message
        agent = phone.agent(stt=stt, tts=tts, first_message=GREETING)
    else:
        tools = [
            Tool(
                name=str(t["name"]),
                description=str(t.get("description", "")),
                parameters=t.get("parameters"),  # type: ignore[arg-type]
                handler=_book,
            )
            for t in TOOLS
        ]
        agent = phone.agent(
            stt=stt,
            tts=tts,
            llm=llm,
            system_prompt=RECEPTIONIST_PROMPT,
            first_message=GREETING,
            tools=tools,
        )
    return phone, agent, serve_kwargs


def _turn_events(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in record.get("events", ()) if e.get("kind") == "turn" and "final_at" in e]


async def bench_turn(
    stt: Any,
    tts: Any,
    llm: Any | None,
    corpus: Sequence[Utterance],
    *,
    label: str = "",
    runs: int = 1,
    concurrency: int = 1,
    warmup: int = 1,
    max_wait: float = 20.0,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Bench a pipeline: `runs` simulated calls, each with the corpus's utterances as the
    caller's turns. `warmup` extra turns (the first utterance) open the first call and are
    not counted."""
    from getpatter.testing import simulator as sim

    if not corpus:
        raise ValueError("bench_turn needs at least one utterance")
    result = Result("turn", label or "pipeline")
    brain = "the LLM" if llm is not None else f"on_message answering {REPLY!r}"
    result.notes.append(
        f"one simulated call per run through the fake Twilio network; {len(corpus)} caller "
        f"turns per call, answered by {brain}"
    )
    result.info.update(turns=[u.text for u in corpus], transcripts=[])

    async def one_call(run: int) -> None:
        skip = warmup if run == 1 else 0
        items = [corpus[0]] * skip + list(corpus)
        turns = [sim.CallerTurn(text=u.text, audio=u.audio) for u in items]
        try:
            phone, agent, serve_kwargs = _app(stt, tts, llm)
            simulation = await sim.simulate(
                phone,
                agent,
                turns,
                serve_kwargs=serve_kwargs,
                printer=None,
                turn_timeout=max_wait,
            )
        except Exception as exc:
            result.error(f"call {run}: the simulated call failed: {exc!r}")
            if progress is not None:
                progress(len(corpus))
            return
        events = _turn_events(simulation.record)
        result.info["transcripts"].append(
            {"run": run, "transcript": [dict(e) for e in simulation.transcript]}
        )
        measured = simulation.turns[skip:]
        following = [t.speech_end for t in simulation.turns[skip + 1 :]] + [float("inf")]
        for utterance, turn, next_start in zip(corpus, measured, following, strict=False):
            if progress is not None:
                progress(1)
            if turn.latency is None or turn.first_reply_audio is None:
                result.error(f"call {run} {utterance.name}: no agent audio after the turn")
                continue
            result.add("turn_ms", turn.latency * 1000, run, utterance.name)
            final = next((e for e in events if turn.speech_end <= e["final_at"] < next_start), None)
            if final is not None and final["final_at"] <= turn.first_reply_audio:
                stt_ms = (final["final_at"] - turn.speech_end) * 1000
                reply_ms = (turn.first_reply_audio - final["final_at"]) * 1000
                result.add("turn_stt_ms", stt_ms, run, utterance.name)
                result.add("turn_reply_ms", reply_ms, run, utterance.name)
        missing = len(corpus) - len(measured)
        if missing > 0:
            result.error(f"call {run}: {missing} caller turns were not played")
            if progress is not None:
                progress(missing)

    result.info["vad_end_silence_ms"] = round(vad_end_silence() * 1000)
    await run_jobs(runs, concurrency, one_call)
    return result

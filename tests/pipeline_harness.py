"""A pipeline call wired to an in-memory carrier, for exact tests on the virtual clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from getpatter.agent import Agent
from getpatter.core.audio import ulaw_encode
from getpatter.core.media import InboundAudio
from getpatter.core.observe import CallObserver
from getpatter.core.pipeline import PipelineCall, PipelineEngine, PipelineOptions
from getpatter.core.playout import Playout, PlayoutScheduler
from getpatter.core.session import CallCallbacks, CallInfo, CallSession
from getpatter.core.vad import resolve_vad
from getpatter.testing.providers import ScriptedLLM, ScriptedSTT, ScriptedTTS


class Encoder:
    def media(self, payload: bytes) -> str:
        return json.dumps({"event": "media", "n": len(payload)})

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "name": name})

    def clear(self) -> str:
        return json.dumps({"event": "clear"})


class Carrier:
    """Plays what it gets at real time, echoes marks when played, honours clear."""

    def __init__(self) -> None:
        self.log: list[tuple[float, dict[str, Any]]] = []
        self.playout: Playout | None = None
        self.buffer_end = 0.0
        self.pending: list[asyncio.TimerHandle] = []

    def writable(self) -> bool:
        return True

    async def send(self, message: str) -> None:
        loop = asyncio.get_running_loop()
        now, msg = loop.time(), json.loads(message)
        self.log.append((now, msg))
        if msg["event"] == "media":
            self.buffer_end = max(self.buffer_end, now) + msg["n"] / 8000
        elif msg["event"] == "mark":
            at = max(now, self.buffer_end)
            self.pending.append(loop.call_at(at, self._echo, msg["name"]))
        elif msg["event"] == "clear":
            self.buffer_end = now
            for handle in self.pending:
                handle.cancel()

    def _echo(self, name: str) -> None:
        if self.playout is not None:
            self.playout.on_mark(name)

    def times(self, event: str) -> list[float]:
        return [t for t, m in self.log if m["event"] == event]


@dataclass
class Control:
    hangups: list[str] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)

    async def hangup(self, call: CallSession) -> None:
        self.hangups.append(call.call_id)

    async def transfer(self, call: CallSession, to: str) -> None:
        self.transfers.append(to)

    async def start_recording(self, call: CallSession) -> None:
        return None


@dataclass
class Harness:
    session: CallSession
    engine_call: PipelineCall
    carrier: Carrier
    control: Control
    stt: ScriptedSTT
    tts: ScriptedTTS
    llm: ScriptedLLM | None
    transcripts: list[dict[str, Any]]
    scheduler: PlayoutScheduler
    t: float = 0.0  # audio time of the next caller frame

    async def feed(self, samples: np.ndarray) -> None:
        """Caller audio at real time (virtual clock), 20 ms frames."""
        for i in range(0, len(samples) - 159, 160):
            self.session.push_audio(InboundAudio(ulaw_encode(samples[i : i + 160]), self.t))
            self.t += 0.02
            await asyncio.sleep(0.02)

    async def silence(self, seconds: float) -> None:
        await self.feed(np.zeros(int(seconds * 8000), np.int16))

    async def close(self) -> None:
        await self.session.end("test_done")
        await self.scheduler.aclose()


async def open_call(
    *,
    stt: ScriptedSTT | None = None,
    tts: ScriptedTTS | None = None,
    llm: ScriptedLLM | None = None,
    on_message: Any = None,
    options: PipelineOptions | None = None,
    observers: Sequence[CallObserver] = (),
    **agent_kwargs: Any,
) -> Harness:
    stt = stt or ScriptedSTT()
    tts = tts or ScriptedTTS()
    agent = Agent(**agent_kwargs)
    vad = resolve_vad(agent.vad, options.vad if options is not None else None)  # as for_agent
    engine = PipelineEngine(stt, tts, llm, options, vad)
    transcripts: list[dict[str, Any]] = []
    scheduler = PlayoutScheduler()
    control = Control()
    session = CallSession(
        CallInfo("CA" + "0" * 32, "+15557654321", "+15550001234", "inbound"),
        agent,
        callbacks=CallCallbacks(on_message=on_message, on_transcript=transcripts.append),
        control=control,
        scheduler=scheduler,
        observers=observers,
    )
    carrier = Carrier()
    engine_call = engine.open(session)
    await session.attach_media("MZ" + "0" * 32, Encoder(), carrier, engine_call)
    carrier.playout = session.playout
    return Harness(session, engine_call, carrier, control, stt, tts, llm, transcripts, scheduler)

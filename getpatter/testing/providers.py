"""Scripted in-process STT, LLM and TTS that implement the provider protocols.

For pipeline tests and benchmarks: no sockets, deterministic, with knobs for latency and
failure. The wire-level fakes of real providers live beside this module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from getpatter.core.audio import ulaw_encode
from getpatter.core.providers import (
    AudioEncoding,
    LLMEvent,
    TextDelta,
    ToolCallRequest,
    Transcript,
    Usage,
)
from getpatter.testing.engines import speech_tone

# --- STT -----------------------------------------------------------------------------------


@dataclass
class ScriptedSTT:
    """Recognises the i-th utterance (the audio between two `finalize()`s) as `transcripts[i]`."""

    transcripts: Sequence[str] = ("hello",)
    sample_rate: int = 8000
    encoding: AudioEncoding = "mulaw"
    latency: float = 0.0  # seconds from finalize() to the final transcript
    interim: bool = True
    streams: list[ScriptedSTTStream] = field(default_factory=list)

    async def open(self, *, language: str = "en") -> ScriptedSTTStream:
        stream = ScriptedSTTStream(self)
        self.streams.append(stream)
        return stream


class ScriptedSTTStream:
    def __init__(self, stt: ScriptedSTT) -> None:
        self.stt = stt
        self.bytes_received = 0
        self.utterances = 0
        self._since_final = 0
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self.closed = False

    def _text(self) -> str:
        script = self.stt.transcripts
        return script[min(self.utterances, len(script) - 1)] if script else ""

    async def send(self, audio: bytes) -> None:
        self.bytes_received += len(audio)
        self._since_final += len(audio)
        if (
            self.stt.interim
            and self._since_final // 1600 != (self._since_final - len(audio)) // 1600
        ):
            words = self._text().split()
            self._queue.put_nowait(Transcript(" ".join(words[: len(words) // 2]), False))

    async def finalize(self) -> None:
        if not self._since_final:
            return
        self._since_final = 0
        text = self._text()
        self.utterances += 1

        async def deliver() -> None:
            if self.stt.latency:
                await asyncio.sleep(self.stt.latency)
            self._queue.put_nowait(Transcript(text, True, True))

        asyncio.get_running_loop().create_task(deliver())

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def aclose(self) -> None:
        self.closed = True
        self._queue.put_nowait(None)


# --- LLM -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCallScript:
    """A scripted model turn that calls a tool instead of answering."""

    name: str
    arguments: dict[str, Any]
    id: str = "call_1"


@dataclass
class ScriptedLLM:
    """Answers the i-th request with `replies[i]`: text (streamed word by word) or tool calls."""

    replies: Sequence[str | ToolCallScript | Sequence[ToolCallScript]] = ("Hello!",)
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    fail_with: BaseException | None = None
    requests: list[list[dict[str, Any]]] = field(default_factory=list)
    tools_seen: list[list[dict[str, Any]]] = field(default_factory=list)
    cancelled: int = 0

    async def chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[LLMEvent]:
        index = len(self.requests)
        self.requests.append([dict(m) for m in messages])
        self.tools_seen.append(list(tools))
        try:
            if self.first_token_delay:
                await asyncio.sleep(self.first_token_delay)
            if self.fail_with is not None:
                raise self.fail_with
            reply = self.replies[min(index, len(self.replies) - 1)] if self.replies else ""
            if isinstance(reply, str):
                for i, word in enumerate(reply.split(" ")):
                    if i and self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    yield TextDelta(word if i == 0 else " " + word)
            else:
                calls = [reply] if isinstance(reply, ToolCallScript) else list(reply)
                for call in calls:
                    yield ToolCallRequest(call.id, call.name, json.dumps(call.arguments))
            yield Usage(input_tokens=sum(len(str(m.get("content", ""))) for m in messages) // 4)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except GeneratorExit:
            self.cancelled += 1
            raise


# --- TTS -----------------------------------------------------------------------------------


@dataclass
class ScriptedTTS:
    """Speaks any text as a tone as long as the text would take to say.

    Each synthesis is independent (several may run at once, as over HTTP) unless `serial`:
    then one at a time in the order asked, as on one socket, so a sentence asked for while
    another streams starts its audio once that one's has all gone out (its `first_byte_delay`
    counted from when it was asked for)."""

    sample_rate: int = 8000
    encoding: AudioEncoding = "mulaw"
    first_byte_delay: float = 0.0
    chunk_ms: int = 100
    audio_speed: float = 0.0  # × real time; 0: every chunk at once
    serial: bool = False
    fail_with: BaseException | None = None
    fail_first: int = 0  # with fail_with: only the first N syntheses fail
    stall: Sequence[int] = ()  # these syntheses (1-based) take the text and never answer
    empty: Sequence[int] = ()  # these syntheses end at once with no audio
    #: synthesis (1-based) → chunks it sends before going silent, its stream left open
    stall_mid: Mapping[int, int] = field(default_factory=dict)
    #: synthesis (1-based) → (chunks, seconds): after that many chunks it pauses that long
    pause: Mapping[int, tuple[int, float]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    asked_at: list[float] = field(default_factory=list)  # loop time of each synthesize()
    first_audio_at: dict[int, float] = field(default_factory=dict)  # synthesis → first chunk
    streams: int = 0
    cancelled: int = 0
    cancelled_texts: list[str] = field(default_factory=list)

    async def open(self) -> ScriptedTTSStream:
        self.streams += 1
        return ScriptedTTSStream(self)


class ScriptedTTSStream:
    def __init__(self, tts: ScriptedTTS) -> None:
        self.tts = tts
        self.closed = False
        self._turn = asyncio.Lock()  # with `serial`: one synthesis at a time

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        tts = self.tts
        tts.texts.append(text)
        tts.asked_at.append(asyncio.get_running_loop().time())
        n = len(tts.texts)
        try:
            if tts.serial:
                await self._turn.acquire()
            try:
                async for chunk in self._generate(n, text):
                    yield chunk
            finally:
                if tts.serial:
                    self._turn.release()
        except (asyncio.CancelledError, GeneratorExit):
            tts.cancelled += 1
            tts.cancelled_texts.append(text)
            raise

    async def _generate(self, n: int, text: str) -> AsyncIterator[bytes]:
        tts = self.tts
        if n in tts.stall:
            await asyncio.Event().wait()  # accepted, then silence: a stalled provider
        if n in tts.empty:
            return
        if tts.first_byte_delay:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, tts.asked_at[n - 1] + tts.first_byte_delay - loop.time()))
        if tts.fail_with is not None and (not tts.fail_first or n <= tts.fail_first):
            raise tts.fail_with
        tone = speech_tone(text, tts.sample_rate)
        step = tts.sample_rate * tts.chunk_ms // 1000
        for k, i in enumerate(range(0, len(tone), step)):
            if n in tts.stall_mid and k >= tts.stall_mid[n]:
                await asyncio.Event().wait()  # mid-sentence: no more audio, no end
            if n in tts.pause and k == tts.pause[n][0]:
                await asyncio.sleep(tts.pause[n][1])
            piece = tone[i : i + step]
            tts.first_audio_at.setdefault(n, asyncio.get_running_loop().time())
            yield ulaw_encode(piece) if tts.encoding == "mulaw" else piece.tobytes()
            if tts.audio_speed:
                await asyncio.sleep(len(piece) / tts.sample_rate / tts.audio_speed)
            else:
                await asyncio.sleep(0)

    async def aclose(self) -> None:
        self.closed = True

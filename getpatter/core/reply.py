"""One agent reply in the pipeline: text source → sentences → guardrails → TTS → playout.

A reply knows how much audio each sentence became, so when the caller barges in it can say
exactly which words were heard. Once cancelled it never calls `play()` again, which is what
guarantees that no audio of an interrupted turn reaches the caller after the clear.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from getpatter.core.audio import AudioFrame
from getpatter.core.chunker import ChunkerOptions, SentenceChunker
from getpatter.core.guardrails import screen
from getpatter.core.providers import TTSStream

if TYPE_CHECKING:
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)


class ReplyTimeout(Exception):
    """A provider took longer than its first-token / first-byte budget."""


@dataclass(slots=True)
class _Spoken:
    text: str
    seconds: float = 0.0


@dataclass
class Reply:
    """One turn of agent speech: `speak_stream()` speaks text as it streams in; setting
    `cancelled` (the pipeline does, on barge-in) stops it at the next chunk."""

    call: CallSession
    tts: TTSStream
    tts_rate: int
    tts_encoding: str
    label: str
    chunker: ChunkerOptions = field(default_factory=ChunkerOptions)
    first_byte_timeout: float = 6.0
    cancelled: bool = False
    blocked_by: str = ""
    first_audio_at: float | None = None
    # for the turn's metrics (loop times): reply text first / last, TTS time to first byte
    text_first_at: float | None = None
    text_done_at: float | None = None
    tts_ttfb: float | None = None
    turn: dict[str, Any] | None = None  # the caller's turn this reply answers (None: greeting)
    turn_done: bool = False
    spoken: list[_Spoken] = field(default_factory=list)
    _begun: bool = False
    _carry: bytes = b""

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.spoken)

    @property
    def audio_seconds(self) -> float:
        return sum(s.seconds for s in self.spoken)

    async def speak_stream(self, pieces: AsyncIterator[str], first_token_timeout: float) -> None:
        """Speak text pieces as they stream in, a sentence (or fast first clause) at a time."""
        chunker = SentenceChunker(self.chunker)
        iterator = pieces.__aiter__()
        first = True
        try:
            while True:
                try:
                    if first:
                        async with asyncio.timeout(first_token_timeout):  # no extra task
                            piece = await anext(iterator)
                    else:
                        piece = await anext(iterator)
                except StopAsyncIteration:
                    self.text_done_at = asyncio.get_running_loop().time()
                    break
                except TimeoutError:
                    raise ReplyTimeout("no reply text in time") from None
                if first:
                    self.text_first_at = asyncio.get_running_loop().time()
                first = False
                for sentence in chunker.push(piece):
                    if not await self.speak(sentence):
                        return
            for sentence in chunker.flush():
                if not await self.speak(sentence):
                    return
        finally:
            await _close(iterator)

    async def speak(self, sentence: str) -> bool:
        """Synthesize and queue one sentence; False when the reply must stop (cancel, guardrail)."""
        if self.cancelled:
            return False
        text, guardrail = screen(sentence, self.call.agent.guardrails)
        if guardrail is not None:
            log.info("call %s: guardrail %r replaced a sentence", self.call.call_id, guardrail.name)
            self.call.event("guardrail", name=guardrail.name)
            self.blocked_by = guardrail.name
        spoken = _Spoken(text)
        self.spoken.append(spoken)
        self.call.metrics.add_tts_chars(len(text))
        asked_at = asyncio.get_running_loop().time()
        stream = self.tts.synthesize(text).__aiter__()
        try:
            first = True
            while True:
                try:
                    if first:
                        async with asyncio.timeout(self.first_byte_timeout):
                            chunk = await anext(stream)
                    else:
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise ReplyTimeout("no speech audio in time") from None
                if first and self.tts_ttfb is None:
                    self.tts_ttfb = asyncio.get_running_loop().time() - asked_at
                first = False
                if self.cancelled:
                    return False
                spoken.seconds += self._play(chunk)
        finally:
            await _close(stream)
        return guardrail is None and not self.cancelled

    def _play(self, chunk: bytes) -> float:
        if not chunk:
            return 0.0
        if not self._begun:
            self._begun = True
            self.first_audio_at = asyncio.get_running_loop().time()
            self.call.begin_utterance(self.label)
        if self.tts_encoding == "mulaw" and self.tts_rate == 8000:
            self.call.play(chunk)
            return len(chunk) / 8000
        if self.tts_encoding == "mulaw":
            from getpatter.core.audio import ulaw_decode

            samples = ulaw_decode(chunk)
        else:
            data = self._carry + chunk
            usable = len(data) - len(data) % 2
            self._carry = data[usable:]
            samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
        self.call.play(AudioFrame(samples, self.tts_rate))
        return len(samples) / self.tts_rate

    def finish(self) -> asyncio.Future[bool]:
        """No more audio: the future resolves once the caller has heard it all (False if cut)."""
        if not self._begun:
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            fut.set_result(True)
            return fut
        return self.call.end_utterance(self.label)

    def heard_text(self) -> str:
        """The words the caller actually heard, from playout's heard position."""
        heard = self.call.heard_seconds(self.label) if self._begun else 0.0
        words: list[str] = []
        for spoken in self.spoken:
            if heard <= 0:
                break
            if spoken.seconds <= heard + 1e-6:
                words.extend(spoken.text.split())
            else:
                parts = spoken.text.split()
                words.extend(parts[: int(len(parts) * heard / max(spoken.seconds, 1e-6))])
            heard -= spoken.seconds
        return " ".join(words)


async def _close(iterator: AsyncIterator[Any]) -> None:
    """Close a provider stream early (cancels its request); tolerate one already finishing."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except RuntimeError:  # still running in a cancelled wait_for: it is being torn down
            pass


async def text_pieces(result: Any) -> AsyncIterator[str]:
    """What `on_message` returned, as text pieces: a str, an (async) iterable of str, or None."""
    if inspect.isawaitable(result):
        result = await result
    if result is None:
        return
    if isinstance(result, str):
        if result:
            yield result
        return
    if hasattr(result, "__aiter__"):
        async for piece in result:
            if piece:
                yield str(piece)
        return
    if isinstance(result, Iterable):
        for piece in result:
            if piece:
                yield str(piece)
        return
    yield str(result)


async def call_user(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a user function: coroutine functions and async generators directly, plain functions
    in a thread so slow user code never blocks the event loop."""
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

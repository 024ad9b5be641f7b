"""One agent reply in the pipeline: text source → sentences → guardrails → TTS → playout.

A reply knows how much audio each sentence became, so when the caller barges in it can say
exactly which words were heard. Once cancelled it never calls `play()` again, which is what
guarantees that no audio of an interrupted turn reaches the caller after the clear.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
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
from getpatter.core.synthesis import close_stream, synthesize

if TYPE_CHECKING:
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)


class ReplyTimeout(Exception):
    """The reply's text source took longer than its first-token budget."""


_END: Any = object()  # the text source is exhausted


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
    first_audio_timeout: float = 1.5  # per sentence, then one retry (see core.synthesis)
    cancelled: bool = False
    blocked_by: str = ""
    first_audio_at: float | None = None
    # for the turn's metrics (loop times): reply text first / last, TTS time to first byte
    text_first_at: float | None = None
    text_done_at: float | None = None
    tts_ttfb: float | None = None
    tts_retries: int = 0  # sentences asked for again because the first try gave no audio
    turn: dict[str, Any] | None = None  # the caller's turn this reply answers (None: greeting)
    turn_done: bool = False
    spoken: list[_Spoken] = field(default_factory=list)
    _begun: bool = False
    _carry: bytes = b""

    @property
    def text(self) -> str:
        """What the reply said: its sentences that became audio."""
        return " ".join(s.text for s in self.spoken if s.seconds > 0)

    @property
    def audio_seconds(self) -> float:
        return sum(s.seconds for s in self.spoken)

    async def speak_stream(self, pieces: AsyncIterator[str], first_token_timeout: float) -> None:
        """Speak text pieces as they stream in, a sentence (or fast first clause) at a time.

        When the text stops at a sentence end, the chunker says how long to wait for more
        (`hold()`); if none comes in that time the sentence goes to the TTS while the source
        keeps working on its next piece (a generator looking something up)."""
        chunker = SentenceChunker(self.chunker)
        iterator = pieces.__aiter__()
        loop = asyncio.get_running_loop()
        ahead: asyncio.Task[Any] | None = None  # the next piece, asked for during a hold
        try:
            try:
                async with asyncio.timeout(first_token_timeout):  # no extra task
                    piece = await anext(iterator, _END)
            except TimeoutError:
                raise ReplyTimeout("no reply text in time") from None
            if piece is not _END:
                self.text_first_at = loop.time()
            while piece is not _END:
                for sentence in chunker.push(piece):
                    if not await self.speak(sentence):
                        return
                hold = chunker.hold()
                if hold is None:
                    piece = await anext(iterator, _END)
                    continue
                ahead = asyncio.ensure_future(anext(iterator, _END))
                done, _ = await asyncio.wait({ahead}, timeout=hold)
                if not done:  # no more text came promptly: that sentence end is a boundary
                    for sentence in chunker.boundary():
                        if not await self.speak(sentence):
                            return
                piece, ahead = await ahead, None
            self.text_done_at = loop.time()
            for sentence in chunker.flush():
                if not await self.speak(sentence):
                    return
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
                await asyncio.wait({ahead})
            await close_stream(iterator)

    async def speak(self, sentence: str) -> bool:
        """Synthesize and queue one sentence; False when the reply must stop (cancel, guardrail).

        A sentence the TTS gives no audio for is retried once (`core.synthesis`); one that
        never sounds stays out of `text`: the transcript holds only what was said."""
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
        loop = asyncio.get_running_loop()
        asked_at = loop.time()

        def retried(why: str) -> None:
            self.tts_retries += 1
            self.call.metrics.add_tts_chars(len(text))  # the retry is billed too
            self.call.event("tts_retry", reply=self.label, reason=why)

        audio = synthesize(
            self.tts, text, first_audio_timeout=self.first_audio_timeout, on_retry=retried
        )
        try:
            async for chunk in audio:
                if self.tts_ttfb is None:
                    self.tts_ttfb = loop.time() - asked_at
                if self.cancelled:
                    return False
                spoken.seconds += self._play(chunk)
        finally:
            await audio.aclose()
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
            if spoken.seconds <= 0:
                continue  # never sounded
            if spoken.seconds <= heard + 1e-6:
                words.extend(spoken.text.split())
            else:
                parts = spoken.text.split()
                words.extend(parts[: int(len(parts) * heard / max(spoken.seconds, 1e-6))])
            heard -= spoken.seconds
        return " ".join(words)


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
    # in the call's context: its log lines name the call and carry its trace id
    run = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(None, run)

"""One agent reply in the pipeline: text source → sentences → guardrails → TTS → playout.

Two tasks share a reply. The text source is read and cut into sentences by one (`_produce`),
which hands each sentence to the TTS as soon as it is ready, at most `lookahead` sentences
ahead of the one playing; the reply's own task plays them strictly in order (`_play_queued`).
So sentence N+1 is being synthesized while N streams, and its audio, buffered, follows N's
with no gap at the boundary.

A reply knows how much audio each sentence became, so when the caller barges in it can say
exactly which words were heard. Once cancelled it never calls `play()` again and cancels every
synthesis it started, which is what guarantees that no audio of an interrupted turn reaches
the caller after the clear.

A sentence whose audio stops mid-way (the socket open, no more audio, no end) is given up once
no audio has come for `audio_gap_timeout` seconds and the caller has heard all that did: its
words are cut to what was heard, and the next sentence plays (a reply with nothing after it
ends in `SpeechCutShort`, and the pipeline apologises).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from getpatter.core.audio import AudioFrame
from getpatter.core.chunker import ChunkerOptions, SentenceChunker
from getpatter.core.guardrails import screen
from getpatter.core.providers import TTSStream
from getpatter.core.synthesis import SentenceAudio, cancel_all, close_stream

if TYPE_CHECKING:
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)

#: Speaking rate assumed for a sentence cut short before any sentence of the reply was heard
#: whole (≈150 words a minute); after one, the reply's own rate is used.
CHARS_PER_SECOND = 15.0


class ReplyTimeout(Exception):
    """The reply's text source took longer than its first-token budget."""


class SpeechCutShort(Exception):
    """The TTS stopped mid-way through the reply's last sentence and nothing followed."""


_END: Any = object()  # the text source is exhausted


@dataclass(slots=True)
class _Spoken:
    text: str
    seconds: float = 0.0
    whole: bool = False  # all of its audio came


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
    lookahead: int = 1  # sentences synthesized ahead of the one playing (0: one at a time)
    audio_gap_timeout: float | None = 1.0  # mid-sentence: see the module doc (None: off)
    cancelled: bool = False
    blocked_by: str = ""
    first_audio_at: float | None = None
    # for the turn's metrics (loop times): reply text first / last, TTS time to first byte
    text_first_at: float | None = None
    text_done_at: float | None = None
    tts_ttfb: float | None = None
    tts_retries: int = 0  # sentences asked for again because the first try gave no audio
    tts_gaps: int = 0  # sentences given up mid-way because their audio stopped
    turn: dict[str, Any] | None = None  # the caller's turn this reply answers (None: greeting)
    turn_done: bool = False
    spoken: list[_Spoken] = field(default_factory=list)
    _begun: bool = False
    _carry: bytes = b""
    _queue: deque[SentenceAudio] = field(default_factory=deque)  # asked for; the head plays
    _queued: asyncio.Event = field(default_factory=asyncio.Event)  # wakes the player
    _room: asyncio.Event = field(default_factory=asyncio.Event)  # wakes the producer
    _cut_short: bool = False  # the last sentence played was given up mid-way

    @property
    def text(self) -> str:
        """What the reply said: its sentences that became audio (cut to what was heard of one
        given up mid-way)."""
        return " ".join(s.text for s in self.spoken if s.seconds > 0 and s.text)

    @property
    def audio_seconds(self) -> float:
        return sum(s.seconds for s in self.spoken)

    async def speak_stream(self, pieces: AsyncIterator[str], first_token_timeout: float) -> None:
        """Speak text pieces as they stream in, a sentence (or fast first clause) at a time.

        Returns once all of the reply's audio is queued to playout. Raises the text source's
        error (after playing what it said before it), `SpeechFailed`, or `SpeechCutShort`."""
        producer = asyncio.ensure_future(self._produce(pieces, first_token_timeout))
        producer.add_done_callback(lambda _: self._queued.set())
        try:
            await self._play_queued(producer)
        finally:
            if not producer.done():
                producer.cancel()
            await asyncio.wait({producer})
            if not producer.cancelled():
                producer.exception()  # retrieved: the player's error is the one that counts
            await self._drop_queue()
        if self._cut_short and not self.cancelled:
            raise SpeechCutShort("the TTS stopped mid-sentence and nothing followed")

    async def speak(self, text: str) -> bool:
        """Speak one text whole (the apology): returns once its audio is queued to playout;
        False when the reply must stop."""
        try:
            asked = await self._ask(text)
            await self._play_queued(None)
        finally:
            await self._drop_queue()
        return asked and not self.cancelled

    # --- the text: sentences, asked for ahead ----------------------------------------------

    async def _produce(self, pieces: AsyncIterator[str], first_token_timeout: float) -> None:
        """Read the text source, cut it into sentences and ask the TTS for each.

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
                    if not await self._ask(sentence):
                        return
                hold = chunker.hold()
                if hold is None:
                    piece = await anext(iterator, _END)
                    continue
                ahead = asyncio.ensure_future(anext(iterator, _END))
                done, _ = await asyncio.wait({ahead}, timeout=hold)
                if not done:  # no more text came promptly: that sentence end is a boundary
                    for sentence in chunker.boundary():
                        if not await self._ask(sentence):
                            return
                piece, ahead = await ahead, None
            self.text_done_at = loop.time()
            for sentence in chunker.flush():
                if not await self._ask(sentence):
                    return
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
                await asyncio.wait({ahead})
            await close_stream(iterator)

    async def _ask(self, sentence: str) -> bool:
        """Hand one sentence to the TTS once there is room ahead of playout; False when the
        reply must stop (cancelled, or a guardrail replaced this sentence). The guardrails
        screen it first: nothing they stop is ever sent to the TTS."""
        while len(self._queue) > self.lookahead and not self.cancelled:
            self._room.clear()
            await self._room.wait()
        if self.cancelled:
            return False
        text, guardrail = screen(sentence, self.call.agent.guardrails)
        if guardrail is not None:
            log.info("call %s: guardrail %r replaced a sentence", self.call.call_id, guardrail.name)
            self.call.event("guardrail", name=guardrail.name)
            self.blocked_by = guardrail.name
        self.call.metrics.add_tts_chars(len(text))

        def retried(why: str) -> None:
            self.tts_retries += 1
            self.call.metrics.add_tts_chars(len(text))  # the retry is billed too
            self.call.event("tts_retry", reply=self.label, reason=why)

        previous = self._queue[-1] if self._queue else None
        self._queue.append(
            SentenceAudio(
                self.tts,
                text,
                first_audio_timeout=self.first_audio_timeout,
                on_retry=retried,
                behind=previous,
                behind_timeout=self.audio_gap_timeout,
            )
        )
        self._queued.set()
        return guardrail is None

    # --- the audio: played in order ----------------------------------------------------------

    async def _play_queued(self, producer: asyncio.Future[None] | None) -> None:
        """Play the sentences asked for, in order, as their audio comes; until `producer` (the
        text) is done and all are played. A sentence that never sounds (`SpeechFailed`) stays
        out of `text`: the transcript holds only what was said."""
        while not self.cancelled:
            if self._queue:
                sentence = self._queue[0]
                try:
                    await self._play_sentence(sentence)
                except BaseException:
                    await self._drop_queue()  # every one still asked for, together
                    raise
                self._queue.popleft()
                self._room.set()
                await sentence.cancel()  # given up mid-way: close its request
                continue
            if producer is None or producer.done():
                if producer is not None:
                    producer.result()  # the text source's error, once what it said is played
                return
            self._queued.clear()
            await self._queued.wait()

    async def _play_sentence(self, sentence: SentenceAudio) -> None:
        spoken: _Spoken | None = None
        gap = self.audio_gap_timeout
        while True:
            deadline = None
            if gap is not None and sentence.last_chunk_at is not None and spoken is not None:
                # the TTS may pause while the caller still has audio to hear: only a pause
                # that outlasts both the gap and that audio gives the sentence up
                deadline = max(sentence.last_chunk_at + gap, self._drains_at())
            try:
                chunk = await sentence.next_chunk(deadline)
            except TimeoutError:
                self._give_up(sentence, spoken)
                return
            if self.cancelled:
                return
            if chunk is None:
                if spoken is not None:
                    spoken.whole = True
                return
            if spoken is None:
                spoken = _Spoken(sentence.text)
                self.spoken.append(spoken)
                self._cut_short = False
                if self.tts_ttfb is None and sentence.first_chunk_at is not None:
                    self.tts_ttfb = sentence.first_chunk_at - sentence.asked_at
            spoken.seconds += self._play(chunk)

    def _drains_at(self) -> float:
        """Loop time at which the caller will have heard all the audio queued so far."""
        playout = self.call.playout
        if playout is None:
            return asyncio.get_running_loop().time()
        return playout.drains_at()

    def _give_up(self, sentence: SentenceAudio, spoken: _Spoken | None) -> None:
        """The TTS stopped mid-sentence: keep the words the caller heard, go on without the
        rest (its request is closed once this returns)."""
        self.tts_gaps += 1
        self._cut_short = True
        heard = spoken.seconds if spoken is not None else 0.0
        if spoken is not None:
            spoken.text = self._words_in(spoken.text, heard)
        waited = asyncio.get_running_loop().time() - (sentence.last_chunk_at or sentence.asked_at)
        log.warning(
            "call %s: the TTS stopped mid-sentence (no audio for %.2f s after %.2f s of it); "
            "going on without the rest of that sentence",
            self.call.call_id,
            waited,
            heard,
        )
        self.call.event("tts_gap", reply=self.label, heard=round(heard, 3), waited=round(waited, 3))

    def _words_in(self, text: str, seconds: float) -> str:
        """The words of `text` said in its first `seconds`, at the reply's speaking rate."""
        whole = [s for s in self.spoken if s.whole and s.seconds > 0]
        rate = (
            sum(len(s.text) for s in whole) / sum(s.seconds for s in whole)
            if whole
            else CHARS_PER_SECOND
        )
        said, words = seconds * rate, []
        end = 0
        for word in text.split():
            end = text.index(word, end) + len(word)
            if end > said:
                break
            words.append(word)
        return " ".join(words)

    async def _drop_queue(self) -> None:
        """Cancel every synthesis still asked for (a barge-in, a failure, the end)."""
        dropped = list(self._queue)
        self._queue.clear()
        self._room.set()
        await cancel_all(dropped)

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

"""A deadline on the first audio of every sentence, whatever the TTS, and one retry.

A TTS request can be accepted and then answered with nothing: the socket stays open, no audio
comes, no error either (a stalled generation; a context the provider dropped). A provider's
own timeout is far too long for a phone call, and some providers have none. So every sentence
gets `first_audio_timeout` seconds from the moment its text is handed to the TTS; with no audio
by then (or an end of stream with no audio, or an error before any), that attempt is closed
and the sentence is asked for once more, through the plugin's second path when it offers one
(`TTSFallback.synthesize_fallback`: an HTTP endpoint, a fresh socket), else through
`synthesize()` again. If that gives nothing either, `SpeechFailed` ends the reply and the
pipeline apologises. Because the rule lives here, every TTS plugin gets it, present or future.

Sentences are synthesized ahead (`SentenceAudio`): sentence N+1 is asked for while N still
streams, so its audio is ready when N's has been queued to playout. A provider that serializes
(one socket, one context: Cartesia continuations, LMNT, Rime, espeak's one thread) only starts
N+1's audio after N's, so waiting behind N is not a stall: N+1's first attempt has until the
later of `first_audio_timeout` after its request and `behind_timeout` (the pipeline's
mid-sentence gap) after N's last audio. Such a provider goes straight on from N to N+1, so a
longer pause there is a stall like one inside a sentence. (When N ends early, given up mid-way
or cancelled, the provider may have to ask again for N+1: its time counts from then.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from getpatter.core.providers import TTSFallback, TTSStream

log = logging.getLogger(__name__)

_END = object()


class SpeechFailed(Exception):
    """The TTS gave no audio for a sentence, on the retry too."""


def speakable(text: str) -> bool:
    """Text a TTS should turn into some audio (a lone "…" may legitimately give none)."""
    return any(ch.isalnum() for ch in text)


async def synthesize(
    stream: TTSStream,
    text: str,
    *,
    first_audio_timeout: float,
    on_retry: Callable[[str], None] | None = None,
    behind: asyncio.Future[float] | None = None,
    behind_timeout: float | None = None,
) -> AsyncGenerator[bytes, None]:
    """The audio of one sentence: the first attempt, or the retry when the first gave no
    audio in time. Closing this generator closes the attempt in progress.

    `behind`: for a sentence asked for while the one before still streams, that one's last
    audio (loop time); the first attempt's deadline is then the later of
    `first_audio_timeout` from now and `behind_timeout` (default: `first_audio_timeout`) from
    that, and none at all until it is known. The retry's deadline counts from the retry."""
    second = stream.synthesize
    if isinstance(stream, TTSFallback):
        second = stream.synthesize_fallback
    for attempt, start in enumerate((stream.synthesize, second)):
        audio = start(text).__aiter__()
        why = ""
        try:
            try:
                after = behind if attempt == 0 else None
                after_timeout = first_audio_timeout if behind_timeout is None else behind_timeout
                async with _deadline(first_audio_timeout, after, after_timeout):
                    first = await _first_chunk(audio)
            except TimeoutError:
                why = f"no audio within {first_audio_timeout:g} s"
            except Exception as exc:
                if attempt:
                    raise SpeechFailed(f"the TTS failed again ({exc!r})") from exc
                why = f"the TTS failed ({exc!r})"
            else:
                if first is not _END:
                    yield first
                    async for chunk in audio:
                        yield chunk
                    return
                why = "the stream ended without audio"
        finally:
            await close_stream(audio)
        if not speakable(text):
            return  # nothing to say: nothing lost, and nothing worth a retry
        if attempt:
            raise SpeechFailed(f"no speech for a sentence on the retry either: {why}")
        log.warning("TTS gave no audio for a sentence (%s): retrying once", why)
        if on_retry is not None:
            on_retry(why)


@contextlib.asynccontextmanager
async def _deadline(
    seconds: float, after: asyncio.Future[float] | None, after_seconds: float
) -> AsyncIterator[None]:
    """`asyncio.timeout(seconds)`; with `after`, the later of that and `after_seconds` from
    the time `after` resolves to (no deadline at all until it has)."""
    loop = asyncio.get_running_loop()
    asked = loop.time()
    if after is None:
        async with asyncio.timeout(seconds):
            yield
        return
    live = True
    async with asyncio.timeout(None) as timer:

        def start(fut: asyncio.Future[float]) -> None:
            if not live:  # (a callback already scheduled when the wait ended)
                return
            if not fut.cancelled() and fut.exception() is None:
                timer.reschedule(max(asked + seconds, fut.result() + after_seconds))
            else:
                timer.reschedule(loop.time() + seconds)

        if after.done():
            start(after)
        else:
            after.add_done_callback(start)
        try:
            yield
        finally:
            live = False
            after.remove_done_callback(start)


async def _first_chunk(audio: AsyncIterator[bytes]) -> Any:
    """The first non-empty chunk, or `_END` when the stream ends without one."""
    async for chunk in audio:
        if chunk:
            return chunk
    return _END


async def close_stream(iterator: AsyncIterator[Any]) -> None:
    """Close a provider stream early (cancels its request); tolerate one already finishing."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except RuntimeError:  # still running in a cancelled wait: it is being torn down
            pass


class SentenceAudio:
    """One sentence's synthesis, started as soon as its text is ready and run ahead of its turn
    to play: its chunks wait here until the reply takes them, in order.

    `done_at` resolves once the stream has ended: to the loop time of its last audio when all
    of it came, else (failed, given up, cancelled: the provider may have to ask again for what
    it queued behind this one) to the time it ended. The first-audio deadline of a sentence
    asked for `behind` this one counts from there too (see `synthesize`)."""

    def __init__(
        self,
        stream: TTSStream,
        text: str,
        *,
        first_audio_timeout: float,
        on_retry: Callable[[str], None] | None = None,
        behind: SentenceAudio | None = None,
        behind_timeout: float | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.text = text
        self.asked_at = loop.time()
        self.first_chunk_at: float | None = None
        self.last_chunk_at: float | None = None
        self.done_at: asyncio.Future[float] = loop.create_future()
        self._chunks: asyncio.Queue[Any] = asyncio.Queue()
        audio = synthesize(
            stream,
            text,
            first_audio_timeout=first_audio_timeout,
            on_retry=on_retry,
            behind=behind.done_at if behind is not None else None,
            behind_timeout=behind_timeout,
        )
        self._task = loop.create_task(self._run(audio), name="tts-sentence")

    async def _run(self, audio: AsyncGenerator[bytes, None]) -> None:
        loop = asyncio.get_running_loop()
        whole = False
        try:
            async with contextlib.aclosing(audio):
                async for chunk in audio:
                    if not chunk:
                        continue
                    self.last_chunk_at = loop.time()
                    if self.first_chunk_at is None:
                        self.first_chunk_at = self.last_chunk_at
                    self._chunks.put_nowait(chunk)
            self._chunks.put_nowait(_END)
            whole = True
        except Exception as exc:
            self._chunks.put_nowait(exc)
        finally:
            last = self.last_chunk_at
            self.done_at.set_result(last if whole and last is not None else loop.time())

    async def next_chunk(self, deadline: float | None = None) -> bytes | None:
        """The next chunk, None at the end of the sentence. Raises the synthesis's error
        (`SpeechFailed`, …), or `TimeoutError` when nothing has come by loop time `deadline`."""
        if self._chunks.empty() and deadline is not None:
            async with asyncio.timeout_at(deadline):
                item = await self._chunks.get()
        else:
            item = await self._chunks.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return bytes(item)

    async def cancel(self) -> None:
        """Stop the synthesis, which closes the provider's request (a no-op once it ended);
        audio not taken yet is dropped."""
        await cancel_all([self])


async def cancel_all(sentences: list[SentenceAudio]) -> None:
    """Cancel several syntheses together, then wait for them: all are marked cancelled before
    any closes, so none takes another's close for a drop and asks the provider again."""
    running = {s._task for s in sentences if not s._task.done()}
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    now = asyncio.get_running_loop().time()
    for sentence in sentences:
        if not sentence.done_at.done():  # cancelled before it ever ran
            sentence.done_at.set_result(now)

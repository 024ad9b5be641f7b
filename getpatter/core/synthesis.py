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
"""

from __future__ import annotations

import asyncio
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
) -> AsyncGenerator[bytes, None]:
    """The audio of one sentence: the first attempt, or the retry when the first gave no
    audio in time. Closing this generator closes the attempt in progress."""
    second = stream.synthesize
    if isinstance(stream, TTSFallback):
        second = stream.synthesize_fallback
    for attempt, start in enumerate((stream.synthesize, second)):
        audio = start(text).__aiter__()
        why = ""
        try:
            try:
                async with asyncio.timeout(first_audio_timeout):
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

"""OpenAITranscribeSTT: one OpenAI transcription request per utterance.

Utterance-level, not streaming: there are no interim transcripts. The pipeline's VAD decides
where an utterance ends; `finalize()` sends its audio (8 kHz PCM16 as a WAV file, the carrier's
audio decoded and nothing more) to `/v1/audio/transcriptions`, and the final transcript comes
back a few hundred milliseconds later. Choose it for accuracy (`gpt-4o-transcribe`) or for a
server that only has this endpoint (a local Whisper behind an OpenAI-compatible API); choose a
streaming STT where every 100 ms of turn latency counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from getpatter.core.credentials import validate_http_url
from getpatter.core.providers import AudioEncoding, Transcript
from getpatter.errors import PatterConfigError, PatterConnectionError, PatterError
from getpatter.plugins.openai.llm import (
    OPENAI_BASE_URL,
    build_client,
    check_name,
    check_timeout,
    is_retryable,
    openai_key,
    preload_sdk,
    provider_error,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from getpatter.core.credentials import Secret

__all__ = ["OpenAITranscribeOptions", "OpenAITranscribeSTT", "OpenAITranscribeStream"]

log = logging.getLogger(__name__)

RATE = 8000
_MIN_BYTES = RATE * 2 // 10  # the API refuses less than 0.1 s of audio
_MAX_BYTES = 10 * 60 * RATE * 2  # 10 minutes of one utterance (the API takes up to 25 MB)
_WHAT = "OpenAI transcription"


@dataclass(frozen=True, slots=True)
class OpenAITranscribeOptions:
    """What every request is sent with (the key is kept apart, as a Secret)."""

    model: str = "gpt-4o-transcribe"
    base_url: str = OPENAI_BASE_URL
    language: str | None = None  # None: the agent's language
    prompt: str | None = None
    timeout: float = 30.0


class OpenAITranscribeSTT:
    """Utterance-level STT with OpenAI's transcription models (no interims; see the module).

    - `model`: `gpt-4o-transcribe`, `gpt-4o-mini-transcribe`, `whisper-1`, or what an
      OpenAI-compatible server (`base_url`) offers.
    - `language`: ISO 639-1 hint; None uses the agent's language ('en-US' → 'en').
    - `prompt`: words to expect (names, jargon), passed as the model's prompt.
    """

    sample_rate: int = RATE
    encoding: AudioEncoding = "pcm16"

    def __init__(
        self,
        model: str = "gpt-4o-transcribe",
        api_key: str | None = None,
        base_url: str = OPENAI_BASE_URL,
        language: str | None = None,
        *,
        prompt: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._key = openai_key(api_key, "OpenAITranscribeSTT")
        if language is not None:
            _language(language)
        if prompt is not None and not isinstance(prompt, str):
            raise PatterConfigError("OpenAITranscribeSTT prompt must be a string")
        self.options = OpenAITranscribeOptions(
            model=check_name("OpenAITranscribeSTT", "model", model),
            base_url=validate_http_url(base_url, "OpenAITranscribeSTT base_url"),
            language=language,
            prompt=prompt or None,
            timeout=check_timeout("OpenAITranscribeSTT", timeout),
        )
        preload_sdk()

    def __repr__(self) -> str:
        o = self.options
        return (
            f"OpenAITranscribeSTT(model={o.model!r}, language={o.language!r}, "
            f"base_url={o.base_url!r}, api_key=<set>)"
        )

    async def open(self, *, language: str = "en") -> OpenAITranscribeStream:
        client = await build_client(self._key, self.options.base_url, self.options.timeout)
        return OpenAITranscribeStream(
            self.options, self._key, client, _language(self.options.language or language)
        )


class OpenAITranscribeStream:
    """One call: buffers each utterance, transcribes them in order, one request at a time."""

    def __init__(
        self, options: OpenAITranscribeOptions, key: Secret, client: AsyncOpenAI, language: str
    ) -> None:
        self.options = options
        self.language = language
        self._key = key
        self._client = client
        self._buffer = bytearray()
        self._position = 0  # bytes of audio since the stream began
        self._utterance_start = 0
        self._jobs: asyncio.Queue[tuple[bytes, float, float]] = asyncio.Queue()
        self._out: asyncio.Queue[Transcript | PatterError | None] = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._work())
        self.closed = False
        self.requests = 0

    async def send(self, audio: bytes) -> None:
        if self.closed or not audio:
            return
        if not self._buffer:
            self._utterance_start = self._position
        self._position += len(audio)
        if len(self._buffer) + len(audio) > _MAX_BYTES:
            log.warning("%s: utterance longer than 10 minutes; the rest is not sent", _WHAT)
            return
        self._buffer.extend(audio)

    async def finalize(self) -> None:
        """The utterance is over: transcribe what was buffered (in the background, in order)."""
        if self.closed or not self._buffer:
            return
        pcm, self._buffer = bytes(self._buffer), bytearray()
        if len(pcm) < _MIN_BYTES:
            return
        start = self._utterance_start / (2 * RATE)
        self._jobs.put_nowait((pcm, start, start + len(pcm) / (2 * RATE)))

    async def _work(self) -> None:
        while True:
            pcm, start, end = await self._jobs.get()
            try:
                text = await self._transcribe(pcm)
            except (
                PatterConnectionError
            ) as exc:  # auth, quota, or unreachable twice: the call can't go on
                self._out.put_nowait(exc)
                return
            except PatterError as exc:  # this one request was refused: lose the utterance only
                log.warning("%s: %s", _WHAT, exc)
                continue
            if text:
                self._out.put_nowait(Transcript(text, True, True, None, start, end))

    async def _transcribe(self, pcm: bytes) -> str:
        params: dict[str, Any] = {
            "file": ("utterance.wav", _wav(pcm), "audio/wav"),
            "model": self.options.model,
            "language": self.language,
            "response_format": "json",
        }
        if self.options.prompt:
            params["prompt"] = self.options.prompt
        for attempt in (1, 2):
            self.requests += 1
            try:
                result = await self._client.audio.transcriptions.create(**params)
                return str(getattr(result, "text", result) or "").strip()
            except Exception as exc:
                if attempt == 1 and is_retryable(exc):
                    log.warning("%s: %s; retrying once", _WHAT, type(exc).__name__)
                    continue
                raise provider_error(exc, _WHAT, self._key, self.options.base_url) from None
        raise AssertionError("unreachable")

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._out.get()
            if item is None:
                return
            if isinstance(item, PatterError):
                raise item
            yield item

    async def aclose(self) -> None:
        """End of the call: drop unsent audio, stop any request in flight, close the pool."""
        if self.closed:
            return
        self.closed = True
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._worker
        await self._client.close()
        self._out.put_nowait(None)


def _wav(pcm: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return buffer.getvalue()


def _language(code: str) -> str:
    """OpenAI takes ISO 639-1 codes: 'en-US' → 'en'."""
    if not isinstance(code, str) or not re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*", code):
        raise PatterConfigError(
            f"OpenAITranscribeSTT language must be a code like 'en', got {code!r}"
        )
    return re.split(r"[-_]", code)[0].lower()

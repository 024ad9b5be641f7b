"""OpenAITTS: OpenAI's /v1/audio/speech, streamed as raw PCM while it is generated.

OpenAI cannot produce 8 kHz or μ-law: `response_format="pcm"` is 24 kHz 16-bit mono with no
header, the cheapest format to decode, so the playout resamples it to the carrier's 8 kHz once.
The SDK's streaming response (`with_streaming_response`) hands audio over as it arrives; leaving
it early closes the HTTP response, which is how a barge-in stops a synthesis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from getpatter.core.credentials import validate_http_url
from getpatter.core.providers import AudioEncoding
from getpatter.errors import PatterConfigError
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

__all__ = ["OpenAITTS", "OpenAITTSOptions", "OpenAITTSStream"]

log = logging.getLogger(__name__)

PCM_RATE = 24000  # what response_format="pcm" is


@dataclass(frozen=True, slots=True)
class OpenAITTSOptions:
    """What every synthesis is sent with (the key is kept apart, as a Secret)."""

    model: str = "gpt-4o-mini-tts"
    voice: str = "alloy"
    base_url: str = OPENAI_BASE_URL
    instructions: str | None = None
    speed: float | None = None
    timeout: float = 30.0


class OpenAITTS:
    """Text to speech with OpenAI (`gpt-4o-mini-tts`, `tts-1`, …), 24 kHz PCM16.

    - `voice`: alloy, ash, ballad, coral, echo, fable, nova, onyx, sage, shimmer, verse, marin,
      cedar (or a custom voice id).
    - `instructions`: how to speak ("warm and brisk"); `gpt-4o-mini-tts` only.
    - `speed`: 0.25–4.0.
    - `base_url`: a proxy, an OpenAI-compatible server, or a test fake.

    A connection that drops mid-sentence is retried once; the audio already played is skipped
    in the new synthesis, so the caller does not hear the start of the sentence twice.
    """

    sample_rate: int = PCM_RATE
    encoding: AudioEncoding = "pcm16"

    def __init__(
        self,
        model: str = "gpt-4o-mini-tts",
        voice: str = "alloy",
        api_key: str | None = None,
        base_url: str = OPENAI_BASE_URL,
        instructions: str | None = None,
        *,
        speed: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._key = openai_key(api_key, "OpenAITTS")
        if instructions is not None and not isinstance(instructions, str):
            raise PatterConfigError("OpenAITTS instructions must be a string")
        if speed is not None and (
            isinstance(speed, bool)
            or not isinstance(speed, int | float)
            or not math.isfinite(speed)
            or not 0.25 <= speed <= 4.0
        ):
            raise PatterConfigError(f"OpenAITTS speed must be 0.25 to 4.0, got {speed!r}")
        self.options = OpenAITTSOptions(
            model=check_name("OpenAITTS", "model", model),
            voice=check_name("OpenAITTS", "voice", voice),
            base_url=validate_http_url(base_url, "OpenAITTS base_url"),
            instructions=instructions or None,
            speed=None if speed is None else float(speed),
            timeout=check_timeout("OpenAITTS", timeout),
        )
        preload_sdk()

    def __repr__(self) -> str:
        o = self.options
        return (
            f"OpenAITTS(model={o.model!r}, voice={o.voice!r}, base_url={o.base_url!r}, "
            "api_key=<set>)"
        )

    async def open(self) -> OpenAITTSStream:
        """One call's stream: its own connection pool, closed with the call."""
        client = await build_client(self._key, self.options.base_url, self.options.timeout)
        return OpenAITTSStream(self.options, self._key, client)


class OpenAITTSStream:
    def __init__(self, options: OpenAITTSOptions, key: Secret, client: AsyncOpenAI) -> None:
        self.options = options
        self._key = key
        self._client = client
        self.closed = False

    def _params(self, text: str) -> dict[str, Any]:
        o = self.options
        params: dict[str, Any] = {
            "model": o.model,
            "voice": o.voice,
            "input": text,
            "response_format": "pcm",
        }
        if o.instructions:
            params["instructions"] = o.instructions
        if o.speed is not None:
            params["speed"] = o.speed
        return params

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """24 kHz PCM16 for `text`, chunk by chunk as OpenAI makes it."""
        if self.closed or not text.strip():
            return
        speech = self._client.audio.speech.with_streaming_response
        delivered = 0
        for attempt in (1, 2):
            skip = delivered  # on a retry: the audio the caller already has
            try:
                async with speech.create(**self._params(text)) as response:
                    async for chunk in response.iter_bytes():
                        if skip:
                            if len(chunk) <= skip:
                                skip -= len(chunk)
                                continue
                            chunk, skip = chunk[skip:], 0
                        delivered += len(chunk)
                        yield chunk
                return
            except Exception as exc:
                if attempt == 1 and is_retryable(exc):
                    log.warning("OpenAI text-to-speech: %s; retrying once", type(exc).__name__)
                    continue
                raise provider_error(
                    exc, "OpenAI text-to-speech", self._key, self.options.base_url
                ) from None

    async def aclose(self) -> None:
        """End of the call: close the connection pool (and any synthesis still open)."""
        if not self.closed:
            self.closed = True
            await self._client.close()

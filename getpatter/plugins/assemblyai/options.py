"""AssemblyAISTT's options: what to ask AssemblyAI for, checked when the STT is built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from getpatter.errors import PatterConfigError

DEFAULT_BASE_URL: Final = "wss://streaming.assemblyai.com"
MIN_CHUNK_MS: Final = 50  # AssemblyAI takes 50-1000 ms of audio per binary frame
MAX_CHUNK_MS: Final = 1000
Encoding = Literal["pcm_mulaw", "pcm_s16le"]


@dataclass(frozen=True, slots=True)
class AssemblyAIOptions:
    """What AssemblyAISTT asks for. `speech_model=None`: English or multilingual by language."""

    base_url: str = DEFAULT_BASE_URL
    sample_rate: int = 8000
    encoding: Encoding = "pcm_mulaw"
    speech_model: str | None = None
    format_turns: bool = True
    end_of_turn_confidence_threshold: float | None = None
    min_turn_silence_ms: int | None = None
    max_turn_silence_ms: int | None = None
    keyterms: tuple[str, ...] = ()
    chunk_ms: int = MIN_CHUNK_MS
    format_wait_s: float = 0.4
    connect_timeout: float = 10.0
    close_timeout: float = 3.0

    def __post_init__(self) -> None:
        def fail(what: str) -> None:
            raise PatterConfigError(f"AssemblyAISTT: {what}")

        object.__setattr__(self, "base_url", _ws_base(self.base_url))
        if self.encoding not in ("pcm_mulaw", "pcm_s16le"):
            fail(f"encoding must be 'pcm_mulaw' or 'pcm_s16le', got {self.encoding!r}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int):
            fail(f"sample_rate must be an int, got {self.sample_rate!r}")
        if not 8000 <= self.sample_rate <= 48000:
            fail(f"sample_rate must be between 8000 and 48000, got {self.sample_rate}")
        if self.speech_model is not None and not str(self.speech_model).strip():
            fail("speech_model must be a model name or None")
        threshold = self.end_of_turn_confidence_threshold
        if threshold is not None and not 0 <= threshold <= 1:
            fail(f"end_of_turn_confidence_threshold must be within 0..1, got {threshold!r}")
        for name in ("min_turn_silence_ms", "max_turn_silence_ms"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                fail(f"{name} must be a positive number of milliseconds or None")
        if isinstance(self.keyterms, str) or not all(
            isinstance(k, str) and k.strip() for k in self.keyterms
        ):
            fail("keyterms must be a list of non-empty strings")
        object.__setattr__(self, "keyterms", tuple(self.keyterms))
        if not MIN_CHUNK_MS <= self.chunk_ms <= MAX_CHUNK_MS:
            fail(f"chunk_ms must be within {MIN_CHUNK_MS}..{MAX_CHUNK_MS} (AssemblyAI's rule)")
        if not self.format_wait_s >= 0:
            fail(f"format_wait_s must be 0 or more seconds, got {self.format_wait_s!r}")
        for name in ("connect_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                fail(f"{name} must be a positive number of seconds")


def _terms(keyterms: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keyterms, str):  # a str is a sequence too: "acme" is not five terms
        raise PatterConfigError("AssemblyAISTT: keyterms must be a list of terms, not one string")
    return tuple(keyterms)


def _ws_base(url: object) -> str:
    """`wss://host[/prefix]` from any spelling: http(s) for ws(s), a trailing /v3/ws."""
    if not isinstance(url, str):
        raise PatterConfigError(f"AssemblyAISTT: base_url must be a str URL, got {url!r}")
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise PatterConfigError(
            f"AssemblyAISTT: base_url must be a wss:// (or ws://) URL with a host, got {url!r}"
        )
    path = parts.path.rstrip("/").removesuffix("/v3/ws")
    return f"{scheme}://{parts.netloc}{path}"

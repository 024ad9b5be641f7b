"""DeepgramSTT's options: what to ask Deepgram for, checked when the STT is built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from getpatter.errors import PatterConfigError

DEFAULT_BASE_URL: Final = "wss://api.deepgram.com"


@dataclass(frozen=True, slots=True)
class DeepgramOptions:
    """What DeepgramSTT asks Deepgram for. `language=None`: the agent's language."""

    model: str = "nova-3"
    language: str | None = None
    base_url: str = DEFAULT_BASE_URL
    endpointing_ms: int | None = 300  # None: Deepgram's endpointing off
    utterance_end_ms: int | None = 1000  # None: no UtteranceEnd messages
    interim_results: bool = True
    smart_format: bool = True
    punctuate: bool = True
    vad_events: bool = True
    keyterms: tuple[str, ...] = ()
    keepalive_s: float = 5.0
    connect_timeout: float = 10.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        def fail(what: str) -> None:
            raise PatterConfigError(f"DeepgramSTT: {what}")

        if not isinstance(self.model, str) or not self.model.strip():
            fail(f"model must be a model name such as 'nova-3', got {self.model!r}")
        if self.language is not None and (
            not isinstance(self.language, str) or not self.language.strip()
        ):
            fail(f"language must be a language code such as 'en' or None, got {self.language!r}")
        object.__setattr__(self, "base_url", _ws_base(self.base_url))
        for name in ("endpointing_ms", "utterance_end_ms"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                fail(f"{name} must be a positive number of milliseconds or None, got {value!r}")
        if self.utterance_end_ms is not None and not self.interim_results:
            fail("utterance_end_ms needs interim_results=True (Deepgram's rule)")
        if isinstance(self.keyterms, str) or not all(
            isinstance(k, str) and k.strip() for k in self.keyterms
        ):
            fail("keyterms must be a list of non-empty strings")
        object.__setattr__(self, "keyterms", tuple(self.keyterms))
        if not 0 < self.keepalive_s < 10:
            fail(
                "keepalive_s must be between 0 and 10 s (Deepgram's idle limit), "
                f"got {self.keepalive_s!r}"
            )
        for name in ("connect_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                fail(f"{name} must be a positive number of seconds")


def _terms(keyterms: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keyterms, str):  # a str is a sequence too: "acme" is not five terms
        raise PatterConfigError("DeepgramSTT: keyterms must be a list of terms, not one string")
    return tuple(keyterms)


def _ws_base(url: object) -> str:
    """`wss://host[/prefix]` from any spelling: http(s) for ws(s), a trailing /v1/listen."""
    if not isinstance(url, str):
        raise PatterConfigError(f"DeepgramSTT: base_url must be a str URL, got {url!r}")
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise PatterConfigError(
            f"DeepgramSTT: base_url must be a wss:// (or ws://) URL with a host, got {url!r}"
        )
    path = parts.path.rstrip("/")
    for suffix in ("/v1/listen", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return f"{scheme}://{parts.netloc}{path}"

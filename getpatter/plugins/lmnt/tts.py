"""LmntTTS: LMNT text to speech over a speech session, through the official `lmnt` SDK.

The SDK's `AsyncLmnt(base_url=...)` derives the session socket from its HTTP base
(`http → ws`, `https → wss`, plus `/v1/ai/speech/stream`), so it is pointed at a loopback fake
as easily as at LMNT; `client.speech.sessions.create()` opens the socket and sends the init
message (the key travels in it, not in a header). The SDK is imported in a worker thread on
the first `open()`.

One session per call, asked for `format="ulaw"` at 8000 Hz by default: the carrier's own
format. LMNT documents that μ-law comes "with a WAV header" without saying whether once per
session or per flush, so a RIFF header at the start of any sentence's audio is skipped. Each
sentence is a `text` message and a `flush`; its audio is the binary frames up to the
`flush_complete` carrying that flush's nonce. A session speaks its flushes in order, so the
pipeline's next sentence (asked for while one still streams) is simply queued behind it: the
audio frames, which carry no id, belong to the oldest sentence still waiting.

Barge-in: closing a sentence's iterator early closes the session (a speech already being
generated cannot be recalled from the socket any other way the docs promise) and opens the
next one in the background; a sentence queued behind it is asked for again there. A session
dropped mid-sentence is reopened once and the sentence asked for again, skipping the audio
already played; a refused key is a `PatterConnectionError` naming LMNT_API_KEY, never showing
the key. (The session's reader and the reconnect are `core.tts_stream`'s; this module wraps
the SDK's session as its connection and speaks LMNT's messages.)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import struct
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Final

from getpatter.core.credentials import Secret, credential, validate_http_url
from getpatter.core.providers import AudioEncoding
from getpatter.core.sdk_import import in_sdk_thread, preload
from getpatter.core.tts_stream import END, Closed, Sentence, SocketTTSStream
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError

__all__ = ["LMNT_BASE_URL", "LmntOptions", "LmntStream", "LmntTTS"]

log = logging.getLogger(__name__)
#: what the SDK's socket imports when it first opens, if not before (on the loop)
_LAZY: Final = ("websockets.asyncio.client", "anyio._backends._asyncio", "anyio.lowlevel")

LMNT_BASE_URL: Final = "https://api.lmnt.com"
_RATES: Final = (8000, 16000, 24000)
_WIRE_FORMAT: Final[dict[str, str]] = {"mulaw": "ulaw", "pcm16": "pcm_s16le"}
_REFUSALS: Final = frozenset(
    {"authentication_error", "permission_error", "payment_required_error", "rate_limit_error"}
)


@dataclass(frozen=True, slots=True)
class LmntOptions:
    """Everything LmntTTS sends in a session's init message except the key."""

    voice: str = "leah"
    base_url: str = LMNT_BASE_URL
    language: str | None = "en"
    sample_rate: int = 8000
    encoding: AudioEncoding = "mulaw"
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.voice, str) or not self.voice.strip():
            raise PatterConfigError(f"LmntTTS voice must be an LMNT voice id, got {self.voice!r}")
        object.__setattr__(self, "base_url", validate_http_url(self.base_url, "LmntTTS base_url"))
        if self.encoding not in _WIRE_FORMAT:
            raise PatterConfigError(
                f"LmntTTS encoding must be 'mulaw' or 'pcm16', got {self.encoding!r}"
            )
        if self.sample_rate not in _RATES or (
            self.encoding == "mulaw" and self.sample_rate != 8000
        ):
            raise PatterConfigError(
                f"LmntTTS sample_rate must be one of {_RATES} (8000 for mulaw), "
                f"got {self.sample_rate!r}"
            )


class LmntTTS:
    """LMNT text to speech (registered as tts ``"lmnt"``).

    - `voice`: an LMNT voice id; `language`: e.g. "en" (None: the voice's own).
    - `api_key`: defaults to `LMNT_API_KEY`; missing → `PatterConfigError` now.
    - `base_url`: `https://api.lmnt.com`, or a proxy / test fake (the socket follows it).
    - `sample_rate` / `encoding`: 8000 / "mulaw" (the carrier's format) or PCM at 16/24 kHz.
    """

    def __init__(
        self,
        voice: str = "leah",
        *,
        api_key: str | None = None,
        base_url: str = LMNT_BASE_URL,
        language: str | None = "en",
        sample_rate: int = 8000,
        encoding: AudioEncoding = "mulaw",
        connect_timeout: float = 5.0,
    ) -> None:
        self.options = LmntOptions(
            voice=voice,
            base_url=base_url,
            language=language,
            sample_rate=sample_rate,
            encoding=encoding,
            connect_timeout=connect_timeout,
        )
        self._key = Secret(
            credential(api_key, "LMNT_API_KEY", "LMNT API key", "LmntTTS(api_key=...)")
        )
        self.sample_rate: int = sample_rate
        self.encoding: AudioEncoding = encoding
        preload("lmnt")  # so the first call does not wait for it

    def __repr__(self) -> str:
        o = self.options
        return (
            f"LmntTTS(voice={o.voice!r}, encoding={o.encoding!r}, sample_rate={o.sample_rate}, "
            "api_key=<set>)"
        )

    async def open(self) -> LmntStream:
        """The call's stream, connected now so the greeting does not wait for a handshake."""
        client = await in_sdk_thread(self._new_client)
        return await LmntStream(self.options, self._key, client).connected()

    def _new_client(self) -> Any:
        """Run in the SDK thread: the import, the client, and what it imports lazily."""
        sdk = importlib.import_module("lmnt")
        client = sdk.AsyncLmnt(api_key=self._key.reveal(), base_url=self.options.base_url)
        _ = client.speech.sessions  # imported on first access: here, not on the loop
        for module in _LAZY:
            importlib.import_module(module)
        return client


class _Session:
    """The SDK's speech session as a `TTSConnection`: text and flush out, its messages in."""

    closed = False  # a session is forgotten when it ends

    def __init__(self, session: Any, first: Any) -> None:
        self.session = session
        # what came instead of `ready`, if anything: read first
        self._first = None if getattr(first, "type", "") == "ready" else first

    async def send(self, message: dict[str, Any]) -> Any:
        try:
            if "text" in message:
                return await self.session.send_text(message["text"])
            return await self.session.send_flush()
        except Exception as exc:  # websockets' ConnectionClosed and friends
            raise Closed(type(exc).__name__) from None

    async def receive(self) -> Any:
        from lmnt.resources.sessions import UnexpectedMessageError

        if self._first is not None:
            first, self._first = self._first, None
            return first
        while True:
            try:
                return await self.session.__anext__()
            except StopAsyncIteration:
                raise Closed("closed") from None
            except (UnexpectedMessageError, ValueError) as exc:  # a message of a newer protocol
                log.debug("LMNT: ignored %s", exc)
            except Exception as exc:
                raise Closed(type(exc).__name__) from None

    async def close(self) -> None:
        await self.session.close()


@dataclass(eq=False, slots=True)
class _Sentence(Sentence):
    header: _WavHeader = field(default_factory=lambda: _WavHeader())


class LmntStream(SocketTTSStream[_Sentence]):
    """One call's LMNT session: `synthesize()` a sentence (the next may be asked for while one
    streams: it queues behind it), `aclose()`."""

    provider = "LMNT"
    key_env = "LMNT_API_KEY"
    socket_word = "session"

    def __init__(self, options: LmntOptions, key: Secret, client: Any) -> None:
        super().__init__(key)
        self.options = options
        self._client = client
        self._count = 0

    # --- a sentence -----------------------------------------------------------------------

    def _new_sentence(self, text: str) -> _Sentence:
        return _Sentence(text)

    def _begin(self, sentence: _Sentence) -> list[dict[str, Any]]:
        self._count += 1
        sentence.key = self._count  # audio carries no id: sentences are served in flush order
        return [{"text": sentence.text + " "}, {"flush": True}]

    async def _on_audio(self, sentence: _Sentence, audio: bytes) -> bytes:
        return sentence.header.strip(audio)

    async def _end(self, sentence: _Sentence, finished: bool) -> None:
        session = sentence.conn
        if not finished and session is not None and self._conn is session:
            # cancelled (a barge-in) or failed: end this session, have the next one ready
            await self._drop(session, "session closed")
            self._prewarm_next()

    # --- the session -----------------------------------------------------------------------

    async def _open(self) -> _Session:
        """A session, once it said `ready`."""
        o = self.options
        kwargs: dict[str, Any] = {
            "voice": o.voice,
            "format": _WIRE_FORMAT[o.encoding],
            "sample_rate": o.sample_rate,
        }
        if o.language:
            kwargs["language"] = o.language
        session: Any = None
        try:
            async with asyncio.timeout(o.connect_timeout):
                session = await self._client.speech.sessions.create(**kwargs)
                first = await session.__anext__()
        except StopAsyncIteration:
            raise PatterConnectionError("LMNT closed the session before it was ready") from None
        except (OSError, TimeoutError, Exception) as exc:
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.close()
            raise PatterConnectionError(
                f"LMNT: could not open a speech session at {o.base_url} ({type(exc).__name__})"
            ) from None
        kind = getattr(first, "type", "")
        if kind == "error":
            with contextlib.suppress(Exception):
                await session.close()
            raise self._error(first)
        if kind != "ready":
            log.debug("LMNT: session started with %r, not 'ready'", kind)
        return _Session(session, first)

    def _parse(self, conn: _Session, message: Any) -> list[tuple[Hashable, Any]]:
        """Audio is the oldest waiting sentence's; `flush_complete` ends it (flushes complete in
        order: the audio that follows is the next one's)."""
        waiting = self._keys(conn)
        kind = getattr(message, "type", "")
        if kind == "audio" and waiting:
            return [(waiting[0], bytes(message.audio))]
        if kind == "flush_complete" and waiting:
            return [(waiting[0], END)]
        if kind == "error":
            error = self._error(message)
            if not waiting:
                log.warning("%s", error)
            return [(key, error) for key in waiting]
        return []

    def _error(self, message: Any) -> Exception:
        body = getattr(message, "error", None)  # the SDK leaves it a dict (model_construct)
        if not isinstance(body, dict):
            body = {"type": getattr(body, "type", ""), "message": getattr(body, "message", "")}
        kind, text = str(body.get("type") or ""), body.get("message")
        text = self._scrub(str(text or ""))[:200]
        if kind == "authentication_error":
            return PatterConnectionError(f"LMNT rejected the API key ({kind}): check LMNT_API_KEY")
        if kind in _REFUSALS:
            return PatterConnectionError(f"LMNT refused the session ({kind}): {text}")
        return ProviderError(f"LMNT error ({kind or 'unknown'}): {text}")

    async def _after_close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.close()


class _WavHeader:
    """Skips a RIFF/WAVE header at the start of a sentence's audio, however it is split."""

    def __init__(self) -> None:
        self._start = b""
        self._done = False

    def strip(self, data: bytes) -> bytes:
        if self._done:
            return data
        self._start += data
        if len(self._start) < 4 and b"RIFF".startswith(self._start):
            return b""
        if not self._start.startswith(b"RIFF"):
            self._done = True
            return self._start
        at = 12  # "RIFF" size "WAVE", then chunks: id, size, body
        while at + 8 <= len(self._start):
            chunk_id = self._start[at : at + 4]
            if chunk_id == b"data":
                self._done = True
                return self._start[at + 8 :]
            (size,) = struct.unpack_from("<I", self._start, at + 4)
            at += 8 + size + (size & 1)
        if len(self._start) > 4096:  # no data chunk in sight: not a header after all
            self._done = True
            return self._start
        return b""

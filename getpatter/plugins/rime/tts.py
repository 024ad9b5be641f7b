"""RimeTTS: Rime text to speech over its JSON WebSocket (`/ws3`), one socket per call.

Rime publishes no Python SDK (its docs say so: "there is no official Rime SDK on npm or
PyPI"), so the protocol is spoken with aiohttp, from Rime's API reference.

The socket's synthesis arguments are fixed in its URL: the speaker, the model, and by default
`audioFormat=mulaw&samplingRate=8000` — the carrier's own format, played untouched — with
`segment=never`, so Rime speaks exactly when told to. Each sentence is one text message
tagged with its own `contextId`, then a `flush`; its audio is the `chunk` events carrying
that context, up to the `done` for it. Rime synthesizes one flush at a time and holds text
that arrives meanwhile, so the pipeline's next sentence, asked for while one still streams,
is spoken right after it. But Rime merges flushes that wait together into one synthesis under
the later context id, so a sentence's text is sent only once the one before it has started
sounding (or ended): then at most one ever waits.

Barge-in. Rime's `clear` only drops text not yet submitted: a synthesis already running goes
on, and the docs say to close the connection for a hard stop. So closing a sentence's
iterator early sends `clear`, closes the socket, and opens the next one in the background,
ready before the agent's next reply; a sentence held behind the cancelled one is asked for
again there. A socket dropped mid-sentence is reopened once and the sentence asked for again,
skipping the audio already played; a refused key is a `PatterConnectionError` naming
RIME_API_KEY, never showing the key. (The socket, its reader and the reconnect are
`core.tts_stream`'s; this module is Rime's wire format and the rules above.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import aiohttp

from getpatter.core.credentials import Secret, credential
from getpatter.core.providers import AudioEncoding
from getpatter.core.tts_stream import (
    END,
    Dropped,
    Refused,
    Sentence,
    SocketTTSStream,
    Unreachable,
    WebSocket,
    open_websocket,
)
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError

__all__ = ["RIME_WS_BASE", "RimeOptions", "RimeStream", "RimeTTS"]

log = logging.getLogger(__name__)

RIME_WS_BASE: Final = "wss://users-ws.rime.ai"
_PATH: Final = "/ws3"
_WIRE_FORMAT: Final[dict[str, str]] = {"mulaw": "mulaw", "pcm16": "pcm"}


@dataclass(frozen=True, slots=True)
class RimeOptions:
    """Everything RimeTTS puts in the socket URL, and its timeouts (never the key)."""

    speaker: str = "astra"
    model_id: str = "arcana"
    base_url: str = RIME_WS_BASE
    lang: str = "eng"
    sample_rate: int = 8000
    encoding: AudioEncoding = "mulaw"
    speed_alpha: float | None = None
    connect_timeout: float = 5.0
    extra_params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("speaker", "model_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise PatterConfigError(f"RimeTTS {name} must be a non-empty str, got {value!r}")
        object.__setattr__(self, "base_url", _ws_base(self.base_url))
        if self.encoding not in _WIRE_FORMAT:
            raise PatterConfigError(
                f"RimeTTS encoding must be 'mulaw' or 'pcm16', got {self.encoding!r}"
            )
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or not 4000 <= rate <= 48000:
            raise PatterConfigError(f"RimeTTS sample_rate must be 4000-48000 Hz, got {rate!r}")
        if self.encoding == "mulaw" and rate != 8000:
            raise PatterConfigError("RimeTTS: μ-law (encoding='mulaw') is 8000 Hz only")
        speed = self.speed_alpha
        if speed is not None and (
            isinstance(speed, bool) or not isinstance(speed, int | float) or speed <= 0
        ):
            raise PatterConfigError(f"RimeTTS speed_alpha must be a positive number, got {speed!r}")

    @property
    def url(self) -> str:
        """The socket URL: every synthesis argument is a query parameter."""
        query: dict[str, str] = {
            "speaker": self.speaker,
            "modelId": self.model_id,
            "audioFormat": _WIRE_FORMAT[self.encoding],
            "samplingRate": str(self.sample_rate),
            "lang": self.lang,
            "segment": "never",  # synthesize at our flush, never on Rime's own guess
        }
        if self.speed_alpha is not None:
            query["speedAlpha"] = str(self.speed_alpha)
        query.update({str(k): str(v) for k, v in self.extra_params.items()})
        return f"{self.base_url}{_PATH}?{urlencode(query)}"


def _ws_base(url: object) -> str:
    if not isinstance(url, str):
        raise PatterConfigError(f"RimeTTS base_url must be a str URL, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc or parts.query:
        raise PatterConfigError(
            f"RimeTTS base_url must be a wss:// (or ws://) URL with a host, got {url!r}"
        )
    path = parts.path.rstrip("/")
    if path.endswith(_PATH):
        path = path[: -len(_PATH)]
    return f"{scheme}://{parts.netloc}{path}"


class RimeTTS:
    """Rime text to speech (registered as tts ``"rime"``).

    - `speaker` / `model_id`: a Rime voice and its model (`arcana`, `coda`, `mistv2`, …).
    - `api_key`: defaults to `RIME_API_KEY`; missing → `PatterConfigError` now.
    - `base_url`: the socket host, `wss://users-ws.rime.ai` (a regional host, a test fake).
    - `sample_rate` / `encoding`: 8000 / "mulaw" (the carrier's format) or PCM at a rate.
    - `lang`, `speed_alpha`, and `extra_params` for any other query parameter Rime takes.
    """

    def __init__(
        self,
        speaker: str = "astra",
        *,
        api_key: str | None = None,
        model_id: str = "arcana",
        base_url: str = RIME_WS_BASE,
        lang: str = "eng",
        sample_rate: int = 8000,
        encoding: AudioEncoding = "mulaw",
        speed_alpha: float | None = None,
        connect_timeout: float = 5.0,
        extra_params: Mapping[str, str] | None = None,
    ) -> None:
        self.options = RimeOptions(
            speaker=speaker,
            model_id=model_id,
            base_url=base_url,
            lang=lang,
            sample_rate=sample_rate,
            encoding=encoding,
            speed_alpha=speed_alpha,
            connect_timeout=connect_timeout,
            extra_params=dict(extra_params or {}),
        )
        self._key = Secret(
            credential(api_key, "RIME_API_KEY", "Rime API key", "RimeTTS(api_key=...)")
        )
        self.sample_rate: int = sample_rate
        self.encoding: AudioEncoding = encoding

    def __repr__(self) -> str:
        o = self.options
        return (
            f"RimeTTS(speaker={o.speaker!r}, model_id={o.model_id!r}, encoding={o.encoding!r}, "
            f"sample_rate={o.sample_rate}, api_key=<set>)"
        )

    async def open(self) -> RimeStream:
        """The call's stream, connected now so the greeting does not wait for a handshake."""
        return await RimeStream(self.options, self._key).connected()


@dataclass(eq=False, slots=True)
class _Sentence(Sentence):
    before: asyncio.Event | None = None  # the sentence before has started sounding
    started: asyncio.Event = field(default_factory=asyncio.Event)  # this one has


class RimeStream(SocketTTSStream[_Sentence]):
    """One call's Rime socket: `synthesize()` one sentence at a time, `aclose()`."""

    provider = "Rime"
    key_env = "RIME_API_KEY"

    def __init__(self, options: RimeOptions, key: Secret) -> None:
        super().__init__(key)
        self.options = options
        self._http: aiohttp.ClientSession | None = None
        self._count = 0
        self._started: asyncio.Event | None = None  # the latest sentence's audio has begun

    # --- a sentence -----------------------------------------------------------------------

    def _new_sentence(self, text: str) -> _Sentence:
        sentence = _Sentence(text, before=self._started)
        self._started = sentence.started
        return sentence

    async def _connect_for(self, sentence: _Sentence) -> WebSocket:
        if sentence.before is not None:
            await sentence.before.wait()  # the sentence before has started: its text is taken
        ws: WebSocket = await self.connect()
        return ws

    def _begin(self, sentence: _Sentence) -> list[dict[str, Any]]:
        self._count += 1
        sentence.key = context = f"s{self._count}"
        return [{"text": sentence.text + " ", "contextId": context}, {"operation": "flush"}]

    async def _on_audio(self, sentence: _Sentence, audio: bytes) -> bytes:
        sentence.started.set()
        return audio

    async def _end(self, sentence: _Sentence, finished: bool) -> None:
        ws = sentence.conn
        if not finished and ws is not None and self._conn is ws and not ws.closed:
            # cancelled (a barge-in) or failed: Rime cannot stop a running synthesis, so
            # drop the text it holds and the socket, and have the next one ready
            with contextlib.suppress(Dropped):
                await self._send(ws, {"operation": "clear"})
            await self._drop(ws, "socket closed")
            self._prewarm_next()
        sentence.started.set()

    # --- the socket ------------------------------------------------------------------------

    async def _open(self) -> WebSocket:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        o = self.options
        try:
            return await open_websocket(
                self._http,
                o.url,
                headers={"Authorization": f"Bearer {self._key.reveal()}"},
                connect_s=o.connect_timeout,
                max_msg_size=4 * 1024 * 1024,
            )
        except Refused as exc:
            raise self._refused(exc.status) from None
        except Unreachable as exc:
            raise PatterConnectionError(
                f"Rime: could not connect to {o.base_url}{_PATH} ({exc})"
            ) from None

    def _parse(self, conn: WebSocket, message: Any) -> list[tuple[Hashable, Any]]:
        """`chunk` and `done` by contextId; an `error` (not tagged) is the waiting sentence's."""
        if not isinstance(message, str):
            return []
        try:
            event = json.loads(message)
            kind = event.get("type")
        except (json.JSONDecodeError, AttributeError):
            return []
        context = str(event.get("contextId"))
        if kind == "chunk":
            try:
                return [(context, base64.b64decode(event.get("data") or ""))]
            except (binascii.Error, ValueError):
                return [(context, ProviderError("Rime sent audio that is not base64"))]
        if kind == "done":
            return [(context, END)]
        if kind == "error":
            error = ProviderError(f"Rime error: {self._scrub(str(event.get('message')))[:200]}")
            waiting = self._keys(conn)
            if not waiting:
                log.warning("%s", error)
            return [(key, error) for key in waiting]
        return []

    async def _after_close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

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
RIME_API_KEY, never showing the key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import aiohttp

from getpatter.core.credentials import Secret, credential
from getpatter.core.providers import AudioEncoding
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
        stream = RimeStream(self.options, self._key)
        try:
            await stream.connect()
        except BaseException:
            await stream.aclose()
            raise
        return stream


class _Dropped(Exception):
    """The socket closed while a sentence was still waiting for audio."""


_DONE: Final = object()


class RimeStream:
    """One call's Rime socket: `synthesize()` one sentence at a time, `aclose()`."""

    def __init__(self, options: RimeOptions, key: Secret) -> None:
        self.options = options
        self._key = key
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._prewarm: asyncio.Task[Any] | None = None
        self._waiting: dict[str, asyncio.Queue[Any]] = {}  # context → its audio, then _DONE
        self._count = 0
        self._connecting = asyncio.Lock()
        self._started: asyncio.Event | None = None  # the latest sentence's audio has begun
        self._closed = False

    # --- synthesis ------------------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Audio for one sentence. Closing this iterator early stops it (and its socket)."""
        if self._closed:
            raise ProviderError("Rime stream is closed")
        text = " ".join(text.split())
        if not text:
            return
        delivered = 0
        for attempt in (1, 2):
            try:
                async with contextlib.aclosing(self._sentence(text, delivered)) as audio:
                    async for chunk in audio:
                        delivered += len(chunk)
                        yield chunk
                return
            except _Dropped as exc:
                if attempt == 2:
                    raise PatterConnectionError(f"Rime: the socket dropped again ({exc})") from None
                log.warning("Rime socket dropped mid-sentence (%s): reconnecting", exc)

    async def _sentence(self, text: str, skip: int) -> AsyncGenerator[bytes, None]:
        before, started = self._started, asyncio.Event()
        self._started = started
        queue: asyncio.Queue[Any] = asyncio.Queue()
        context = ""
        finished = False
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            if before is not None:
                await before.wait()  # the sentence before has started: its text is taken
            ws = await self.connect()
            self._count += 1
            context = f"s{self._count}"
            self._waiting[context] = queue
            await self._send(ws, {"text": text + " ", "contextId": context})
            await self._send(ws, {"operation": "flush"})
            while (item := await queue.get()) is not _DONE:
                started.set()
                if isinstance(item, BaseException):
                    raise item
                if skip:
                    cut = min(skip, len(item))
                    item, skip = item[cut:], skip - cut
                if item:
                    yield item
            finished = True
        finally:
            self._waiting.pop(context, None)
            if not finished and ws is not None and self._ws is ws and not ws.closed:
                # cancelled (a barge-in) or failed: Rime cannot stop a running synthesis, so
                # drop the text it holds and the socket, and have the next one ready
                with contextlib.suppress(_Dropped):
                    await self._send(ws, {"operation": "clear"})
                await self._disconnect()
                if not self._closed:
                    self._prewarm = asyncio.get_running_loop().create_task(self._warm())
            started.set()

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        try:
            await ws.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise _Dropped(type(exc).__name__) from None

    # --- the socket ------------------------------------------------------------------------

    async def _warm(self) -> None:
        try:
            await self.connect()
        except Exception as exc:  # the next sentence will try again and report it
            log.info("Rime: reconnecting after a barge-in failed for now (%s)", exc)

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        """The open socket, opening it if needed (one opener at a time)."""
        async with self._connecting:
            if self._ws is not None and not self._ws.closed:
                return self._ws
            if self._closed:
                raise ProviderError("Rime stream is closed")
            if self._http is None:
                self._http = aiohttp.ClientSession()
            o = self.options
            try:
                async with asyncio.timeout(o.connect_timeout):
                    ws = await self._http.ws_connect(
                        o.url,
                        headers={"Authorization": f"Bearer {self._key.reveal()}"},
                        max_msg_size=4 * 1024 * 1024,
                        autoping=True,
                    )
            except aiohttp.WSServerHandshakeError as exc:
                raise self._refused(exc.status) from None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise PatterConnectionError(
                    f"Rime: could not connect to {o.base_url}{_PATH} ({type(exc).__name__})"
                ) from None
            self._ws = ws
            self._reader = asyncio.get_running_loop().create_task(self._read(ws))
            return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Route each event to the sentence waiting on its context; on close, tell them all."""
        reason = "closed"
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    reason = type(ws.exception()).__name__
                break
            try:
                event = json.loads(msg.data)
                kind = event.get("type")
            except (json.JSONDecodeError, AttributeError):
                continue
            queue = self._waiting.get(str(event.get("contextId")))
            if kind == "chunk" and queue is not None:
                try:
                    queue.put_nowait(base64.b64decode(event.get("data") or ""))
                except (binascii.Error, ValueError):
                    queue.put_nowait(ProviderError("Rime sent audio that is not base64"))
            elif kind == "done" and queue is not None:
                queue.put_nowait(_DONE)
            elif kind == "error":  # not tagged with a context: it is the waiting sentence's
                error = ProviderError(f"Rime error: {self._scrub(str(event.get('message')))[:200]}")
                for waiting in self._waiting.values():
                    waiting.put_nowait(error)
                if not self._waiting:
                    log.warning("%s", error)
        if ws.close_code not in (None, 1000):
            reason = f"close code {ws.close_code}"
        if self._ws is ws:
            self._ws = None
        for queue in self._waiting.values():
            queue.put_nowait(_Dropped(reason))

    def _refused(self, status: int) -> PatterConnectionError:
        if status in (401, 403):
            return PatterConnectionError(
                f"Rime rejected the API key (HTTP {status}): check RIME_API_KEY"
            )
        if status in (402, 429):
            return PatterConnectionError(f"Rime quota or concurrency limit (HTTP {status})")
        return PatterConnectionError(f"Rime refused the connection (HTTP {status})")

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key else text

    async def _disconnect(self) -> None:
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if ws is not None:  # a sentence held behind: asked for again on the next socket
            for queue in self._waiting.values():
                queue.put_nowait(_Dropped("socket closed"))

    async def aclose(self) -> None:
        """Close the socket; syntheses still running end with an error."""
        self._closed = True
        for queue in self._waiting.values():
            queue.put_nowait(ProviderError("Rime stream closed"))
        if self._prewarm is not None:
            self._prewarm.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prewarm
        await self._disconnect()
        if self._http is not None:
            await self._http.close()
            self._http = None

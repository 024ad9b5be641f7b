"""CartesiaTTS: Cartesia Sonic over one WebSocket per call, with continuations inside a reply.

Uses the official `cartesia` SDK (4.x): `AsyncCartesia(websocket_base_url=...)` points its
async WebSocket at any host, a loopback fake included, and `tts.websocket_connect()` gives the
raw connection, which this module wraps as the connection of `core.tts_stream` (the socket
machinery every socket TTS shares: its reader, the reconnect, the stall). (The SDK's context
helper is not used: it expects a whole transcript per context, while a call speaks sentence by
sentence and must stop one the moment the caller barges in.) The SDK is imported in a worker
thread on the first `open()`: it takes about half a second.

Continuations — the rule. The pipeline calls `synthesize()` once per sentence. Sentences of one
reply share a Cartesia context, sent with `continue: true`, so the voice's prosody carries from
one to the next; each sentence ends with a `flush`, and its audio is the chunks with that
flush's `flush_id`, up to its `flush_done`. A sentence continues the current context while a
sentence on it is still being synthesized (the pipeline asks for the next sentence while one
streams; the context speaks its flushes in order, so that one follows with no gap), or when
the previous one finished normally within `continue_within` seconds (default 1.0): back-to-back
sentences of one reply do, while the next reply (which waits for the caller to speak) does not.
Otherwise the old context is ended (`transcript: ""`, `continue: false`) and a new one begins.
Cancelling a sentence (closing its iterator: barge-in, or a sentence given up mid-way) sends
`{"context_id", "cancel": true}`, which stops the whole context: a sentence queued behind it on
that context is asked for again on a new one, and the next sentence starts a new context.

A sentence that gives no audio in time is cancelled by the pipeline's first-audio deadline
(`core.synthesis`) and asked for once more through `synthesize_fallback()`, on a fresh socket;
sentences still on the old one move to the new one with it.

Audio is asked for as `pcm_mulaw` at 8000 Hz by default: the carrier's own format, played
untouched. A socket dropped mid-sentence is reopened once and the sentence re-requested on a new
context, skipping the bytes already played; a refused key or exhausted quota is a
`PatterConnectionError` naming Cartesia, never showing the key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import inspect
import json
import logging
import uuid
from collections.abc import AsyncIterator, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from getpatter.core.credentials import Secret, credential, validate_http_url
from getpatter.core.providers import AudioEncoding
from getpatter.core.sdk_import import in_sdk_thread, preload
from getpatter.core.tts_stream import END, Closed, Dropped, Sentence, SocketTTSStream
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError

if TYPE_CHECKING:
    from cartesia import AsyncCartesia

log = logging.getLogger(__name__)
#: what the SDK's socket imports when it first opens, if not before (on the loop)
_LAZY: Final = ("websockets.asyncio.client", "anyio._backends._asyncio", "anyio.lowlevel")

__all__ = ["DEFAULT_VOICE_ID", "CartesiaOptions", "CartesiaStream", "CartesiaTTS"]

DEFAULT_VOICE_ID: Final = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"  # the SDK's default voice
_WS_PATH: Final = "/tts/websocket"
#: A sentence whose socket sends nothing for this long is treated as dropped (a dead peer
#: that never closed the connection).
STALL_SECONDS: Final = 10.0
_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000)
_WIRE_ENCODING: Final[dict[str, str]] = {"mulaw": "pcm_mulaw", "pcm16": "pcm_s16le"}


@dataclass(frozen=True, slots=True)
class CartesiaOptions:
    """Everything CartesiaTTS sends except the key (which is never stored here)."""

    voice_id: str = DEFAULT_VOICE_ID
    model_id: str = "sonic-3"
    base_url: str = "https://api.cartesia.ai"
    ws_url: str = "wss://api.cartesia.ai/tts/websocket"
    version: str = "2026-08-14"
    language: str = "en"
    sample_rate: int = 8000
    encoding: AudioEncoding = "mulaw"
    continue_within: float = 1.0
    connect_timeout: float = 5.0
    generation_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.voice_id, str) or not self.voice_id.strip():
            raise PatterConfigError("CartesiaTTS voice_id must be a Cartesia voice ID")
        url = validate_http_url(self.base_url, "CartesiaTTS(base_url=...)")
        object.__setattr__(self, "base_url", url)
        parts = urlsplit(self.ws_url)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise PatterConfigError(
                f"CartesiaTTS ws_url must be a ws:// or wss:// URL, got {self.ws_url!r}"
            )
        if not parts.path.rstrip("/").endswith(_WS_PATH):
            raise PatterConfigError(
                f"CartesiaTTS ws_url must end with {_WS_PATH!r}, got {self.ws_url!r}"
            )
        if self.encoding not in _WIRE_ENCODING:
            raise PatterConfigError(
                f"CartesiaTTS encoding must be 'mulaw' or 'pcm16', got {self.encoding!r}"
            )
        if self.sample_rate not in _RATES or (
            self.encoding == "mulaw" and self.sample_rate != 8000
        ):
            raise PatterConfigError(
                f"CartesiaTTS sample_rate must be one of {_RATES} (8000 for mulaw), "
                f"got {self.sample_rate!r}"
            )

    @property
    def websocket_base_url(self) -> str:
        """What the SDK takes: the socket URL without `/tts/websocket`."""
        return self.ws_url.rstrip("/")[: -len(_WS_PATH)]


class CartesiaTTS:
    """Cartesia Sonic text to speech (registered as tts ``"cartesia"``).

    - `voice_id`: a Cartesia voice; `model_id`: `sonic-3`; `language`: e.g. `"en"`.
    - `api_key`: defaults to `CARTESIA_API_KEY`; missing → `PatterConfigError` now.
    - `base_url` / `ws_url`: the REST host and the full socket URL (a proxy, a test fake).
    - `version`: the `Cartesia-Version` date sent on the socket.
    - `sample_rate` / `encoding`: 8000 / "mulaw" (the carrier's format) or PCM at a listed rate.
    - `continue_within`: see the module doc: how close sentences must be to share a context.
    """

    def __init__(
        self,
        voice_id: str = DEFAULT_VOICE_ID,
        *,
        api_key: str | None = None,
        model_id: str = "sonic-3",
        base_url: str = "https://api.cartesia.ai",
        ws_url: str = "wss://api.cartesia.ai/tts/websocket",
        version: str = "2026-08-14",
        language: str = "en",
        sample_rate: int = 8000,
        encoding: AudioEncoding = "mulaw",
        continue_within: float = 1.0,
        connect_timeout: float = 5.0,
        generation_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.options = CartesiaOptions(
            voice_id=voice_id,
            model_id=model_id,
            base_url=base_url,
            ws_url=ws_url,
            version=version,
            language=language,
            sample_rate=sample_rate,
            encoding=encoding,
            continue_within=continue_within,
            connect_timeout=connect_timeout,
            generation_config=dict(generation_config or {}),
        )
        self._key = Secret(
            credential(api_key, "CARTESIA_API_KEY", "Cartesia API key", "CartesiaTTS(api_key=...)")
        )
        self.sample_rate: int = sample_rate
        self.encoding: AudioEncoding = encoding
        preload("cartesia")  # so the first call does not wait for it

    def __repr__(self) -> str:
        o = self.options
        return (
            f"CartesiaTTS(voice_id={o.voice_id!r}, model_id={o.model_id!r}, "
            f"encoding={o.encoding!r}, sample_rate={o.sample_rate}, api_key=<set>)"
        )

    async def open(self) -> CartesiaStream:
        """The call's stream, connected now so the greeting does not wait for a handshake."""
        client = await in_sdk_thread(self._new_client)
        return await CartesiaStream(self.options, self._key, client).connected()

    def _new_client(self) -> AsyncCartesia:
        """Run in the SDK thread: the import, the client, and what it imports lazily."""
        sdk = importlib.import_module("cartesia")
        if "websocket_base_url" not in inspect.signature(sdk.AsyncCartesia).parameters:
            raise PatterConfigError(
                "CartesiaTTS needs the cartesia SDK 4.x: pip install -U cartesia"
            )
        client = sdk.AsyncCartesia(
            api_key=self._key.reveal(),
            base_url=self.options.base_url,
            websocket_base_url=self.options.websocket_base_url,
            default_headers={"cartesia-version": self.options.version},
        )
        _ = client.tts  # imported on first access: here, not on the loop
        for module in _LAZY:
            importlib.import_module(module)
        return client


@dataclass(slots=True)
class _Context:
    id: str
    conn: Any  # the socket it lives on
    flushes: int = 0  # flushes sent: the latest sentence's flush_id
    ended_at: float | None = None  # when its last sentence finished normally
    cancelled: bool = False


@dataclass(eq=False, slots=True)
class _Sentence(Sentence):
    context: _Context | None = None
    flush_id: int = 0  # its flush's: its audio is the chunks with it


class _Socket:
    """The SDK's socket connection as a `TTSConnection`: JSON messages both ways."""

    closed = False  # a socket is forgotten when it ends

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.conn.send(message)
        except Exception as exc:  # websockets' ConnectionClosed and friends
            raise Closed(type(exc).__name__) from None

    async def receive(self) -> dict[str, Any]:
        while True:
            try:
                raw = await self.conn.recv_bytes()
            except Exception as exc:  # the socket closed: websockets' ConnectionClosed
                raise Closed(type(exc).__name__) from None
            try:
                message = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(message, dict):
                return message

    async def close(self) -> None:
        await self.conn.close()


class CartesiaStream(SocketTTSStream[_Sentence]):
    """One call's Cartesia socket: `synthesize()` a sentence (the next may be asked for while
    one streams), `aclose()`."""

    provider = "Cartesia"
    key_env = "CARTESIA_API_KEY"

    def __init__(self, options: CartesiaOptions, key: Secret, client: AsyncCartesia) -> None:
        super().__init__(key)
        self.options = options
        self._client = client
        self._contexts: dict[str, _Context] = {}  # by id: contexts with sentences waiting
        self._current: _Context | None = None

    # --- synthesis ------------------------------------------------------------------------

    async def synthesize_fallback(self, text: str) -> AsyncIterator[bytes]:
        """The sentence on a fresh socket: the pipeline's retry when the first try gave no
        audio in time. The old socket may be dead without knowing it (or the context stuck),
        so it is let go; a sentence still on it is asked for again on the new one."""
        if self._conn is not None:
            self._current = None
            self._let_go()
        async with contextlib.aclosing(self.synthesize(text)) as audio:
            async for chunk in audio:
                yield chunk

    def _stall_s(self) -> float:
        return STALL_SECONDS

    def _waiting_on(self, context: _Context) -> list[_Sentence]:
        """The sentences of `context` still being synthesized, in flush order."""
        return [s for s in self._waiting.values() if s.context is context]

    def _context_for_sentence(self, conn: Any) -> tuple[_Context, list[dict[str, Any]]]:
        """The context this sentence goes on, and any message ending the previous one."""
        loop_now = asyncio.get_running_loop().time()
        current = self._current
        if current is not None and current.conn is conn and not current.cancelled:
            if self._waiting_on(current):  # the sentence before is still being spoken
                return current, []
            if (
                current.ended_at is not None
                and loop_now - current.ended_at <= self.options.continue_within
                and self._busy == 1
            ):
                return current, []
        ending = []
        if current is not None and current.conn is conn and not current.cancelled:
            ending = [self._request(current.id, "", more=False)]
        self._current = _Context(f"ctx-{uuid.uuid4().hex[:12]}", conn)
        self._contexts[self._current.id] = self._current
        return self._current, ending

    def _request(
        self, context_id: str, transcript: str, *, more: bool, flush: bool = False
    ) -> dict[str, Any]:
        o = self.options
        request: dict[str, Any] = {
            "context_id": context_id,
            "model_id": o.model_id,
            "transcript": transcript,
            "voice": {"mode": "id", "id": o.voice_id},
            "language": o.language,
            "output_format": {
                "container": "raw",
                "encoding": _WIRE_ENCODING[o.encoding],
                "sample_rate": o.sample_rate,
            },
            "continue": more,
        }
        if o.generation_config:
            request["generation_config"] = dict(o.generation_config)
        if flush:
            request["flush"] = True
        return request

    def _new_sentence(self, text: str) -> _Sentence:
        return _Sentence(text)

    def _begin(self, sentence: _Sentence) -> list[dict[str, Any]]:
        context, ending = self._context_for_sentence(sentence.conn)
        context.ended_at = None
        context.flushes += 1
        sentence.context, sentence.flush_id = context, context.flushes
        sentence.key = (context.id, context.flushes)
        return [
            *ending,
            self._request(context.id, sentence.text + " ", more=True),
            self._request(context.id, "", more=True, flush=True),
        ]

    async def _end(self, sentence: _Sentence, finished: bool) -> None:
        context, conn = sentence.context, sentence.conn
        if context is None:
            return
        if finished:
            if not self._waiting_on(context):
                context.ended_at = asyncio.get_running_loop().time()
        elif not context.cancelled:  # cancelled, failed or dropped: stop it, for good
            context.cancelled = True
            self._contexts.pop(context.id, None)
            if self._current is context:
                self._current = None
            # a sentence queued behind on this context is asked for again on a new one
            for other in self._waiting_on(context):
                other.queue.put_nowait(Dropped("its context was cancelled"))
            if self._conn is conn:
                with contextlib.suppress(Dropped):
                    await self._send(conn, {"context_id": context.id, "cancel": True})

    # --- the socket ------------------------------------------------------------------------

    async def _open(self) -> _Socket:
        from websockets.exceptions import InvalidStatus

        manager = self._client.tts.websocket_connect(
            websocket_connection_options={"max_size": 16 * 1024 * 1024}
        )
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                conn = await manager.enter()
        except InvalidStatus as exc:
            raise self._refused_by(exc.response.status_code, exc.response.body) from None
        except (OSError, TimeoutError, Exception) as exc:
            raise PatterConnectionError(
                f"Cartesia: could not connect to {self.options.ws_url} ({type(exc).__name__})"
            ) from None
        return _Socket(conn)

    def _parse(self, conn: _Socket, message: dict[str, Any]) -> list[tuple[Hashable, Any]]:
        """A message of one context to the sentence it belongs to: by `flush_id`, else (no
        id) the oldest sentence still waiting; a `done` or an error ends them all."""
        context = self._contexts.get(str(message.get("context_id")))
        kind = message.get("type")
        if context is None:
            if kind == "error" and not message.get("context_id"):
                log.warning("Cartesia: %s", self._error_message(message))
            return []
        waiting = self._waiting_on(context)
        flush_id = message.get("flush_id")
        if kind in ("chunk", "flush_done"):
            if flush_id is None and not waiting:
                return []
            key = (context.id, flush_id if flush_id is not None else waiting[0].flush_id)
            if kind == "chunk":
                return [(key, base64.b64decode(message.get("data") or ""))]
            return [(key, END)] if flush_id is not None else []
        if kind == "done":
            self._contexts.pop(context.id, None)
            if waiting and self._current is context:
                self._current = None
            return [(s.key, END) for s in waiting]
        if kind == "error":
            if waiting and self._current is context:
                self._current = None
            error = self._error_message(message)
            return [(s.key, error) for s in waiting]
        return []

    def _conn_lost(self, conn: _Socket) -> None:
        if self._current is not None and self._current.conn is conn:
            self._current = None
        for context in [c for c in self._contexts.values() if c.conn is conn]:
            self._contexts.pop(context.id, None)

    def _refused_by(self, status: int, body: bytes | None) -> PatterConnectionError:
        try:
            detail = json.loads(body or b"{}")
            message = str(detail.get("message") or detail.get("error") or "")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            message = ""
        return self._refused(status, message)

    def _error_message(self, message: dict[str, Any]) -> Exception:
        status = message.get("status_code")
        text = self._scrub(f"{message.get('title') or 'error'}: {message.get('message') or ''}")
        if status in (401, 402, 403, 429):
            return PatterConnectionError(f"Cartesia refused the request (status {status}): {text}")
        return ProviderError(f"Cartesia error (status {status}): {text}")

    async def _after_close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.close()

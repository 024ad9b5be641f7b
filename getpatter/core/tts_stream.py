"""SocketTTSStream: what every streaming (socket) TTS plugin shares, so a plugin writes only
its wire format (as `core.stt_stream` does for STT, and LiveKit's stream bases for theirs).

A plugin says how to open a connection (a URL and headers, or an SDK call) and map a refusal
to our errors, the messages that ask for one sentence, and how a received message routes:
`(sentence key, audio bytes | END | an exception)`. The connection is anything with
`send`/`receive`/`close` (`TTSConnection`): an aiohttp socket (`WebSocket` here) or an SDK's
connection wrapped by the plugin. This base owns the rest, the same for every provider:

- **One connection per stream**, opened lazily (`connect()`, one opener at a time; a plugin's
  `open()` calls it so the greeting does not wait for a handshake), and a reader task per
  connection that routes each message to the sentence that asked for it.
- **A sentence** is registered under its key before its messages go out (its audio may follow
  at once), and its audio streams until its END. Closing the iterator early cancels it; what
  a cancel costs (a context closed, the socket dropped and reopened) is the plugin's `_end`.
- **A drop mid-sentence** (the connection closes, a send fails, or, with `_stall_s`, nothing
  arrives for that long) reconnects once and asks for the sentence again, skipping the bytes
  already delivered (the same text and voice give the same audio). A second drop is a
  `PatterConnectionError` (or the plugin's `_fallback`, e.g. an HTTP endpoint).
- **Sentences waiting on a connection that ends** get its error: `Dropped` (asked for again),
  or what the plugin's `_lost_error` makes of it (a refused key).
- **Secrets**: refusals name the provider and the key's variable; `_scrub` takes the key out
  of any text the provider sent back.
- `aclose()` fails the sentences still running, closes every connection and the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar

import aiohttp

from getpatter.core.credentials import Secret
from getpatter.errors import PatterConnectionError, ProviderError

__all__ = [
    "END",
    "Closed",
    "Dropped",
    "Refused",
    "Sentence",
    "SocketTTSStream",
    "TTSConnection",
    "Unreachable",
    "WebSocket",
    "open_websocket",
]

log = logging.getLogger(__name__)

#: Routed to a sentence: its audio is complete.
END: Final = object()


class Dropped(Exception):
    """The connection ended (or went silent) while a sentence still waited for its audio: the
    sentence is asked for once more on a new connection."""


class Closed(Exception):
    """A `TTSConnection` has ended (raised by `receive`, or by a `send` that failed); the
    message says why, for the log."""


class Refused(Exception):
    """The handshake was answered with an HTTP error status."""

    def __init__(self, status: int, body: bytes | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Unreachable(Exception):
    """The connection could not be opened for a reason other than a refusal (network, timeout);
    a plugin with another way to the audio (`_fallback`) uses it instead."""


class TTSConnection(Protocol):
    """What the base needs of a connection. `send` and `receive` raise `Closed` when it ends."""

    @property
    def closed(self) -> bool: ...

    async def send(self, message: Any) -> Any: ...

    async def receive(self) -> Any: ...

    async def close(self) -> None: ...


class WebSocket:
    """An aiohttp client socket as a `TTSConnection`: JSON messages out; text (str) and binary
    (bytes) frames in."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        #: the provider's latest error message on this socket, for the error its close means
        self.last_error: dict[str, Any] = {}

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send(self, message: Mapping[str, Any]) -> None:
        try:
            await self.ws.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise Closed(type(exc).__name__) from None

    async def receive(self) -> str | bytes:
        message = await self.ws.receive()
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            data: str | bytes = message.data
            return data
        reason = "closed"
        if message.type == aiohttp.WSMsgType.ERROR:
            reason = type(self.ws.exception()).__name__
        if self.ws.close_code not in (None, 1000):
            reason = f"close code {self.ws.close_code}"
        raise Closed(reason)

    async def close(self) -> None:
        await self.ws.close()


async def open_websocket(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    connect_s: float,
    max_msg_size: int,
) -> WebSocket:
    """Open an aiohttp socket: a refused handshake is `Refused`, anything else `Unreachable`."""
    try:
        async with asyncio.timeout(connect_s):
            ws = await session.ws_connect(
                url, headers=dict(headers), max_msg_size=max_msg_size, autoping=True
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise Refused(exc.status) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Unreachable(type(exc).__name__) from None
    return WebSocket(ws)


@dataclass(eq=False, slots=True)
class Sentence:
    """One attempt at one sentence: its key (what its messages are routed by), the connection
    it went out on, and the queue its audio, END or error arrive on. Plugins subclass it."""

    text: str
    key: Hashable = None
    conn: Any = None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


S = TypeVar("S", bound=Sentence)


class SocketTTSStream(ABC, Generic[S]):
    """One call's socket TTS: `synthesize()` a sentence (the next may be asked for while one
    streams), `aclose()`. See the module doc for what a plugin implements."""

    provider: ClassVar[str]  # for messages: "Rime"
    key_env: ClassVar[str]  # the key's variable, named in refusals: "RIME_API_KEY"
    socket_word: ClassVar[str] = "socket"  # "session" for LMNT
    close_timeout: ClassVar[float] = 2.0

    def __init__(self, key: Secret) -> None:
        self._key = key
        self._conn: Any = None  # the current connection; None until opened, and once lost
        self._readers: dict[Any, asyncio.Task[None]] = {}  # connection → its reader
        self._waiting: dict[Hashable, S] = {}  # sentences waiting for audio, in send order
        self._connecting = asyncio.Lock()
        self._prewarm: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # connections let go, being closed
        self._busy = 0  # sentences being synthesized right now (a retry counts once)
        self._closed = False

    # --- what a plugin implements ----------------------------------------------------------

    @abstractmethod
    async def _open(self) -> Any:
        """Open a connection (a `TTSConnection`), bounded by the plugin's connect timeout; a
        refused key is a `PatterConnectionError`, a network failure `PatterConnectionError` or
        `Unreachable`."""

    @abstractmethod
    def _new_sentence(self, text: str) -> S:
        """A sentence's state, before its connection is known."""

    @abstractmethod
    def _begin(self, sentence: S) -> list[Any]:
        """Set `sentence.key` (it is on `sentence.conn`) and return the messages asking for it.
        Called with the sentences already waiting, not yet this one."""

    @abstractmethod
    def _parse(self, conn: Any, message: Any) -> Iterable[tuple[Hashable, Any]]:
        """A received message as `(key, audio | END | exception)` for the sentences it is for
        (none: it is not for any). An END removes its sentence from the waiting."""

    async def _connect_for(self, sentence: S) -> Any:
        """The connection a sentence goes out on."""
        return await self.connect()

    async def _on_audio(self, sentence: S, audio: bytes) -> bytes:
        """Each piece of a sentence's audio, before the skip of a retry (a header to strip)."""
        return audio

    async def _end(self, sentence: S, finished: bool) -> None:
        """The sentence is over: `finished` (its END came), or cancelled, failed or dropped."""
        return None

    def _stall_s(self) -> float | None:
        """A sentence whose connection sends nothing for this long counts as dropped."""
        return None

    def _lost_error(self, conn: Any, reason: str) -> BaseException:
        """What a connection's end means to the sentences still waiting on it."""
        return Dropped(reason)

    def _conn_lost(self, conn: Any) -> None:
        """A connection ended or was dropped: settle the plugin's state kept for it."""
        return None

    async def _goodbye(self, conn: Any) -> None:
        """Before a connection is closed on purpose (the provider's end-of-stream message)."""
        return None

    def _socket_usable(self) -> bool:
        """False: sentences go straight to `_fallback`."""
        return True

    def _fallback(self, text: str, skip: int, why: Exception | None) -> AsyncGenerator[bytes, None]:
        """The sentence without the socket: it dropped twice (`why` a `Dropped`), could not be
        opened (`Unreachable`), or is not to be used (None). By default, a failure."""
        if isinstance(why, Dropped):
            raise PatterConnectionError(
                f"{self.provider}: the {self.socket_word} dropped again ({why})"
            ) from None
        raise why or PatterConnectionError(f"{self.provider}: no {self.socket_word}")

    async def _after_close(self) -> None:
        """The stream is closed: release the client / HTTP session."""
        return None

    # --- synthesis -------------------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Audio for one sentence. Closing this iterator early cancels it at once."""
        if self._closed:
            raise ProviderError(f"{self.provider} stream is closed")
        text = " ".join(text.split())
        if not text:
            return
        delivered = 0
        why: Exception | None = None
        self._busy += 1
        try:
            if self._socket_usable():
                for attempt in (1, 2):
                    try:
                        async with contextlib.aclosing(self._attempt(text, delivered)) as audio:
                            async for chunk in audio:
                                delivered += len(chunk)
                                yield chunk
                        return
                    except Dropped as exc:
                        why = exc
                        if attempt == 2:
                            break
                        log.warning(
                            "%s %s dropped mid-sentence (%s): reconnecting",
                            self.provider,
                            self.socket_word,
                            exc,
                        )
                    except Unreachable as exc:
                        why = exc
                        break
            async with contextlib.aclosing(self._fallback(text, delivered, why)) as audio:
                async for chunk in audio:
                    yield chunk
        finally:
            self._busy -= 1

    async def _attempt(self, text: str, skip: int) -> AsyncGenerator[bytes, None]:
        sentence = self._new_sentence(text)
        finished = False
        try:
            sentence.conn = await self._connect_for(sentence)
            messages = self._begin(sentence)
            self._waiting[sentence.key] = sentence
            for message in messages:
                await self._send(sentence.conn, message)
            while (item := await self._next(sentence)) is not END:
                if isinstance(item, BaseException):
                    raise item
                audio = await self._on_audio(sentence, item)
                if skip:
                    cut = min(skip, len(audio))
                    audio, skip = audio[cut:], skip - cut
                if audio:
                    yield audio
            finished = True
        finally:
            if self._waiting.get(sentence.key) is sentence:
                del self._waiting[sentence.key]
            await self._end(sentence, finished)

    async def _next(self, sentence: S) -> Any:
        stall = self._stall_s()
        if stall is None:
            return await sentence.queue.get()
        try:
            return await asyncio.wait_for(sentence.queue.get(), stall)
        except TimeoutError:
            # a silent connection is a dead one: the retry opens anew
            await self._drop(sentence.conn, f"no audio for {stall:.0f} s")
            return Dropped(f"no audio for {stall:.0f} s")

    async def _send(self, conn: Any, message: Any) -> Any:
        try:
            return await conn.send(message)
        except Closed as exc:
            raise Dropped(str(exc)) from None

    # --- helpers for plugins ---------------------------------------------------------------

    def _keys(self, conn: Any) -> list[Hashable]:
        """The keys of the sentences waiting on `conn`, oldest first."""
        return [s.key for s in self._waiting.values() if s.conn is conn]

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key else text

    def _refused(self, status: int, message: str | None = None) -> PatterConnectionError:
        """A refused handshake; `message` (the provider's words, scrubbed) when it sent any."""
        tail = "" if message is None else f": {self._scrub(message)[:200]}"
        if status in (401, 403):
            return PatterConnectionError(
                f"{self.provider} rejected the API key (HTTP {status}): check {self.key_env}"
            )
        if status in (402, 429):
            return PatterConnectionError(
                f"{self.provider} quota or concurrency limit (HTTP {status}){tail}"
            )
        return PatterConnectionError(
            f"{self.provider} refused the connection (HTTP {status}){tail}"
        )

    def _prewarm_next(self) -> None:
        """Open the next connection in the background (after one was dropped on purpose)."""
        if not self._closed:
            self._prewarm = asyncio.get_running_loop().create_task(self._warm())

    def _let_go(self) -> None:
        """Forget the current connection now and close it in the background: the next sentence
        opens a new one, and those still on it are asked for again there."""
        conn, self._conn = self._conn, None
        if conn is not None:
            closing = asyncio.get_running_loop().create_task(self._drop(conn, "socket replaced"))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    # --- the connection --------------------------------------------------------------------

    async def connected(self) -> Self:
        """This stream, its connection open now, so the greeting does not wait for a handshake;
        a stream that cannot connect is closed and the error raised (what `open()` returns)."""
        try:
            await self.connect()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def connect(self) -> Any:
        """The open connection, opening it if needed (one opener at a time)."""
        async with self._connecting:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            if self._closed:
                raise ProviderError(f"{self.provider} stream is closed")
            conn = await self._open()
            self._conn = conn
            name = f"{self.provider.lower()}-tts-reader"
            self._readers[conn] = asyncio.get_running_loop().create_task(
                self._read(conn), name=name
            )
            return conn

    async def _warm(self) -> None:
        try:
            await self.connect()
        except Exception as exc:  # the next sentence will try again and report it
            log.info(
                "%s: reopening the %s failed for now (%s)", self.provider, self.socket_word, exc
            )

    async def _read(self, conn: Any) -> None:
        """Route each message to the sentences it is for; when the connection ends, tell the
        ones still waiting on it."""
        try:
            while True:
                message = await conn.receive()
                for key, item in self._parse(conn, message):
                    self._put(key, item)
        except Closed as exc:
            reason = str(exc)
        except Exception as exc:  # a message we cannot read ends the connection too
            reason = type(exc).__name__
            log.debug("%s reader failed: %r", self.provider, exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self.close_timeout)
        self._readers.pop(conn, None)
        if self._conn is conn:
            self._conn = None
        self._lost(conn, self._lost_error(conn, reason))

    def _put(self, key: Hashable, item: Any) -> None:
        sentence = self._waiting.get(key)
        if sentence is None:
            return
        if item is END:
            del self._waiting[key]
        sentence.queue.put_nowait(item)

    def _lost(self, conn: Any, error: BaseException) -> None:
        self._conn_lost(conn)
        for sentence in self._waiting.values():
            if sentence.conn is conn:
                sentence.queue.put_nowait(error)

    async def _drop(self, conn: Any, why: str = "socket replaced") -> None:
        """Close `conn` (its reader stops); the sentences on it are asked for again."""
        if conn is None:
            return
        if self._conn is conn:
            self._conn = None
        reader = self._readers.pop(conn, None)
        with contextlib.suppress(Exception):
            await self._goodbye(conn)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), self.close_timeout)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._lost(conn, Dropped(why))

    async def aclose(self) -> None:
        """Close every connection and the client; syntheses still running end with an error."""
        self._closed = True
        for sentence in self._waiting.values():
            sentence.queue.put_nowait(ProviderError(f"{self.provider} stream closed"))
        if self._prewarm is not None:
            self._prewarm.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prewarm
        await self._drop(self._conn, "stream closed")
        for closing in list(self._closing):
            with contextlib.suppress(Exception):
                await closing
        for conn in list(self._readers):
            await self._drop(conn, "stream closed")
        await self._after_close()

"""ReconnectingSTTStream: the call-level policy every streaming STT plugin shares.

A streaming STT plugin only speaks its wire format: how to open a socket (and map a refusal to
our errors), how to read it, and how to write audio, a finalize, a keep-alive and the close.
This base owns what a phone call needs around that, the same for every provider (as LiveKit's
STT stream base owns retries so its plugins write only their protocol):

- **Replay.** Audio no final covers yet is kept (up to `replay_max_s`) and sent again on the
  new socket after a drop, so an utterance cut by the drop is still transcribed whole. The
  plugin says how far finals reach (`_final_until`); times it reports are socket seconds, made
  stream seconds by `_stream_time` (a new socket's clock starts at the replay's start).
- **Reconnect, and when to give up.** A dropped socket is reopened. A plugin's fatal verdict
  (a refused key, a protocol error of ours), a reconnect that fails, or a socket that drops
  again within `flap_s` of a reconnect fails the stream.
- **Stalls.** A socket that has been sent speech and a finalize but has answered nothing at all
  for `stall_timeout` is treated as dropped: reopened, and the utterance replayed.
- **Keep-alives.** With `keepalive_s`, the plugin's keep-alive goes out after that long without
  a write (the pipeline sends audio only while the caller speaks; providers close idle sockets).
- **Failures** end `transcripts()` with the error, and later `send()`/`finalize()` raise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from getpatter.core.providers import Transcript
from getpatter.errors import PatterConnectionError

__all__ = ["Dropped", "ReconnectingSTTStream"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Dropped:
    """How a socket ended: `why` for the log, `fatal` when reconnecting cannot help."""

    why: str
    fatal: Exception | None = None


class ReconnectingSTTStream(ABC):
    """One call's streaming STT: audio in, transcripts out, reconnected if the socket drops.

    Subclasses set `provider` and call `__init__` with the audio's bytes per second, then
    implement the abstract wire methods. `start()` opens the first socket (its errors raise to
    the caller of the STT's `open()`).
    """

    provider: ClassVar[str]  # for messages: "Deepgram"
    flap_s: ClassVar[float] = 10.0
    stall_timeout: ClassVar[float | None] = 1.5
    replay_chunk_s: ClassVar[float] = 1.0  # replayed audio goes out in pieces this long

    def __init__(
        self,
        *,
        bytes_per_s: int,
        sample_width: int,
        close_timeout: float,
        replay_max_s: float = 30.0,
        keepalive_s: float | None = None,
    ) -> None:
        self._bytes_per_s = bytes_per_s
        self._width = sample_width
        self._close_timeout = close_timeout
        self._replay_max = int(replay_max_s * bytes_per_s) // sample_width * sample_width
        self._keepalive_s = keepalive_s
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._lock = asyncio.Lock()  # one writer at a time, and a replay goes first
        self._socket: Any = None  # None while reconnecting
        self._replay = bytearray()  # audio sent (or meant to be) that no final covers yet
        self._replay_at = 0  # position of _replay[0] on the current socket, in bytes
        self._base_s = 0.0  # stream time of the current socket's position 0
        self._finalize_pending = False
        self._closing = False
        self._stalled = False
        self._error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._last_write = self._last_heard = self._connected_at = self._loop.time()
        self._unheard = 0  # bytes sent since the provider last said anything
        self._runner: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._stall_check: asyncio.TimerHandle | None = None
        self.reconnects = 0

    # --- what a plugin implements --------------------------------------------------------

    @abstractmethod
    async def _open(self) -> Any:
        """Open a socket and wait until it takes audio; raise PatterConnectionError or
        ProviderError on refusal. Reset per-socket state here."""

    @abstractmethod
    async def _read(self, socket: Any) -> Dropped:
        """Handle messages until the socket closes (call `_heard()` for each, `_emit()` for
        transcripts); return how it closed."""

    @abstractmethod
    async def _send_audio(self, socket: Any, audio: bytes) -> None: ...

    @abstractmethod
    async def _send_finalize(self, socket: Any) -> bool:
        """Ask for the final of the audio so far; False when there was nothing to ask."""

    @abstractmethod
    async def _send_close(self, socket: Any) -> None:
        """The provider's end of stream: it flushes its last results, then closes."""

    @abstractmethod
    async def _close_socket(self, socket: Any) -> None:
        """Close now (bounded; called more than once for the same socket)."""

    async def _send_keepalive(self, socket: Any) -> None:
        return None

    def _socket_lost(self) -> None:
        """The current socket dropped: settle per-socket state before it is replaced (or the
        stream fails). Not called when the stream is closed on purpose."""
        return None

    async def _after_close(self) -> None:
        """The stream is closed: release what the plugin holds (an HTTP session...)."""
        return None

    # --- helpers for plugins -------------------------------------------------------------

    def _emit(self, transcript: Transcript) -> None:
        self._queue.put_nowait(transcript)

    def _heard(self) -> None:
        """The provider said something: the socket is alive."""
        self._last_heard = self._loop.time()
        self._unheard = 0

    def _finalized(self) -> None:
        """The provider answered the finalize: no need to ask again on a new socket."""
        self._finalize_pending = False
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None

    def _final_until(self, socket_s: float | None) -> None:
        """Finals now cover the audio up to `socket_s` (None: all of it): it needs no replay."""
        if socket_s is None:
            cut = len(self._replay)
        else:
            cut = round(socket_s * self._bytes_per_s) - self._replay_at
            cut = min(len(self._replay), max(0, cut - cut % self._width))
        del self._replay[:cut]
        self._replay_at += cut

    def _stream_time(self, socket_s: float) -> float:
        return self._base_s + socket_s

    @property
    def _socket_s(self) -> float:
        """Seconds of audio the current socket has been given (replay included)."""
        return (self._replay_at + len(self._replay)) / self._bytes_per_s

    # --- the STTStream protocol ----------------------------------------------------------

    async def send(self, audio: bytes) -> None:
        self._check()
        if not audio or self._closing:
            return
        async with self._lock:
            self._replay += audio
            excess = len(self._replay) - self._replay_max
            if excess > 0:
                excess += -excess % self._width
                del self._replay[:excess]
                self._replay_at += excess
            self._unheard += len(audio)
            if self._socket is not None:  # else: replayed once the new socket is up
                await self._write(self._send_audio, self._socket, bytes(audio))

    async def finalize(self) -> None:
        self._check()
        if self._closing:
            return
        async with self._lock:
            if self._socket is None:
                self._finalize_pending = True  # asked for on the new socket
                return
            await self._request_final(self._socket)

    def transcripts(self) -> AsyncIterator[Transcript]:
        return self._transcripts()

    async def _transcripts(self) -> AsyncIterator[Transcript]:
        while (transcript := await self._queue.get()) is not None:
            yield transcript
        if self._error is not None:
            raise self._error

    @property
    def closed(self) -> bool:
        return self._closing

    async def aclose(self) -> None:
        """The provider's end of stream, then wait (up to `close_timeout`) for its last
        results and its close; the socket is closed whatever happens."""
        if self._closing:
            return
        self._closing = True
        if self._stall_check is not None:
            self._stall_check.cancel()
        if self._keepalive is not None:
            self._keepalive.cancel()
        runner = self._runner
        if runner is not None and not runner.done() and self._socket is not None:
            try:
                async with asyncio.timeout(self._close_timeout):
                    async with self._lock:
                        await self._write(self._send_close, self._socket)
                    await asyncio.shield(runner)
            except TimeoutError:
                log.info("%s did not end the stream within %ss", self.provider, self._close_timeout)
            except Exception:
                pass  # the runner's failure is already recorded
        tasks = [t for t in (runner, self._keepalive) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._discard()
        await self._after_close()
        self._queue.put_nowait(None)

    # --- connection ----------------------------------------------------------------------

    async def start(self) -> None:
        self._socket = await self._open()
        self._connected_at = self._last_write = self._last_heard = self._loop.time()
        name = self.provider.lower()
        self._runner = self._loop.create_task(self._run(), name=f"{name}-stt")
        if self._keepalive_s is not None:
            self._keepalive = self._loop.create_task(self._keep_alive(), name=f"{name}-keepalive")

    async def _write(self, send: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """One write on the socket; a failure is left to the reader, which sees the close."""
        result: Any = None
        try:
            result = await send(*args)
        except Exception as exc:
            log.debug("%s write failed: %r", self.provider, exc)
        self._last_write = self._loop.time()
        return result

    async def _request_final(self, socket: Any) -> None:
        if await self._write(self._send_finalize, socket) is False:
            return  # nothing to finalize
        if self.stall_timeout is not None and self._stall_check is None:
            # timed from the first unanswered finalize: asking again does not reset it
            asked_at = self._loop.time()
            self._stall_check = self._loop.call_later(
                self.stall_timeout, self._check_stall, socket, asked_at
            )
        self._finalize_pending = True

    def _check_stall(self, socket: Any, asked_at: float) -> None:
        """A socket given speech and a finalize that has said nothing since is not working."""
        self._stall_check = None
        if (
            socket is self._socket
            and not self._closing
            and self._finalize_pending
            and self._last_heard < asked_at
            and self._unheard >= self._bytes_per_s // 2
        ):
            self._stalled = True
            self._loop.create_task(self._close_socket(socket), name="stt-stall-close")

    async def _run(self) -> None:
        try:
            while True:
                dropped = await self._read(self._socket)
                if self._closing:
                    return
                if self._stalled:
                    self._stalled = False
                    dropped = Dropped(f"no answer for {self.stall_timeout}s after a finalize")
                self._socket_lost()
                if self._stall_check is not None:  # the new socket gets its own
                    self._stall_check.cancel()
                    self._stall_check = None
                await self._discard()
                if dropped.fatal is not None:
                    raise dropped.fatal
                if self.reconnects and self._loop.time() - self._connected_at < self.flap_s:
                    raise PatterConnectionError(
                        f"{self.provider} dropped the stream again right after a reconnect "
                        f"({dropped.why})"
                    )
                log.warning("%s dropped the stream (%s); reconnecting", self.provider, dropped.why)
                await self._reconnect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
            log.error("%s stream failed: %s", self.provider, exc)
        finally:
            self._queue.put_nowait(None)

    async def _reconnect(self) -> None:
        self.reconnects += 1
        socket = await self._open()
        async with self._lock:
            self._socket = socket
            self._connected_at = self._last_heard = self._loop.time()
            if self._closing:
                return
            # The replay becomes the start of the new socket's audio.
            self._base_s += self._replay_at / self._bytes_per_s
            self._replay_at = 0
            self._unheard = len(self._replay)
            step = max(self._width, int(self.replay_chunk_s * self._bytes_per_s))
            step -= step % self._width
            for i in range(0, len(self._replay), step):
                await self._write(self._send_audio, socket, bytes(self._replay[i : i + step]))
            if self._finalize_pending:
                await self._request_final(socket)

    async def _discard(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            with contextlib.suppress(Exception):
                await self._close_socket(socket)

    async def _keep_alive(self) -> None:
        every = self._keepalive_s
        assert every is not None
        while True:
            await asyncio.sleep(max(0.05, self._last_write + every - self._loop.time()))
            if self._loop.time() - self._last_write < every:
                continue
            async with self._lock:
                if self._socket is not None and not self._closing:
                    await self._write(self._send_keepalive, self._socket)
                else:
                    self._last_write = self._loop.time()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

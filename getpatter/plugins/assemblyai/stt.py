"""AssemblyAISTT: AssemblyAI Universal Streaming (v3), one WebSocket per call, over aiohttp.

Why not the SDK: assemblyai's streaming client reports a refused handshake, a refused key and
a dropped socket only to `on(Error)` callbacks and never raises; its read task dies unnoticed
when a message does not fit its pydantic models (the stream would hang instead of failing or
reconnecting); its asyncio client is recent (older releases, which our ``assemblyai>=0.40``
extra allows, have only the thread-based client: two threads per call); and it leaves the
chunking the v3 API requires to the caller anyway. The protocol itself is small (binary
audio, four JSON messages), so this module speaks it directly with aiohttp, a core
dependency: no extra package needed.

Audio: ``encoding=pcm_mulaw&sample_rate=8000`` by default, so the carrier's μ-law reaches
AssemblyAI untouched. AssemblyAI takes 50–1000 ms of audio per binary frame and closes the
session (3007) otherwise, so the 20 ms carrier frames are gathered into chunks of at least
`chunk_ms`, and `finalize()` pads the last few milliseconds with silence.

Turns: partial `Turn` messages become interim transcripts; an end-of-turn `Turn` is the final
(``speech_final=True``). With `format_turns` AssemblyAI follows it with a formatted copy;
that copy is the final if it arrives within `format_wait_s`, else the unformatted one is.
`finalize()` sends ``ForceEndpoint``, which ends the turn at once.

Failures: a refused key, balance or session limit (close 1008, 3009, 40xx) raises
PatterConnectionError; a protocol error of ours (3006, 3007) raises ProviderError. Any other
drop is reconnected once, as a new AssemblyAI session; the turn in flight is lost (its audio
cannot be replayed: AssemblyAI refuses audio faster than real time), the audio of the outage
(up to `OUTAGE_MAX_S`) is sent on. A second drop within `FLAP_S` fails the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import aiohttp

from getpatter.core.credentials import Secret, credential
from getpatter.core.providers import AudioEncoding, Transcript
from getpatter.errors import PatterConnectionError, ProviderError

from .options import (
    DEFAULT_BASE_URL,
    MAX_CHUNK_MS,
    MIN_CHUNK_MS,
    AssemblyAIOptions,
    Encoding,
    _terms,
)

__all__ = ["DEFAULT_BASE_URL", "AssemblyAIOptions", "AssemblyAISTT", "AssemblyAISTTStream"]

log = logging.getLogger(__name__)

API_VERSION: Final = "2025-05-12"  # the AssemblyAI-Version header the SDK sends
OUTAGE_MAX_S: Final = 1.0  # audio kept while reconnecting (more would exceed real time)
FLAP_S: Final = 10.0
#: Close codes that a retry cannot fix: the key, the balance, the session limits.
REFUSED: Final = frozenset({1008, 3009, 4001, 4002, 4003, 4102})
#: Close codes that say our request is wrong.
BROKEN: Final = frozenset({3006, 3007, 4000, 4032, 4033, 4034, 4100, 4101})
ENGLISH, MULTILINGUAL = "universal-streaming-english", "universal-streaming-multilingual"


class AssemblyAISTT:
    """AssemblyAI streaming STT for phone audio. `api_key` defaults to ``ASSEMBLYAI_API_KEY``.

    `base_url`: where AssemblyAI streaming is (e.g. ``wss://streaming.eu.assemblyai.com``, a
    test fake). The turn options (`end_of_turn_confidence_threshold`, `min_turn_silence_ms`,
    `max_turn_silence_ms`) tune AssemblyAI's own turn detection; the pipeline's VAD still ends
    each turn with `finalize()`.
    """

    sample_rate: int
    encoding: AudioEncoding

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        sample_rate: int = 8000,
        encoding: Encoding = "pcm_mulaw",
        speech_model: str | None = None,
        format_turns: bool = True,
        end_of_turn_confidence_threshold: float | None = None,
        min_turn_silence_ms: int | None = None,
        max_turn_silence_ms: int | None = None,
        keyterms: Sequence[str] = (),
        chunk_ms: int = MIN_CHUNK_MS,
        format_wait_s: float = 0.4,
        connect_timeout: float = 10.0,
        close_timeout: float = 3.0,
    ) -> None:
        self._key = Secret(
            credential(
                api_key, "ASSEMBLYAI_API_KEY", "AssemblyAI API key", "AssemblyAISTT(api_key=...)"
            )
        )
        self.options = AssemblyAIOptions(
            base_url=base_url,
            sample_rate=sample_rate,
            encoding=encoding,
            speech_model=speech_model,
            format_turns=format_turns,
            end_of_turn_confidence_threshold=end_of_turn_confidence_threshold,
            min_turn_silence_ms=min_turn_silence_ms,
            max_turn_silence_ms=max_turn_silence_ms,
            keyterms=_terms(keyterms),
            chunk_ms=chunk_ms,
            format_wait_s=format_wait_s,
            connect_timeout=connect_timeout,
            close_timeout=close_timeout,
        )
        self.sample_rate = self.options.sample_rate
        self.encoding = "mulaw" if self.options.encoding == "pcm_mulaw" else "pcm16"

    def __repr__(self) -> str:
        o = self.options
        return (
            f"AssemblyAISTT(base_url={o.base_url!r}, encoding={o.encoding!r}, "
            f"sample_rate={o.sample_rate}, speech_model={o.speech_model!r}, api_key=<set>)"
        )

    async def open(self, *, language: str = "en") -> AssemblyAISTTStream:
        """Connect one call's session. Raises PatterConnectionError (unreachable, key or
        quota refused) or ProviderError (AssemblyAI refused the session settings)."""
        stream = AssemblyAISTTStream(self, language)
        await stream.start()
        return stream

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key else text


class AssemblyAISTTStream:
    """One call's AssemblyAI session: chunked audio in, turns out, reconnected once."""

    def __init__(self, stt: AssemblyAISTT, language: str) -> None:
        o = self._opts = stt.options
        self._stt = stt
        self._model = o.speech_model or (
            ENGLISH if language.lower().startswith("en") else MULTILINGUAL
        )
        self._width = 1 if o.encoding == "pcm_mulaw" else 2
        self._per_s = o.sample_rate * self._width  # bytes per second of audio
        self._min = self._bytes(MIN_CHUNK_MS / 1000, math.ceil)
        self._chunk = max(self._min, self._bytes(o.chunk_ms / 1000, math.ceil))
        self._max = self._bytes(MAX_CHUNK_MS / 1000, math.floor)
        self._outage_max = self._bytes(OUTAGE_MAX_S, math.floor)
        self._silence = b"\xff" if o.encoding == "pcm_mulaw" else b"\x00"
        self._pending = bytearray()  # audio not yet sent (less than a chunk, or an outage)
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._sent = 0  # bytes sent in this session
        self._base_s = 0.0  # stream time of this session's start
        self._awaiting: tuple[int, Transcript, asyncio.TimerHandle] | None = None
        self._done: set[int] = set()  # turn orders whose final went out, in this session
        self._force_on_reconnect = False
        self._closing = False
        self._error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._connected_at = 0.0
        self._runner: asyncio.Task[None] | None = None
        self.reconnects = 0
        self.session_id: str | None = None
        self.termination: dict[str, Any] | None = None

    def _bytes(self, seconds: float, rounding: Any) -> int:
        return int(rounding(seconds * self._opts.sample_rate)) * self._width

    # --- the STTStream protocol ----------------------------------------------------------

    async def send(self, audio: bytes) -> None:
        self._check()
        if not audio or self._closing:
            return
        async with self._lock:
            self._pending += audio
            if self._ws is None:  # reconnecting: keep only the latest OUTAGE_MAX_S
                excess = len(self._pending) - self._outage_max
                if excess > 0:
                    del self._pending[: excess + (-excess) % self._width]
            elif len(self._pending) >= self._chunk:
                await self._flush(pad=False)

    async def finalize(self) -> None:
        self._check()
        if self._closing:
            return
        async with self._lock:
            if self._ws is None:
                self._force_on_reconnect = True
                return
            await self._flush(pad=True)
            await self._send_json({"type": "ForceEndpoint"})

    def transcripts(self) -> AsyncIterator[Transcript]:
        return self._transcripts()

    async def _transcripts(self) -> AsyncIterator[Transcript]:
        while (transcript := await self._queue.get()) is not None:
            yield transcript
        if self._error is not None:
            raise self._error

    async def aclose(self) -> None:
        """Terminate, then wait (up to `close_timeout`) for the last turns, Termination and
        AssemblyAI's close; the socket and HTTP session are closed whatever happens."""
        if self._closing:
            return
        self._closing = True
        runner = self._runner
        if runner is not None and not runner.done() and self._ws is not None:
            try:
                async with asyncio.timeout(self._opts.close_timeout):
                    async with self._lock:
                        await self._send_json({"type": "Terminate"})
                    await asyncio.shield(runner)
            except TimeoutError:
                log.info("AssemblyAI did not end the session within %ss", self._opts.close_timeout)
            except Exception:
                pass  # the runner's failure is already recorded
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self._flush_awaiting()
        await self._discard()
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._queue.put_nowait(None)

    # --- connection ----------------------------------------------------------------------

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._connect()
        except BaseException:
            await self._http.close()
            self._http = None
            raise
        self._connected_at = self._loop.time()
        self._runner = self._loop.create_task(self._run(), name="assemblyai-stt")

    def _params(self) -> dict[str, str]:
        o = self._opts
        params = {
            "sample_rate": str(o.sample_rate),
            "encoding": o.encoding,
            "speech_model": self._model,
            "format_turns": "true" if o.format_turns else "false",
        }
        if o.end_of_turn_confidence_threshold is not None:
            params["end_of_turn_confidence_threshold"] = str(o.end_of_turn_confidence_threshold)
        if o.min_turn_silence_ms is not None:
            params["min_turn_silence"] = str(o.min_turn_silence_ms)
        if o.max_turn_silence_ms is not None:
            params["max_turn_silence"] = str(o.max_turn_silence_ms)
        if o.keyterms:
            params["keyterms_prompt"] = json.dumps(list(o.keyterms))
        return params

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        """Open a socket and wait for `Begin`; map every refusal to our errors."""
        assert self._http is not None
        url = f"{self._opts.base_url}/v3/ws"
        headers = {"Authorization": self._stt._key.reveal(), "AssemblyAI-Version": API_VERSION}
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            async with asyncio.timeout(self._opts.connect_timeout):
                ws = await self._http.ws_connect(
                    url,
                    params=self._params(),
                    headers=headers,
                    heartbeat=20.0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self._opts.close_timeout),
                )
                code, text = await self._read(ws, until_begin=True)
        except BaseException as exc:
            if ws is not None:
                await ws.close()
            if isinstance(exc, TimeoutError):
                raise PatterConnectionError(
                    f"AssemblyAI did not start a session within {self._opts.connect_timeout}s "
                    f"({self._opts.base_url})"
                ) from None
            if isinstance(exc, aiohttp.WSServerHandshakeError):
                raise self._http_error(exc.status) from None
            if isinstance(exc, aiohttp.ClientError | OSError):
                detail = self._stt._scrub(f"{type(exc).__name__}: {exc}")
                raise PatterConnectionError(
                    f"could not reach AssemblyAI at {self._opts.base_url}: {detail}"
                ) from None
            raise
        if code is not None:  # closed before Begin
            await ws.close()
            raise self._close_error(code, text)
        return ws

    def _http_error(self, status: int) -> Exception:
        if status in (401, 403):
            return PatterConnectionError(
                f"AssemblyAI refused the API key (HTTP {status}): check ASSEMBLYAI_API_KEY "
                "or AssemblyAISTT(api_key=...)"
            )
        if status in (402, 429):
            return PatterConnectionError(
                f"AssemblyAI refused the session: account balance or session limit (HTTP {status})"
            )
        return PatterConnectionError(f"AssemblyAI refused the connection (HTTP {status})")

    def _close_error(self, code: int, text: str) -> Exception:
        if code in REFUSED:
            return PatterConnectionError(
                f"AssemblyAI refused the session ({code}: {text}): check ASSEMBLYAI_API_KEY, "
                "the account's balance and its concurrent-session limit"
            )
        if code in BROKEN:
            return ProviderError(f"AssemblyAI ended the session ({code}: {text})")
        return PatterConnectionError(f"AssemblyAI closed the session ({code}: {text})")

    async def _run(self) -> None:
        try:
            while True:
                assert self._ws is not None
                code, text = await self._read(self._ws)
                if self._closing:
                    return
                await self._discard()
                self._flush_awaiting()
                if code in REFUSED or code in BROKEN:
                    raise self._close_error(code or 0, text)
                if self.reconnects and self._loop.time() - self._connected_at < FLAP_S:
                    raise PatterConnectionError(
                        f"AssemblyAI dropped the session again right after a reconnect "
                        f"({code}: {text})"
                    )
                log.warning("AssemblyAI dropped the session (%s: %s); reconnecting", code, text)
                await self._reconnect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
            log.error("AssemblyAI stream failed: %s", exc)
        finally:
            self._flush_awaiting()
            self._queue.put_nowait(None)

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, until_begin: bool = False
    ) -> tuple[int | None, str]:
        """Handle messages until the socket closes (or, with `until_begin`, `Begin` comes);
        return the close code (None for Begin) and the reason, the Error frame's if one came."""
        error = ""
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    log.warning("AssemblyAI sent a message that is not JSON")
                    continue
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                if kind == "Begin":
                    self.session_id = str(message.get("id"))
                    if until_begin:
                        return None, ""
                elif kind == "Error" or "error" in message:
                    error = self._stt._scrub(str(message.get("error") or ""))
                    log.warning("AssemblyAI error %s: %s", message.get("error_code"), error)
                else:
                    self._handle(kind, message)
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                code = ws.close_code
                if code is None and msg.type == aiohttp.WSMsgType.CLOSE:
                    code = int(msg.data)
                reason = msg.extra if isinstance(msg.extra, str) else ""
                return code if code is not None else 1006, error or self._stt._scrub(reason)

    async def _reconnect(self) -> None:
        self.reconnects += 1
        ws = await self._connect()
        async with self._lock:
            self._base_s += self._sent / self._per_s  # a new session's times start at 0
            self._sent = 0
            self._done.clear()
            self._ws = ws
            self._connected_at = self._loop.time()
            if self._closing:
                return
            await self._flush(pad=self._force_on_reconnect)
            if self._force_on_reconnect:
                self._force_on_reconnect = False
                await self._send_json({"type": "ForceEndpoint"})

    async def _discard(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                async with asyncio.timeout(self._opts.close_timeout):
                    await ws.close()
            except Exception as exc:
                log.debug("closing an AssemblyAI socket: %r", exc)

    async def _flush(self, pad: bool) -> None:
        """Send the pending audio in legal chunks (50–1000 ms); with `pad`, all of it."""
        buf = self._pending
        if pad and 0 < len(buf) < self._min:
            buf += self._silence * (self._min - len(buf))
        while len(buf) >= self._min:
            n = len(buf)
            if n > self._max:  # leave a remainder that is a legal chunk too
                n = self._max if n - self._max >= self._min else n - self._min
            chunk = bytes(buf[:n])
            del buf[:n]
            await self._send_bytes(chunk)

    async def _send_bytes(self, chunk: bytes) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send_bytes(chunk)
            self._sent += len(chunk)
        except Exception as exc:  # the reader sees the close
            log.debug("AssemblyAI write failed: %r", exc)

    async def _send_json(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send_str(json.dumps(message))
        except Exception as exc:
            log.debug("AssemblyAI write failed: %r", exc)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    # --- turns ---------------------------------------------------------------------------

    def _handle(self, kind: Any, message: dict[str, Any]) -> None:
        if kind == "Turn":
            self._on_turn(message)
        elif kind == "Termination":
            self.termination = message
        elif kind not in ("SpeechStarted", "Warning"):
            log.debug("AssemblyAI message ignored: %s", kind)

    def _transcript(self, text: str, words: list[Any], final: bool) -> Transcript:
        words = [w for w in words if isinstance(w, dict)]
        scores = [w["confidence"] for w in words if isinstance(w.get("confidence"), int | float)]
        times = [w for w in words if isinstance(w.get("start"), int | float)]
        return Transcript(
            text,
            final,
            final,
            sum(scores) / len(scores) if scores else None,
            self._base_s + times[0]["start"] / 1000 if times else None,
            self._base_s + times[-1]["end"] / 1000 if times else None,
        )

    def _on_turn(self, message: dict[str, Any]) -> None:
        order = message.get("turn_order")
        order = order if isinstance(order, int) else -1
        words = message.get("words") if isinstance(message.get("words"), list) else []
        assert isinstance(words, list)
        text = str(message.get("transcript") or "").strip()
        if not message.get("end_of_turn"):
            shown = " ".join(str(w.get("text", "")) for w in words if isinstance(w, dict))
            if shown.strip() or text:
                self._queue.put_nowait(self._transcript(shown.strip() or text, words, False))
            return
        if order in self._done:
            return  # a late formatted copy of a turn already given out
        transcript = self._transcript(text, words, True)
        if message.get("turn_is_formatted") or not self._opts.format_turns:
            if self._awaiting is not None and self._awaiting[0] == order:
                self._awaiting[2].cancel()
                self._awaiting = None
            self._flush_awaiting()
            self._final(order, transcript)
            return
        self._flush_awaiting()
        handle = self._loop.call_later(self._opts.format_wait_s, self._flush_awaiting)
        self._awaiting = (order, transcript, handle)

    def _flush_awaiting(self) -> None:
        """The unformatted end of turn waited long enough for its formatted copy: give it."""
        if self._awaiting is not None:
            order, transcript, handle = self._awaiting
            self._awaiting = None
            handle.cancel()
            self._final(order, transcript)

    def _final(self, order: int, transcript: Transcript) -> None:
        self._done.add(order)
        if transcript.text:
            self._queue.put_nowait(transcript)

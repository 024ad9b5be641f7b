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
drop is reconnected as a new AssemblyAI session by `ReconnectingSTTStream` (core/stt_stream.py),
which also gives up on a socket that drops again at once. Only the last `REPLAY_MAX_S` of
unfinalized audio is sent again (the outage's, mostly): AssemblyAI refuses audio faster than
real time, so a longer turn in flight is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from getpatter.core.credentials import Secret, credential
from getpatter.core.providers import AudioEncoding, Transcript
from getpatter.core.stt_stream import Dropped, ReconnectingSTTStream
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
REPLAY_MAX_S: Final = 1.0  # audio replayed after a drop (more would exceed real time)
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


class AssemblyAISTTStream(ReconnectingSTTStream):
    """One call's AssemblyAI session: chunked audio in, turns out (policy: the base class)."""

    provider = "AssemblyAI"

    def __init__(self, stt: AssemblyAISTT, language: str) -> None:
        o = self._opts = stt.options
        width = 1 if o.encoding == "pcm_mulaw" else 2
        super().__init__(
            bytes_per_s=o.sample_rate * width,
            sample_width=width,
            close_timeout=o.close_timeout,
            replay_max_s=REPLAY_MAX_S,
        )
        self._stt = stt
        self._model = o.speech_model or (
            ENGLISH if language.lower().startswith("en") else MULTILINGUAL
        )
        self._min = self._bytes(MIN_CHUNK_MS / 1000, math.ceil)
        self._chunk = max(self._min, self._bytes(o.chunk_ms / 1000, math.ceil))
        self._max = self._bytes(MAX_CHUNK_MS / 1000, math.floor)
        self._silence = b"\xff" if o.encoding == "pcm_mulaw" else b"\x00"
        self._pending = bytearray()  # audio not yet sent: less than a chunk
        self._sent = 0  # bytes this session has been sent, padding included
        self._pads: list[tuple[int, int]] = []  # (where, how many bytes) of padding, this session
        self._http: aiohttp.ClientSession | None = None
        self._awaiting: tuple[int, Transcript, asyncio.TimerHandle] | None = None
        self._done: set[int] = set()  # turn orders whose final went out, in this session
        self.session_id: str | None = None
        self.termination: dict[str, Any] | None = None

    def _bytes(self, seconds: float, rounding: Any) -> int:
        return int(rounding(seconds * self._opts.sample_rate)) * self._width

    # --- the socket ----------------------------------------------------------------------

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

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        """Open a socket and wait for `Begin`; map every refusal to our errors."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._pending.clear()
        self._sent = 0
        self._pads.clear()
        self._done.clear()
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
                code, text = await self._receive(ws, until_begin=True)
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

    async def start(self) -> None:
        try:
            await super().start()
        except BaseException:
            await self._after_close()
            raise

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

    async def _read(self, socket: aiohttp.ClientWebSocketResponse) -> Dropped:
        code, text = await self._receive(socket)
        fatal = self._close_error(code or 0, text) if code in REFUSED or code in BROKEN else None
        return Dropped(f"{code}: {text}", fatal)

    async def _receive(
        self, ws: aiohttp.ClientWebSocketResponse, until_begin: bool = False
    ) -> tuple[int | None, str]:
        """Handle messages until the socket closes (or, with `until_begin`, `Begin` comes);
        return the close code (None for Begin) and the reason, the Error frame's if one came."""
        error = ""
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._heard()
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

    async def _close_socket(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async with asyncio.timeout(self._opts.close_timeout):
                await socket.close()
        except Exception as exc:
            log.debug("closing an AssemblyAI socket: %r", exc)

    def _socket_lost(self) -> None:
        self._flush_awaiting()

    async def _after_close(self) -> None:
        self._flush_awaiting()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- writing: legal chunks -----------------------------------------------------------

    async def _send_audio(self, socket: aiohttp.ClientWebSocketResponse, audio: bytes) -> None:
        self._pending += audio
        if len(self._pending) >= self._chunk:
            await self._flush(socket, pad=False)

    async def _send_finalize(self, socket: aiohttp.ClientWebSocketResponse) -> bool:
        await self._flush(socket, pad=True)
        await socket.send_str(json.dumps({"type": "ForceEndpoint"}))
        return True

    async def _send_close(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        await socket.send_str(json.dumps({"type": "Terminate"}))

    async def _flush(self, socket: aiohttp.ClientWebSocketResponse, pad: bool) -> None:
        """Send the pending audio in legal chunks (50–1000 ms); with `pad`, all of it."""
        buf = self._pending
        if pad and 0 < len(buf) < self._min:
            self._pads.append((self._sent + len(buf), self._min - len(buf)))
            buf += self._silence * (self._min - len(buf))
        while len(buf) >= self._min:
            n = len(buf)
            if n > self._max:  # leave a remainder that is a legal chunk too
                n = self._max if n - self._max >= self._min else n - self._min
            chunk = bytes(buf[:n])
            del buf[:n]
            await socket.send_bytes(chunk)
            self._sent += n

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
            self._stream_time(times[0]["start"] / 1000) if times else None,
            self._stream_time(times[-1]["end"] / 1000) if times else None,
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
                self._emit(self._transcript(shown.strip() or text, words, False))
            return
        self._finalized()
        if order in self._done:
            return  # a late formatted copy of a turn already given out
        transcript = self._transcript(text, words, True)
        ends = [w["end"] for w in words if isinstance(w, dict) and isinstance(w.get("end"), int)]
        if ends:  # AssemblyAI's clock counts our padding too
            end = max(ends) * self._bytes_per_s // 1000
            padding = sum(n for at, n in self._pads if at < end)
            self._final_until((end - padding) / self._bytes_per_s)
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
            self._emit(transcript)

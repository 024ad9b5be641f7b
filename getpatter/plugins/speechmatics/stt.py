"""SpeechmaticsSTT: Speechmatics real-time transcription, fed the carrier's μ-law untouched.

Why aiohttp and not the `speechmatics-rt` SDK: its `AsyncClient` fits a file-at-a-time
transcription well, but a phone call needs three things it keeps private. A socket dropped
mid-call is swallowed in the SDK's receive task (logged; no event, no exception), so the lost
utterance could only be noticed at the next `send_audio`, after its final was already lost;
the handshake status (401 vs 5xx) survives only as the text of a wrapped exception; and
`stop_session()` waits for EndOfTranscript without a bound. Speaking the documented protocol
(protocols.md §7) directly costs ~150 lines and gives all three, on the aiohttp the rest of
getpatter already uses.

Turn-taking: the pipeline streams audio only while its VAD hears the caller, so the server's
own silence trigger rarely sees silence; `finalize()` sends `ForceEndOfUtterance`, which makes
the server send the utterance's final transcript at once (~250 ms, per Speechmatics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from getpatter.core.credentials import Secret, credential
from getpatter.core.providers import AudioEncoding, Transcript
from getpatter.errors import PatterConfigError, PatterConnectionError, PatterError, ProviderError

__all__ = ["SPEECHMATICS_WS_URL", "SpeechmaticsOptions", "SpeechmaticsSTT", "SpeechmaticsSTTStream"]

log = logging.getLogger(__name__)

SPEECHMATICS_WS_URL: Final = "wss://eu2.rt.speechmatics.com/v2"
_REFUSALS: Final = {"not_authorised", "insufficient_funds", "not_allowed", "quota_exceeded"}
_CONFIG_ERRORS: Final = {"invalid_model", "invalid_config", "invalid_audio_type", "invalid_message"}
_REPLAY_BYTES: Final = 30 * 8000  # the current utterance, kept for a reconnect: 30 s of μ-law
_MAX_RECONNECTS: Final = 3  # within _RECONNECT_WINDOW: a server that keeps dropping us is down
_RECONNECT_WINDOW: Final = 60.0  # seconds
_NO_SPACE_BEFORE = re.compile(r"\s+([.,?!;:])")


@dataclass(frozen=True, slots=True)
class SpeechmaticsOptions:
    """Everything a session is started with, except the key (kept apart, as a Secret)."""

    ws_url: str = SPEECHMATICS_WS_URL
    language: str | None = None  # None: the agent's language
    operating_point: str = "enhanced"
    max_delay: float = 1.0
    end_of_utterance_silence: float = 0.5
    enable_partials: bool = True
    additional_vocab: tuple[str, ...] = ()
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    connect_timeout: float = 10.0
    close_timeout: float = 2.0


class SpeechmaticsSTT:
    """Streaming STT on Speechmatics' real-time API, in the carrier's 8 kHz μ-law.

    - `api_key`: defaults to `SPEECHMATICS_API_KEY`.
    - `ws_url`: the regional endpoint (`wss://eu2…`, `wss://us2…`) or a test fake.
    - `language`: ISO 639-1 code; None uses the agent's language ('en-US' → 'en').
    - `operating_point`: 'enhanced' (most accurate) or 'standard' (fastest); sent as
      `transcription_config.model`, the field current API versions read.
    - `max_delay`: seconds the engine may wait before a final (0.7–4; lower is faster, less
      accurate). `end_of_utterance_silence`: the server's own end-of-utterance trigger, 0–2 s
      (0 turns it off; `finalize()` still forces the final).
    - `extra_config`: more `transcription_config` fields, sent as given (e.g. `domain`).

    Finals of one utterance are joined and given once, at its `EndOfUtterance`, with
    `speech_final=True`; interims show the words so far.
    """

    sample_rate: int = 8000
    encoding: AudioEncoding = "mulaw"

    def __init__(
        self,
        api_key: str | None = None,
        ws_url: str = SPEECHMATICS_WS_URL,
        language: str | None = None,
        operating_point: str = "enhanced",
        max_delay: float = 1.0,
        end_of_utterance_silence: float = 0.5,
        *,
        enable_partials: bool = True,
        additional_vocab: Sequence[str] = (),
        extra_config: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self._key = Secret(
            credential(
                api_key,
                "SPEECHMATICS_API_KEY",
                "Speechmatics API key",
                "SpeechmaticsSTT(api_key=...)",
            )
        )
        if not isinstance(ws_url, str) or urlsplit(ws_url).scheme not in ("ws", "wss"):
            raise PatterConfigError(
                f"SpeechmaticsSTT ws_url must be a ws:// or wss:// URL, got {ws_url!r}"
            )
        if language is not None:
            _language(language)
        if operating_point not in ("enhanced", "standard"):
            raise PatterConfigError(
                f"SpeechmaticsSTT operating_point must be 'enhanced' or 'standard', "
                f"got {operating_point!r}"
            )
        _number("max_delay", max_delay, 0.7, 4.0)
        _number("end_of_utterance_silence", end_of_utterance_silence, 0.0, 2.0)
        _number("connect_timeout", connect_timeout, 0.1, 120.0)
        if isinstance(additional_vocab, str) or not all(
            isinstance(w, str) for w in additional_vocab
        ):
            raise PatterConfigError("SpeechmaticsSTT additional_vocab must be a list of words")
        self.options = SpeechmaticsOptions(
            ws_url=ws_url.rstrip("/"),
            language=language,
            operating_point=operating_point,
            max_delay=float(max_delay),
            end_of_utterance_silence=float(end_of_utterance_silence),
            enable_partials=bool(enable_partials),
            additional_vocab=tuple(additional_vocab),
            extra_config=dict(extra_config or {}),
            connect_timeout=float(connect_timeout),
        )

    def __repr__(self) -> str:
        o = self.options
        return (
            f"SpeechmaticsSTT(ws_url={o.ws_url!r}, language={o.language!r}, "
            f"operating_point={o.operating_point!r}, api_key=<set>)"
        )

    async def open(self, *, language: str = "en") -> SpeechmaticsSTTStream:
        """Start a recognition session for one call; fails here on a bad key or quota."""
        stream = SpeechmaticsSTTStream(self.options, self._key, self.options.language or language)
        await stream.start()
        return stream


class SpeechmaticsSTTStream:
    """One call's recognition session. A dropped socket is reconnected once (per drop; a
    server that drops us three times in a minute is given up on) and the current utterance's
    audio is sent again, so its transcript is not lost."""

    def __init__(self, options: SpeechmaticsOptions, key: Secret, language: str) -> None:
        self.options = options
        self._key = key
        self.language = _language(language)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Transcript | PatterError | None] = asyncio.Queue()
        self._ready = asyncio.Event()  # set while a session accepts audio
        self._end_of_transcript = asyncio.Event()
        self._closing = self._failed = False
        self._frames = 0  # audio frames sent in this session: EndOfStream's last_seq_no
        self._session_bytes = 0
        self._offset = 0.0  # stream seconds at this session's zero
        self._replay: deque[bytes] = deque()
        self._replay_bytes = 0
        self._replay_trimmed = False
        self._since_force = 0  # bytes sent since the last ForceEndOfUtterance
        self._force_pending = False
        self._finals: list[tuple[str, float | None, float, float]] = []
        self.acked = 0  # the last AudioAdded seq_no of this session
        self.reconnects = 0
        self._reconnected_at: deque[float] = deque(maxlen=_MAX_RECONNECTS)
        self.session_ids: list[str] = []

    # --- sessions ------------------------------------------------------------------------

    def _start_message(self) -> dict[str, Any]:
        o = self.options
        config: dict[str, Any] = {
            "language": self.language,
            "model": o.operating_point,
            "enable_partials": o.enable_partials,
            "max_delay": o.max_delay,
        }
        if o.end_of_utterance_silence > 0:
            config["conversation_config"] = {
                "end_of_utterance_silence_trigger": o.end_of_utterance_silence
            }
        if o.additional_vocab:
            config["additional_vocab"] = [{"content": w} for w in o.additional_vocab]
        config.update(o.extra_config)
        return {
            "message": "StartRecognition",
            "audio_format": {"type": "raw", "encoding": "mulaw", "sample_rate": 8000},
            "transcription_config": config,
        }

    async def start(self) -> None:
        """Connect and wait for RecognitionStarted: no audio may go before it."""
        await self._connect()
        self._ready.set()

    async def _connect(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = self.options.ws_url
        try:
            ws = await asyncio.wait_for(
                self._http.ws_connect(
                    url,
                    headers={"Authorization": f"Bearer {self._key.reveal()}"},
                    heartbeat=30.0,
                    max_msg_size=8 * 1024 * 1024,
                ),
                self.options.connect_timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise _refused(exc.status, url) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PatterConnectionError(
                f"could not connect to Speechmatics at {url}: {type(exc).__name__}: {exc}"
            ) from None
        try:
            await ws.send_json(self._start_message())
            async with asyncio.timeout(self.options.connect_timeout):
                while True:
                    data: Any = None
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise PatterConnectionError(
                            f"Speechmatics closed the session before it started "
                            f"(close code {ws.close_code})"
                        )
                    with contextlib.suppress(ValueError):
                        data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        continue
                    if data.get("message") == "RecognitionStarted":
                        self.session_ids.append(str(data.get("id", "")))
                        break
                    if data.get("message") == "Error":
                        raise self._server_error(data)
        except TimeoutError:
            await ws.close()
            raise PatterConnectionError(
                f"Speechmatics did not start recognition within {self.options.connect_timeout:g}s"
            ) from None
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        self._frames = self._session_bytes = self.acked = 0
        self._end_of_transcript.clear()
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        fatal = False
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    log.warning("Speechmatics: a message that is not JSON: %.80r", msg.data)
                    continue
                if isinstance(data, dict):
                    fatal = self._on_message(data) or fatal
        except (aiohttp.ClientError, ConnectionError) as exc:
            log.warning("Speechmatics: socket error: %r", exc)
        if ws is not self._ws or self._closing or self._end_of_transcript.is_set() or fatal:
            return
        await self._recover(f"the socket closed (code {ws.close_code})")

    async def _recover(self, why: str) -> None:
        """The session died mid-call: start a new one and send the utterance's audio again."""
        self._ready.clear()
        now = asyncio.get_running_loop().time()
        recent = self._reconnected_at
        if len(recent) == _MAX_RECONNECTS and now - recent[0] < _RECONNECT_WINDOW:
            self._fail(PatterConnectionError(f"Speechmatics: {why}; gave up reconnecting"))
            return
        recent.append(now)
        self.reconnects += 1
        log.warning("Speechmatics: %s; reconnecting", why)
        self._offset += (self._session_bytes - self._replay_bytes) / 8000
        if not self._replay_trimmed:
            self._finals.clear()  # the replay makes them again
        try:
            await self._connect()
        except PatterError as exc:
            self._fail(PatterConnectionError(f"Speechmatics: {why}; reconnecting failed: {exc}"))
            return
        if self._closing:
            return
        assert self._ws is not None
        try:  # the utterance's audio goes first, then senders may continue
            for chunk in list(self._replay):
                await self._ws.send_bytes(chunk)
                self._count(len(chunk))
            if self._force_pending:
                await self._ws.send_json(self._force_message())
        except (ConnectionError, aiohttp.ClientError):
            pass  # dropped again: this session's reader recovers (or gives up)
        self._ready.set()

    def _fail(self, error: PatterError) -> None:
        self._failed = True
        self._ready.set()  # release senders; they drop audio from now on
        self._queue.put_nowait(error)

    # --- server messages -----------------------------------------------------------------

    def _on_message(self, data: dict[str, Any]) -> bool:
        """Handle one message; True when the session is over for good (a fatal error)."""
        kind = data.get("message")
        if kind == "AudioAdded":
            self.acked = int(data.get("seq_no", self.acked))
        elif kind in ("AddPartialTranscript", "AddTranscript"):
            meta = data.get("metadata") or {}
            text = _NO_SPACE_BEFORE.sub(r"\1", str(meta.get("transcript", ""))).strip()
            start = float(meta.get("start_time", 0.0))
            end = float(meta.get("end_time", start))
            if kind == "AddTranscript":
                if text:
                    self._finals.append((text, _confidence(data.get("results")), start, end))
                    if self.options.end_of_utterance_silence <= 0:
                        self._flush_finals(speech_final=False)
            elif text or self._finals:
                words = " ".join([*(f[0] for f in self._finals), text]).strip()
                first = self._finals[0][2] if self._finals else start
                self._queue.put_nowait(
                    Transcript(words, False, start=self._offset + first, end=self._offset + end)
                )
        elif kind == "EndOfUtterance":
            self._flush_finals(speech_final=True)
            self._force_pending = False
            self._replay.clear()
            self._replay_bytes, self._replay_trimmed = 0, False
        elif kind == "EndOfTranscript":
            self._flush_finals(speech_final=True)
            self._end_of_transcript.set()
        elif kind == "Error":
            error = self._server_error(data)
            if isinstance(error, PatterConnectionError) or data.get("type") in _CONFIG_ERRORS:
                self._fail(error)
                return True
            log.warning("Speechmatics: %s; the session will be restarted", error)
        elif kind == "Warning":
            log.warning("Speechmatics warning (%s): %s", data.get("type"), data.get("reason"))
        return False

    def _flush_finals(self, *, speech_final: bool) -> None:
        if not self._finals:
            return
        text = _NO_SPACE_BEFORE.sub(r"\1", " ".join(f[0] for f in self._finals))
        scores = [f[1] for f in self._finals if f[1] is not None]
        confidence = sum(scores) / len(scores) if scores else None
        start, end = self._finals[0][2], self._finals[-1][3]
        self._finals = []
        self._queue.put_nowait(
            Transcript(
                text, True, speech_final, confidence, self._offset + start, self._offset + end
            )
        )

    def _server_error(self, data: Mapping[str, Any]) -> PatterError:
        kind = str(data.get("type") or "unknown_error")
        reason = str(data.get("reason") or "")
        key = self._key.reveal()
        if key:
            reason = reason.replace(key, "***")
        if kind == "quota_exceeded":
            return PatterConnectionError(
                f"Speechmatics quota exceeded ({kind}: {reason}): too many concurrent sessions "
                "or the plan's limit; retry later or raise the quota"
            )
        if kind in _REFUSALS:
            return PatterConnectionError(
                f"Speechmatics refused the session ({kind}: {reason}): check "
                "SPEECHMATICS_API_KEY or SpeechmaticsSTT(api_key=...) and the account"
            )
        return ProviderError(f"Speechmatics error ({kind}): {reason}")

    # --- the STT stream protocol ---------------------------------------------------------

    def _count(self, nbytes: int) -> None:
        self._frames += 1
        self._session_bytes += nbytes

    def _remember(self, audio: bytes) -> None:
        self._replay.append(audio)
        self._replay_bytes += len(audio)
        while self._replay_bytes > _REPLAY_BYTES and len(self._replay) > 1:
            self._replay_bytes -= len(self._replay.popleft())
            self._replay_trimmed = True

    async def send(self, audio: bytes) -> None:
        if self._closing or not audio:
            return
        await self._ready.wait()
        if self._failed or self._closing or self._ws is None:
            return
        self._remember(audio)
        self._since_force += len(audio)
        ws = self._ws
        try:
            await ws.send_bytes(audio)
        except (ConnectionError, aiohttp.ClientError):
            return  # the reader sees the drop and replays this utterance, this frame included
        if ws is self._ws:
            self._count(len(audio))

    def _force_message(self) -> dict[str, Any]:
        return {"message": "ForceEndOfUtterance", "timestamp": round(self._session_bytes / 8000, 3)}

    async def finalize(self) -> None:
        """ForceEndOfUtterance: the server sends this utterance's final now."""
        if self._closing or not self._since_force:
            return
        await self._ready.wait()
        if self._failed or self._closing or self._ws is None:
            return
        self._since_force, self._force_pending = 0, True
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await self._ws.send_json(self._force_message())

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, PatterError):
                raise item
            yield item

    async def aclose(self) -> None:
        """EndOfStream, then wait (bounded) for EndOfTranscript, so the last words arrive."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed and self._ready.is_set() and not self._failed:
            try:
                await ws.send_json({"message": "EndOfStream", "last_seq_no": self._frames})
                await asyncio.wait_for(self._end_of_transcript.wait(), self.options.close_timeout)
            except (TimeoutError, ConnectionError, aiohttp.ClientError):
                log.info("Speechmatics: no EndOfTranscript within %ss", self.options.close_timeout)
        if ws is not None:
            await ws.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._http is not None:
            await self._http.close()
        self._flush_finals(speech_final=True)
        self._ready.set()
        self._queue.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self._closing


# --- helpers ---------------------------------------------------------------------------------


def _refused(status: int, url: str) -> PatterConnectionError:
    if status in (401, 403):
        return PatterConnectionError(
            f"Speechmatics refused the API key (HTTP {status}): check SPEECHMATICS_API_KEY or "
            "SpeechmaticsSTT(api_key=...)"
        )
    if status == 429:
        return PatterConnectionError(
            "Speechmatics refused the session (HTTP 429): too many sessions or quota exceeded"
        )
    return PatterConnectionError(f"Speechmatics refused the connection to {url} (HTTP {status})")


def _confidence(results: Any) -> float | None:
    scores = [
        float(r["alternatives"][0]["confidence"])
        for r in results or ()
        if isinstance(r, dict)
        and r.get("type") == "word"
        and r.get("alternatives")
        and r["alternatives"][0].get("confidence") is not None
    ]
    return sum(scores) / len(scores) if scores else None


def _language(code: str) -> str:
    """Speechmatics takes ISO 639-1 (or -3) codes: 'en-US' → 'en'."""
    if not isinstance(code, str) or not re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*", code):
        raise PatterConfigError(f"SpeechmaticsSTT language must be a code like 'en', got {code!r}")
    return re.split(r"[-_]", code)[0].lower()


def _number(name: str, value: object, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise PatterConfigError(f"SpeechmaticsSTT {name} must be between {low:g} and {high:g}")

"""SpeechmaticsSTT: Speechmatics real-time transcription, fed the carrier's μ-law untouched.

Why aiohttp and not the `speechmatics-rt` SDK: its `AsyncClient` fits a file-at-a-time
transcription well, but a phone call needs three things it keeps private. A socket dropped
mid-call is swallowed in the SDK's receive task (logged; no event, no exception), so the lost
utterance could only be noticed at the next `send_audio`, after its final was already lost;
the handshake status (401 vs 5xx) survives only as the text of a wrapped exception; and
`stop_session()` waits for EndOfTranscript without a bound. Speaking the documented protocol
(protocols.md §7) directly gives all three, on the aiohttp the rest of getpatter already uses;
reconnecting and replaying the utterance are `ReconnectingSTTStream`'s (core/stt_stream.py).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from getpatter.core.credentials import Secret, credential
from getpatter.core.providers import AudioEncoding, Transcript
from getpatter.core.stt_stream import Dropped, ReconnectingSTTStream
from getpatter.errors import PatterConfigError, PatterConnectionError, PatterError, ProviderError

__all__ = ["SPEECHMATICS_WS_URL", "SpeechmaticsOptions", "SpeechmaticsSTT", "SpeechmaticsSTTStream"]

log = logging.getLogger(__name__)

SPEECHMATICS_WS_URL: Final = "wss://eu2.rt.speechmatics.com/v2"
_REFUSALS: Final = {"not_authorised", "insufficient_funds", "not_allowed", "quota_exceeded"}
_CONFIG_ERRORS: Final = {"invalid_model", "invalid_config", "invalid_audio_type", "invalid_message"}
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


class SpeechmaticsSTTStream(ReconnectingSTTStream):
    """One call's recognition session (reconnecting and replaying: the base class)."""

    provider = "Speechmatics"

    def __init__(self, options: SpeechmaticsOptions, key: Secret, language: str) -> None:
        super().__init__(bytes_per_s=8000, sample_width=1, close_timeout=options.close_timeout)
        self.options = options
        self._key = key
        self.language = _language(language)
        self._http: aiohttp.ClientSession | None = None
        self._frames = 0  # audio frames sent in this session: EndOfStream's last_seq_no
        self._session_bytes = 0
        self._since_force = 0  # bytes sent since the last ForceEndOfUtterance
        self._finals: list[tuple[str, float | None, float, float]] = []
        self.acked = 0  # the last AudioAdded seq_no of this session
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
        try:
            await super().start()
        except BaseException:
            await self._after_close()
            raise

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
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
        self._frames = self._session_bytes = self._since_force = self.acked = 0
        return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> Dropped:
        fatal: PatterError | None = None
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                self._heard()
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    log.warning("Speechmatics: a message that is not JSON: %.80r", msg.data)
                    continue
                if isinstance(data, dict):
                    fatal = self._on_message(data) or fatal
        except (aiohttp.ClientError, ConnectionError) as exc:
            log.warning("Speechmatics: socket error: %r", exc)
        return Dropped(f"the socket closed (code {ws.close_code})", fatal)

    def _socket_lost(self) -> None:
        replayed_from = self._replay_at / 8000
        self._finals = [f for f in self._finals if f[2] < replayed_from]  # the replay redoes them

    async def _close_socket(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.close()

    async def _after_close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._flush_finals(speech_final=True)

    # --- writing -------------------------------------------------------------------------

    async def _send_audio(self, ws: aiohttp.ClientWebSocketResponse, audio: bytes) -> None:
        self._since_force += len(audio)
        await ws.send_bytes(audio)
        self._frames += 1
        self._session_bytes += len(audio)

    async def _send_finalize(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """ForceEndOfUtterance: the server sends this utterance's final now."""
        if not self._since_force:
            return False  # nothing new since the last one
        self._since_force = 0
        timestamp = round(self._session_bytes / 8000, 3)
        await ws.send_json({"message": "ForceEndOfUtterance", "timestamp": timestamp})
        return True

    async def _send_close(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """EndOfStream: the server sends the last finals, EndOfTranscript, and closes."""
        await ws.send_json({"message": "EndOfStream", "last_seq_no": self._frames})

    # --- server messages -----------------------------------------------------------------

    def _on_message(self, data: dict[str, Any]) -> PatterError | None:
        """Handle one message; an error when the session is over for good."""
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
                self._emit(
                    Transcript(
                        words, False, start=self._stream_time(first), end=self._stream_time(end)
                    )
                )
        elif kind == "EndOfUtterance":
            self._flush_finals(speech_final=True)
            self._finalized()
            self._final_until(None)
        elif kind == "EndOfTranscript":
            self._flush_finals(speech_final=True)
        elif kind == "Error":
            error = self._server_error(data)
            if isinstance(error, PatterConnectionError) or data.get("type") in _CONFIG_ERRORS:
                return error
            log.warning("Speechmatics: %s; the session will be restarted", error)
        elif kind == "Warning":
            log.warning("Speechmatics warning (%s): %s", data.get("type"), data.get("reason"))
        return None

    def _flush_finals(self, *, speech_final: bool) -> None:
        if not self._finals:
            return
        text = _NO_SPACE_BEFORE.sub(r"\1", " ".join(f[0] for f in self._finals))
        scores = [f[1] for f in self._finals if f[1] is not None]
        confidence = sum(scores) / len(scores) if scores else None
        start, end = self._finals[0][2], self._finals[-1][3]
        self._finals = []
        self._emit(
            Transcript(
                text,
                True,
                speech_final,
                confidence,
                self._stream_time(start),
                self._stream_time(end),
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

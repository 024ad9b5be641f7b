"""SonioxSTT: Soniox real-time transcription (``/transcribe-websocket``), one socket per call.

Why aiohttp and not the official `soniox` SDK: its realtime session (soniox 2.x) sends the key
only as the ``api_key`` field of the start request, which Soniox has deprecated: from
15 January 2027 a connection that does not send its key with the connection (the
``Authorization`` header of the upgrade) is refused. It also reports a closed socket as "no
more events", so an error response and its close cannot be told from the end of the stream,
and it brings in websockets, pydantic and httpx for one JSON start request, binary audio and
three control messages. The URL is ours to set either way (`base_url`), so the fake is reached
the same way.

Audio: the carrier's 8 kHz μ-law as it came (``audio_format: "mulaw"``, ``sample_rate:
8000``, ``num_channels: 1``): the pipeline neither decodes nor resamples.

Tokens: each response holds the tokens that just became final (sent once) and the non-final
tail as it stands now. Final tokens build the utterance; an interim transcript is the finals so
far plus that tail. The utterance is final at ``<end>`` (Soniox's endpoint detection) or
``<fin>`` (its answer to ``finalize``, which `finalize()` sends when the pipeline's VAD ends a
turn). ``final_audio_proc_ms`` says how much audio no longer needs a replay after a drop.

Failures: Soniox sends an error response and closes. 401/402/403 (the key, the balance) and
429 (limits) raise PatterConnectionError; 400 (our settings) raises ProviderError; anything
else (503 "Cannot continue request", a dropped socket) is reconnected by
`ReconnectingSTTStream` (core/stt_stream.py), which replays the unfinalized audio. Soniox
checks the key only once the socket is open, so a refused key fails the stream (its
`transcripts()` raises) rather than `open()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from getpatter.core.credentials import Secret, credential
from getpatter.core.providers import AudioEncoding, Transcript
from getpatter.core.stt_stream import Dropped, ReconnectingSTTStream
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError

__all__ = ["DEFAULT_BASE_URL", "SonioxOptions", "SonioxSTT", "SonioxSTTStream"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "wss://stt-rt.soniox.com/transcribe-websocket"
RATE: Final = 8000
REPLAY_MAX_S: Final = 10.0  # Soniox wants audio near real time: replay one utterance, no more
ENDPOINT, FINALIZED = "<end>", "<fin>"


@dataclass(frozen=True, slots=True)
class SonioxOptions:
    """What SonioxSTT asks Soniox for. `language=None`: the agent's language, as a hint."""

    model: str = "stt-rt-v4"
    base_url: str = DEFAULT_BASE_URL
    language: str | None = None
    language_hints: tuple[str, ...] = ()
    enable_endpoint_detection: bool = True
    max_endpoint_delay_ms: int | None = None
    context: str | None = None
    keepalive_s: float = 10.0
    connect_timeout: float = 10.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        def fail(what: str) -> None:
            raise PatterConfigError(f"SonioxSTT: {what}")

        if not isinstance(self.model, str) or not self.model.strip():
            fail(f"model must be a model name such as 'stt-rt-v4', got {self.model!r}")
        url = self.base_url if isinstance(self.base_url, str) else ""
        parts = urlsplit(url.strip())
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        if scheme not in ("ws", "wss") or not parts.netloc:
            fail(f"base_url must be a wss:// (or ws://) URL with a host, got {self.base_url!r}")
        path = parts.path.rstrip("/") or "/transcribe-websocket"
        object.__setattr__(self, "base_url", f"{scheme}://{parts.netloc}{path}")
        for code in (self.language, *self.language_hints):
            if code is not None and not re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*", code):
                fail(f"languages must be codes like 'en', got {code!r}")
        delay = self.max_endpoint_delay_ms
        if delay is not None and not 500 <= delay <= 3000:
            fail(f"max_endpoint_delay_ms must be within 500..3000 (Soniox's rule), got {delay!r}")
        if not 0 < self.keepalive_s <= 20:
            fail(
                f"keepalive_s must be within 0..20 s (Soniox's idle limit), not {self.keepalive_s}"
            )
        for name in ("connect_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                fail(f"{name} must be a positive number of seconds")


class SonioxSTT:
    """Soniox real-time STT for phone audio. `api_key` defaults to ``SONIOX_API_KEY`` (the
    key `LocalConfig.soniox_key` is backfilled from).

    `base_url`: where the real-time API is (a regional endpoint, a proxy, a test fake).
    `language_hints`: languages to expect (default: the call's language). Soniox's own
    endpoint detection refines the turns; the pipeline's VAD still ends each with `finalize()`.
    """

    sample_rate: int = RATE
    encoding: AudioEncoding = "mulaw"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        model: str = "stt-rt-v4",
        base_url: str = DEFAULT_BASE_URL,
        language: str | None = None,
        language_hints: Sequence[str] = (),
        enable_endpoint_detection: bool = True,
        max_endpoint_delay_ms: int | None = None,
        context: str | None = None,
        keepalive_s: float = 10.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 2.0,
    ) -> None:
        self._key = Secret(
            credential(api_key, "SONIOX_API_KEY", "Soniox API key", "SonioxSTT(api_key=...)")
        )
        if isinstance(language_hints, str):
            raise PatterConfigError("SonioxSTT: language_hints must be a list of codes")
        self.options = SonioxOptions(
            model=model,
            base_url=base_url,
            language=language,
            language_hints=tuple(language_hints),
            enable_endpoint_detection=bool(enable_endpoint_detection),
            max_endpoint_delay_ms=max_endpoint_delay_ms,
            context=context or None,
            keepalive_s=keepalive_s,
            connect_timeout=connect_timeout,
            close_timeout=close_timeout,
        )
        self.model = self.options.model

    def __repr__(self) -> str:
        o = self.options
        return f"SonioxSTT(model={o.model!r}, base_url={o.base_url!r}, api_key=<set>)"

    async def open(self, *, language: str = "en") -> SonioxSTTStream:
        """Connect one call's stream. Raises PatterConnectionError when Soniox is unreachable;
        a refused key fails the stream once Soniox answers (see the module)."""
        stream = SonioxSTTStream(self, self.options.language or language)
        await stream.start()
        return stream

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key else text


class SonioxSTTStream(ReconnectingSTTStream):
    """One call's Soniox socket: μ-law in, transcripts out (policy: the base class)."""

    provider = "Soniox"

    def __init__(self, stt: SonioxSTT, language: str) -> None:
        o = self._opts = stt.options
        super().__init__(
            bytes_per_s=RATE,
            sample_width=1,
            close_timeout=o.close_timeout,
            replay_max_s=REPLAY_MAX_S,
            keepalive_s=o.keepalive_s,
        )
        self._stt = stt
        self._language = re.split(r"[-_]", language)[0].lower()
        self._http: aiohttp.ClientSession | None = None
        self._finals: list[dict[str, Any]] = []  # final tokens of the utterance so far
        self.finished = False

    def _config(self) -> dict[str, Any]:
        o = self._opts
        config: dict[str, Any] = {
            "model": o.model,
            "audio_format": "mulaw",
            "sample_rate": RATE,
            "num_channels": 1,
            "language_hints": list(o.language_hints) or [self._language],
            "enable_endpoint_detection": o.enable_endpoint_detection,
        }
        if o.max_endpoint_delay_ms is not None:
            config["max_endpoint_delay_ms"] = o.max_endpoint_delay_ms
        if o.context:
            config["context"] = {"text": o.context}
        return config

    # --- the socket ----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await super().start()
        except BaseException:
            await self._after_close()
            raise

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = self._opts.base_url
        try:
            async with asyncio.timeout(self._opts.connect_timeout):
                ws = await self._http.ws_connect(
                    url,
                    headers={"Authorization": f"Bearer {self._stt._key.reveal()}"},
                    heartbeat=20.0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self._opts.close_timeout),
                )
        except TimeoutError:
            raise PatterConnectionError(
                f"Soniox did not accept the stream within {self._opts.connect_timeout}s ({url})"
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            refused = self._refusal(exc.status, "", f"HTTP {exc.status}")
            raise refused or PatterConnectionError(
                f"Soniox refused the connection (HTTP {exc.status}) at {url}"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            detail = self._stt._scrub(f"{type(exc).__name__}: {exc}")
            raise PatterConnectionError(f"could not reach Soniox at {url}: {detail}") from None
        try:
            await ws.send_str(json.dumps(self._config()))
        except Exception:
            await ws.close()
            raise PatterConnectionError(f"Soniox closed the stream at once ({url})") from None
        return ws

    def _refusal(self, code: int, kind: str, message: str) -> Exception | None:
        """The error for an error response, or None when a new socket may do better."""
        what = f"{code} {kind}: {message}".replace(" :", ":")
        if code in (401, 403):
            return PatterConnectionError(
                f"Soniox refused the API key ({what}): check SONIOX_API_KEY or "
                "SonioxSTT(api_key=...)"
            )
        if code == 402:
            return PatterConnectionError(f"Soniox refused the stream: out of balance ({what})")
        if code == 429:
            return PatterConnectionError(
                f"Soniox refused the stream: too many requests or concurrent streams ({what})"
            )
        if code == 400:
            return ProviderError(
                f"Soniox refused the stream settings ({what}): model={self._opts.model!r}"
            )
        return None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> Dropped:
        error: Exception | None = None
        why = ""
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._heard()
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    log.warning("Soniox sent a message that is not JSON")
                    continue
                if not isinstance(data, dict):
                    continue
                if data.get("error_code") is not None:
                    code = data.get("error_code")
                    kind = str(data.get("error_type") or "")
                    message = self._stt._scrub(str(data.get("error_message") or ""))
                    why = f"{code} {kind}: {message}"
                    log.warning("Soniox error %s", why)
                    error = self._refusal(code if isinstance(code, int) else 0, kind, message)
                    continue
                self._on_response(data)
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return Dropped(why or f"closed ({ws.close_code})", error)

    async def _send_audio(self, ws: aiohttp.ClientWebSocketResponse, audio: bytes) -> None:
        await ws.send_bytes(audio)

    async def _send_finalize(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        await ws.send_str(json.dumps({"type": "finalize"}))
        return True

    async def _send_keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "keepalive"}))

    async def _send_close(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str("")  # the end of audio: last results, `finished`, close

    async def _close_socket(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async with asyncio.timeout(self._opts.close_timeout):
                await ws.close()
        except Exception as exc:
            log.debug("closing a Soniox socket: %r", exc)

    def _socket_lost(self) -> None:
        replayed_from = self._replay_at / RATE * 1000
        self._finals = [t for t in self._finals if _ms(t, "start_ms") < replayed_from]

    async def _after_close(self) -> None:
        self._flush()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- tokens --------------------------------------------------------------------------

    def _on_response(self, data: dict[str, Any]) -> None:
        tokens = [t for t in data.get("tokens") or () if isinstance(t, dict)]
        tail: list[dict[str, Any]] = []
        end = fin = False
        for token in tokens:
            text = str(token.get("text") or "")
            if not token.get("is_final"):
                tail.append(token)
            elif text == ENDPOINT:
                end = True
            elif text == FINALIZED:
                fin = True
            else:
                self._finals.append(token)
        processed = data.get("final_audio_proc_ms")
        if isinstance(processed, int | float):
            self._final_until(processed / 1000)
        if fin:
            self._finalized()
        if end or fin:
            self._flush()
        elif tail:
            self._emit(self._transcript([*self._finals, *tail], final=False))
        if data.get("finished"):
            self.finished = True
            self._flush()

    def _transcript(self, tokens: list[dict[str, Any]], *, final: bool) -> Transcript:
        scores = [t["confidence"] for t in tokens if isinstance(t.get("confidence"), int | float)]
        timed = [t for t in tokens if isinstance(t.get("start_ms"), int | float)]
        return Transcript(
            "".join(str(t.get("text") or "") for t in tokens).strip(),
            final,
            final,
            sum(scores) / len(scores) if scores else None,
            self._stream_time(_ms(timed[0], "start_ms") / 1000) if timed else None,
            self._stream_time(_ms(timed[-1], "end_ms") / 1000) if timed else None,
        )

    def _flush(self) -> None:
        tokens, self._finals = self._finals, []
        if tokens:
            transcript = self._transcript(tokens, final=True)
            if transcript.text:
                self._emit(transcript)


def _ms(token: dict[str, Any], name: str) -> float:
    value = token.get(name)
    return float(value) if isinstance(value, int | float) else 0.0

"""ElevenLabsTTS: ElevenLabs speech over one multi-context WebSocket per call, HTTP as fallback.

The wire protocol is spoken with aiohttp, not the `elevenlabs` SDK: the SDK's streaming helper
(`convert_realtime`) is synchronous (it would block the event loop, or cost a thread per call),
opens a socket per text iterator (so it cannot keep one socket for the whole call), has no
multi-context support, and forces `wss://`, so it cannot be pointed at a plain loopback fake
either. aiohttp is already a core dependency and speaks both the socket and the HTTP stream.

Why multi-context (`/multi-stream-input`) and not `/stream-input`: the pipeline asks for one
sentence at a time and must know where each sentence's audio ends. On the single-context
socket, `flush` forces generation but marks no end (`isFinal` only follows the end of the
whole stream, which also closes the socket); and a sentence cancelled mid-way would leave its
audio queued in front of the next one, so the only cancel is to close the socket and reconnect.
On the multi-context socket each sentence is a context: its text + `flush`, then
`close_context`, and the server ends that context's audio with `{"isFinal": true, "contextId"}`.
Cancelling (a barge-in closes the iterator) is instant and costs no reconnect: the sentence's
context is closed, its remaining audio dropped on arrival, and the next sentence starts at once
on a new context. Contexts are independent, so the pipeline's next sentence, asked for while
one still streams, is generated alongside it on a context of its own. The service allows 5
live contexts per socket; when cancelled, stuck and running sentences already hold them all,
the socket is replaced (a sentence still running on the old one is asked for again).

When to close a context: only once its first audio has arrived. The docs say a close after a
flush lets the flushed text finish, but services in production lose the whole context when
the close reaches them before synthesis has started (no audio, no error, no isFinal: pipecat
issue 4681, PR 5282). Once audio streams, isFinal reliably follows the last byte. (One context
per reply, closed at its end, was the alternative: it has no per-sentence end marker, since a
flush sends none, and its close would race the reply's last sentence all the same.) A context
whose audio never starts is left to the pipeline's first-audio deadline (`core.synthesis`),
which closes this iterator (the context is then closed as a cancel) and asks for the sentence
again through `synthesize_fallback()`, the HTTP endpoint. An isFinal with no audio ends the
sentence empty, which that deadline also treats as a failed sentence.

A dead peer (the connection open, nothing more from it) stops every context at once. So a
socket that has sent nothing at all for `SILENT_SOCKET` seconds while sentences wait on it, or
when a sentence falls back to HTTP, is replaced before anything more is sent on it, and the
sentences waiting on it (the pipeline asks for the next one ahead) are asked for again on the
new one, skipping what they already delivered, instead of each waiting out its deadline.

`voice_settings` go on the first message of each context: the multi-context reference allows
them "only in the first message for a given context_id", so a context without them would
speak with the voice's defaults. Ask for `ulaw_8000` (the default): it is exactly what the
carrier plays, so nothing is decoded or resampled.

Failures: a socket dropped mid-sentence is reopened once and the sentence re-requested, skipping
the bytes already played (the same text and voice give the same length of audio: the rule of
`core.tts_stream`, which owns the socket, its reader and its reconnects; this module is the
wire format and the rules above); if the socket cannot be opened, or drops the sentence again,
it falls back to the HTTP stream. A refused key or exhausted quota
is a `PatterConnectionError` naming ElevenLabs, never showing the key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlencode

import aiohttp

from getpatter.core.credentials import Secret, credential, validate_http_url
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

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_VOICE_ID", "ElevenLabsOptions", "ElevenLabsStream", "ElevenLabsTTS"]

DEFAULT_VOICE_ID: Final = "21m00Tcm4TlvDq8ikWAM"  # "Rachel", a premade voice every account has
MAX_CONTEXTS: Final = 5
#: A sentence whose socket sends nothing for this long is treated as dropped (a dead peer
#: that never closed the connection).
STALL_SECONDS: Final = 10.0
#: A socket that has sent nothing for this long while sentences wait on it is dead (well
#: past a first byte; under the pipeline's 1 s mid-sentence gap, so a sentence given up for
#: it is not followed by one sent on the same dead socket).
SILENT_SOCKET: Final = 0.75
_PCM_RATES: Final = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


def output_audio(output_format: str) -> tuple[int, AudioEncoding]:
    """The (rate, encoding) an output_format streams; only raw formats can be played."""
    if output_format == "ulaw_8000":
        return 8000, "mulaw"
    kind, _, rate = output_format.partition("_")
    if kind == "pcm" and rate.isdigit() and int(rate) in _PCM_RATES:
        return int(rate), "pcm16"
    raise PatterConfigError(
        f"ElevenLabsTTS output_format {output_format!r} cannot be played on a call: use "
        "'ulaw_8000' (the carrier's own format) or 'pcm_<rate>' (e.g. 'pcm_16000')"
    )


@dataclass(frozen=True, slots=True)
class ElevenLabsOptions:
    """Everything ElevenLabsTTS sends except the key (which is never stored here)."""

    voice_id: str = DEFAULT_VOICE_ID
    model_id: str = "eleven_flash_v2_5"
    base_url: str = "https://api.elevenlabs.io"
    output_format: str = "ulaw_8000"
    voice_settings: Mapping[str, Any] | None = None
    transport: Literal["websocket", "http"] = "websocket"
    language_code: str | None = None
    inactivity_timeout: int = 180
    connect_timeout: float = 5.0
    socket_retry_after: float = 30.0
    extra_query: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.voice_id, str) or not self.voice_id.strip():
            raise PatterConfigError("ElevenLabsTTS voice_id must be an ElevenLabs voice ID")
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise PatterConfigError("ElevenLabsTTS model_id must be a model name")
        url = validate_http_url(self.base_url, "ElevenLabsTTS(base_url=...)")
        object.__setattr__(self, "base_url", url)
        output_audio(self.output_format)
        if self.transport not in ("websocket", "http"):
            raise PatterConfigError(
                f"ElevenLabsTTS transport must be 'websocket' or 'http', got {self.transport!r}"
            )
        if not 1 <= self.inactivity_timeout <= 180:
            raise PatterConfigError("ElevenLabsTTS inactivity_timeout must be 1–180 seconds")

    @property
    def ws_base(self) -> str:
        return "ws" + self.base_url[4:]  # http → ws, https → wss


class ElevenLabsTTS:
    """ElevenLabs text to speech (registered as tts ``"elevenlabs"``).

    - `voice_id`: an ElevenLabs voice; `model_id`: `eleven_flash_v2_5` is the low-latency one.
    - `api_key`: defaults to `ELEVENLABS_API_KEY`; missing → `PatterConfigError` now.
    - `base_url`: `https://api.elevenlabs.io`, a regional host, or a test fake; the socket uses
      the same host with `wss://` (`ws://` for `http://`).
    - `output_format`: `ulaw_8000` (the carrier's format, played untouched) or `pcm_<rate>`.
    - `voice_settings`: `{stability, similarity_boost, style, use_speaker_boost, speed}`.
    - `transport`: `"websocket"` (one socket per call) or `"http"` (one request per sentence).
    - `socket_retry_after`: after the socket cannot be opened, sentences go over HTTP for this
      many seconds before the socket is tried again (so a blocked socket costs one timeout).
    """

    def __init__(
        self,
        voice_id: str = DEFAULT_VOICE_ID,
        *,
        api_key: str | None = None,
        model_id: str = "eleven_flash_v2_5",
        base_url: str = "https://api.elevenlabs.io",
        output_format: str = "ulaw_8000",
        voice_settings: Mapping[str, Any] | None = None,
        transport: Literal["websocket", "http"] = "websocket",
        language_code: str | None = None,
        inactivity_timeout: int = 180,
        connect_timeout: float = 5.0,
        socket_retry_after: float = 30.0,
    ) -> None:
        self.options = ElevenLabsOptions(
            voice_id=voice_id,
            model_id=model_id,
            base_url=base_url,
            output_format=output_format,
            voice_settings=dict(voice_settings) if voice_settings else None,
            transport=transport,
            language_code=language_code,
            inactivity_timeout=inactivity_timeout,
            connect_timeout=connect_timeout,
            socket_retry_after=socket_retry_after,
        )
        self._key = Secret(
            credential(
                api_key, "ELEVENLABS_API_KEY", "ElevenLabs API key", "ElevenLabsTTS(api_key=...)"
            )
        )
        self.sample_rate, self.encoding = output_audio(output_format)

    def __repr__(self) -> str:
        o = self.options
        return (
            f"ElevenLabsTTS(voice_id={o.voice_id!r}, model_id={o.model_id!r}, "
            f"output_format={o.output_format!r}, transport={o.transport!r}, api_key=<set>)"
        )

    async def open(self) -> ElevenLabsStream:
        """The call's stream; with the socket transport, connects now so the greeting is quick.

        A refused key fails here; a network failure does not (sentences fall back to HTTP)."""
        stream = ElevenLabsStream(self.options, self._key)
        if self.options.transport == "websocket":
            try:
                await stream.connect()
            except Unreachable as exc:
                log.warning("ElevenLabs socket unavailable (%s); using HTTP for now", exc)
                loop = asyncio.get_running_loop()
                stream._socket_retry_at = loop.time() + self.options.socket_retry_after
            except BaseException:
                await stream.aclose()
                raise
        return stream


@dataclass(eq=False, slots=True)
class _Sentence(Sentence):
    closed: bool = False  # close_context sent


class ElevenLabsStream(SocketTTSStream[_Sentence]):
    """One call's ElevenLabs connection: `synthesize()` one sentence at a time, `aclose()`."""

    provider = "ElevenLabs"
    key_env = "ELEVENLABS_API_KEY"

    def __init__(self, options: ElevenLabsOptions, key: Secret) -> None:
        super().__init__(key)
        self.options = options
        self._http: aiohttp.ClientSession | None = None
        self._live: set[str] = set()  # contexts the server still holds
        self._count = 0
        self._socket_retry_at = 0.0  # after a failed connect, HTTP only until then
        # loop time of the socket's latest message, or of a sentence sent to it while none
        # waited: the socket has owed an answer and sent nothing since then
        self._heard_at = 0.0

    # --- synthesis ------------------------------------------------------------------------

    def _socket_usable(self) -> bool:
        return (
            self.options.transport == "websocket"
            and asyncio.get_running_loop().time() >= self._socket_retry_at
        )

    async def _fallback(
        self, text: str, skip: int, why: Exception | None
    ) -> AsyncGenerator[bytes, None]:
        """Over HTTP: the socket is off, could not be opened, or dropped the sentence twice."""
        if isinstance(why, Unreachable):
            log.warning("ElevenLabs socket unavailable (%s): using HTTP", why)
            loop = asyncio.get_running_loop()
            self._socket_retry_at = loop.time() + self.options.socket_retry_after
        async with contextlib.aclosing(self._over_http(text, skip)) as audio:
            async for chunk in audio:
                yield chunk

    async def synthesize_fallback(self, text: str) -> AsyncIterator[bytes]:
        """The sentence over the HTTP endpoint: the pipeline's retry when the socket gave no
        audio in time (a context the service lost or stalled)."""
        if self._closed:
            raise ProviderError("ElevenLabs stream is closed")
        text = " ".join(text.split())
        if not text:
            return
        await self._replace_if_silent(waiting=False)
        async with contextlib.aclosing(self._over_http(text, 0)) as audio:
            async for chunk in audio:
                yield chunk

    async def _replace_if_silent(self, *, waiting: bool) -> None:
        """Drop a socket that has sent nothing for `SILENT_SOCKET` seconds (with `waiting`:
        while sentences wait on it): the sentences on it are asked for again on a new one."""
        silent = asyncio.get_running_loop().time() - self._heard_at
        if self._conn is None or silent < SILENT_SOCKET or (waiting and not self._waiting):
            return
        log.warning("ElevenLabs socket silent for %.1f s: replacing it", silent)
        await self._drop(self._conn)

    def _stall_s(self) -> float:
        return STALL_SECONDS

    def _new_sentence(self, text: str) -> _Sentence:
        return _Sentence(text)

    async def _connect_for(self, sentence: _Sentence) -> WebSocket:
        await self._replace_if_silent(waiting=True)
        ws: WebSocket = await self.connect()
        if len(self._live) >= MAX_CONTEXTS:
            log.info("ElevenLabs: %d contexts still open; new socket", len(self._live))
            await self._drop(ws)
            ws = await self.connect()
        return ws

    def _begin(self, sentence: _Sentence) -> list[dict[str, Any]]:
        self._count += 1
        sentence.key = context = f"s{self._count}"
        if not self._waiting:
            self._heard_at = asyncio.get_running_loop().time()
        self._live.add(context)
        opening: dict[str, Any] = {"text": " ", "context_id": context}
        if self.options.voice_settings:
            opening["voice_settings"] = dict(self.options.voice_settings)
        return [opening, {"text": sentence.text + " ", "context_id": context, "flush": True}]

    async def _on_audio(self, sentence: _Sentence, audio: bytes) -> bytes:
        if not sentence.closed:  # its audio has started: now a close cannot lose it
            sentence.closed = True
            await self._send(sentence.conn, {"context_id": sentence.key, "close_context": True})
        return audio

    async def _end(self, sentence: _Sentence, finished: bool) -> None:
        conn = sentence.conn
        if finished or sentence.closed or conn is None or self._conn is not conn:
            return
        if sentence.key in self._live:
            with contextlib.suppress(Dropped):  # cancelled before its audio: free it
                await self._send(conn, {"context_id": sentence.key, "close_context": True})

    async def _over_http(self, text: str, skip: int) -> AsyncGenerator[bytes, None]:
        o = self.options
        body: dict[str, Any] = {"text": text, "model_id": o.model_id}
        if o.voice_settings:
            body["voice_settings"] = dict(o.voice_settings)
        if o.language_code:
            body["language_code"] = o.language_code
        url = f"{o.base_url}/v1/text-to-speech/{o.voice_id}/stream"
        timeout = aiohttp.ClientTimeout(sock_connect=o.connect_timeout, sock_read=15.0)
        try:
            response = await self._session().post(
                url,
                params={"output_format": o.output_format},
                json=body,
                headers={"xi-api-key": self._key.reveal()},
                timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PatterConnectionError(
                f"ElevenLabs: could not reach {o.base_url} ({type(exc).__name__})"
            ) from None
        if response.status != 200:
            async with response:
                raise self._http_error(response.status, await response.text())
        try:
            async for chunk in response.content.iter_any():
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if chunk:
                    yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PatterConnectionError(
                f"ElevenLabs: the audio stream broke ({type(exc).__name__})"
            ) from None
        finally:
            response.close()  # unread audio: drop the connection, which stops the generation

    # --- the socket ------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _open(self) -> WebSocket:
        o = self.options
        query = {
            "model_id": o.model_id,
            "output_format": o.output_format,
            "inactivity_timeout": str(o.inactivity_timeout),
            **({"language_code": o.language_code} if o.language_code else {}),
            **o.extra_query,
        }
        url = f"{o.ws_base}/v1/text-to-speech/{o.voice_id}/multi-stream-input?{urlencode(query)}"
        try:
            ws = await open_websocket(
                self._session(),
                url,
                headers={"xi-api-key": self._key.reveal()},
                connect_s=o.connect_timeout,
                max_msg_size=16 * 1024 * 1024,
            )
        except Refused as exc:
            if exc.status in (401, 403):
                raise PatterConnectionError(
                    f"ElevenLabs refused the connection (HTTP {exc.status}): the API key is "
                    "invalid or its quota is used up; check ELEVENLABS_API_KEY"
                ) from None
            if exc.status == 429:
                raise PatterConnectionError(
                    "ElevenLabs: too many concurrent requests for this account (HTTP 429)"
                ) from None
            raise Unreachable(f"HTTP {exc.status}") from None
        self._heard_at = asyncio.get_running_loop().time()
        return ws

    def _parse(self, conn: WebSocket, message: Any) -> list[tuple[str, Any]]:
        """Audio and isFinal by context; an error message is kept for the close's error."""
        self._heard_at = asyncio.get_running_loop().time()
        if not isinstance(message, str):
            return []
        try:
            data = json.loads(message)
        except json.JSONDecodeError:
            return []
        context = data.get("contextId") or data.get("context_id") or ""
        routed: list[tuple[str, Any]] = []
        if data.get("audio"):
            routed.append((context, base64.b64decode(data["audio"])))
        if data.get("isFinal") is True or data.get("is_final") is True:
            self._live.discard(context)
            routed.append((context, END))
        elif not data.get("audio") and (data.get("error") or data.get("message")):
            conn.last_error = data
        return routed

    def _lost_error(self, conn: WebSocket, reason: str) -> BaseException:
        return self._socket_error(conn.last_error, conn.ws.close_code)

    def _conn_lost(self, conn: WebSocket) -> None:
        self._live.clear()

    async def _goodbye(self, conn: WebSocket) -> None:
        """`close_socket` only when no context is live: with one live, the service would
        finish generating its (unwanted) audio before closing."""
        if not self._live and not conn.closed:
            await conn.send({"close_socket": True})

    def _socket_error(self, problem: dict[str, Any], code: int | None) -> BaseException:
        kind = str(problem.get("error") or "")
        message = self._scrub(str(problem.get("message") or ""))
        if "api_key" in kind or "auth" in kind or "unauthorized" in kind:
            return PatterConnectionError(
                f"ElevenLabs rejected the API key ({kind}): check ELEVENLABS_API_KEY"
            )
        if "quota" in kind or "limit" in kind or "concurrent" in kind:
            return PatterConnectionError(f"ElevenLabs quota or rate limit ({kind}): {message}")
        if kind:
            return ProviderError(f"ElevenLabs closed the socket ({kind}): {message}")
        return Dropped(f"close code {code}")

    def _http_error(self, status: int, body: str) -> Exception:
        try:
            detail = json.loads(body).get("detail")
        except (json.JSONDecodeError, AttributeError):
            detail = None
        kind = str(detail.get("status", "")) if isinstance(detail, dict) else ""
        message = self._scrub(
            str(detail.get("message", "")) if isinstance(detail, dict) else str(detail or body)
        )[:300]
        if kind == "quota_exceeded" or status == 429 or "concurrent" in kind:
            return PatterConnectionError(
                f"ElevenLabs quota or rate limit ({kind or status}): {message}"
            )
        if status in (401, 403):
            return PatterConnectionError(
                f"ElevenLabs rejected the API key ({kind or status}): check ELEVENLABS_API_KEY"
            )
        if status >= 500:
            return PatterConnectionError(f"ElevenLabs is unavailable (HTTP {status})")
        return ProviderError(f"ElevenLabs refused the request (HTTP {status} {kind}): {message}")

    async def _after_close(self) -> None:
        if self._http is not None:
            await self._http.close()

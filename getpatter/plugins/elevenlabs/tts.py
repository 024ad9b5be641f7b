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
the bytes already played (the same text and voice give the same length of audio); if the socket
cannot be opened, that sentence falls back to the HTTP stream. A refused key or exhausted quota
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
_FINAL: Final = object()
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
            except _Unreachable as exc:
                log.warning("ElevenLabs socket unavailable (%s); using HTTP for now", exc)
                loop = asyncio.get_running_loop()
                stream._socket_retry_at = loop.time() + self.options.socket_retry_after
            except BaseException:
                await stream.aclose()
                raise
        return stream


class _Unreachable(Exception):
    """The socket could not be opened for a reason other than the key or the quota."""


class _Dropped(Exception):
    """The socket closed while a sentence was still waiting for audio."""


class ElevenLabsStream:
    """One call's ElevenLabs connection: `synthesize()` one sentence at a time, `aclose()`."""

    def __init__(self, options: ElevenLabsOptions, key: Secret) -> None:
        self.options = options
        self._key = key
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Queue[Any]] = {}  # context → its audio, then _FINAL
        self._live: set[str] = set()  # contexts the server still holds
        self._count = 0
        self._connecting = asyncio.Lock()
        self._closed = False
        self._socket_retry_at = 0.0  # after a failed connect, HTTP only until then
        # loop time of the socket's latest message, or of a sentence sent to it while none
        # waited: the socket has owed an answer and sent nothing since then
        self._heard_at = 0.0

    # --- synthesis ------------------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Audio for one sentence. Closing this iterator early cancels it at once."""
        if self._closed:
            raise ProviderError("ElevenLabs stream is closed")
        text = " ".join(text.split())
        if not text:
            return
        delivered = 0
        loop = asyncio.get_running_loop()
        if self.options.transport == "websocket" and loop.time() >= self._socket_retry_at:
            for attempt in (1, 2):
                try:
                    async with contextlib.aclosing(self._over_socket(text, delivered)) as audio:
                        async for chunk in audio:
                            delivered += len(chunk)
                            yield chunk
                    return
                except _Dropped as exc:
                    log.warning("ElevenLabs socket dropped mid-sentence (%s): reconnecting", exc)
                    if attempt == 2:
                        break
                except _Unreachable as exc:
                    log.warning("ElevenLabs socket unavailable (%s): using HTTP", exc)
                    self._socket_retry_at = loop.time() + self.options.socket_retry_after
                    break
        async with contextlib.aclosing(self._over_http(text, delivered)) as audio:
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
        if self._ws is None or silent < SILENT_SOCKET or (waiting and not self._waiting):
            return
        log.warning("ElevenLabs socket silent for %.1f s: replacing it", silent)
        await self._disconnect()

    async def _over_socket(self, text: str, skip: int) -> AsyncGenerator[bytes, None]:
        await self._replace_if_silent(waiting=True)
        ws = await self.connect()
        if len(self._live) >= MAX_CONTEXTS:
            log.info("ElevenLabs: %d contexts still open; new socket", len(self._live))
            await self._disconnect()
            ws = await self.connect()
        self._count += 1
        context = f"s{self._count}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if not self._waiting:
            self._heard_at = asyncio.get_running_loop().time()
        self._waiting[context] = queue
        self._live.add(context)
        closed = False  # close_context sent
        try:
            opening: dict[str, Any] = {"text": " ", "context_id": context}
            if self.options.voice_settings:
                opening["voice_settings"] = dict(self.options.voice_settings)
            await self._send(ws, opening)
            await self._send(ws, {"text": text + " ", "context_id": context, "flush": True})
            while (item := await self._next(queue)) is not _FINAL:
                if isinstance(item, BaseException):
                    raise item
                if not closed:  # its audio has started: now a close cannot lose it
                    closed = True
                    await self._send(ws, {"context_id": context, "close_context": True})
                if skip:
                    cut = min(skip, len(item))
                    item, skip = item[cut:], skip - cut
                if item:
                    yield item
            closed = True
        finally:
            self._waiting.pop(context, None)
            if not closed and self._ws is ws and context in self._live:
                with contextlib.suppress(_Dropped):  # cancelled before its audio: free it
                    await self._send(ws, {"context_id": context, "close_context": True})

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        try:
            await ws.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise _Dropped(type(exc).__name__) from None

    async def _next(self, queue: asyncio.Queue[Any]) -> Any:
        try:
            return await asyncio.wait_for(queue.get(), STALL_SECONDS)
        except TimeoutError:
            await self._disconnect()  # a silent socket is a dead one: the retry opens anew
            return _Dropped(f"no audio for {STALL_SECONDS:.0f} s")

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

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        """The open socket, opening it if needed (one opener at a time)."""
        async with self._connecting:
            if self._ws is not None and not self._ws.closed:
                return self._ws
            o = self.options
            query = {
                "model_id": o.model_id,
                "output_format": o.output_format,
                "inactivity_timeout": str(o.inactivity_timeout),
                **({"language_code": o.language_code} if o.language_code else {}),
                **o.extra_query,
            }
            url = (
                f"{o.ws_base}/v1/text-to-speech/{o.voice_id}/multi-stream-input?{urlencode(query)}"
            )
            try:
                async with asyncio.timeout(o.connect_timeout):
                    ws = await self._session().ws_connect(
                        url,
                        headers={"xi-api-key": self._key.reveal()},
                        max_msg_size=16 * 1024 * 1024,
                        autoping=True,
                    )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    raise PatterConnectionError(
                        f"ElevenLabs refused the connection (HTTP {exc.status}): the API key is "
                        "invalid or its quota is used up; check ELEVENLABS_API_KEY"
                    ) from None
                if exc.status == 429:
                    raise PatterConnectionError(
                        "ElevenLabs: too many concurrent requests for this account (HTTP 429)"
                    ) from None
                raise _Unreachable(f"HTTP {exc.status}") from None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _Unreachable(type(exc).__name__) from None
            self._ws = ws
            self._heard_at = asyncio.get_running_loop().time()
            self._reader = asyncio.get_running_loop().create_task(self._read(ws))
            return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Route audio to the sentence waiting for it; when the socket ends, tell them all."""
        problem: dict[str, Any] = {}
        async for message in ws:
            self._heard_at = asyncio.get_running_loop().time()
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except json.JSONDecodeError:
                continue
            context = data.get("contextId") or data.get("context_id") or ""
            queue = self._waiting.get(context)
            if data.get("audio") and queue is not None:
                queue.put_nowait(base64.b64decode(data["audio"]))
            if data.get("isFinal") is True or data.get("is_final") is True:
                self._live.discard(context)
                if queue is not None:
                    queue.put_nowait(_FINAL)
            elif not data.get("audio") and (data.get("error") or data.get("message")):
                problem = data
        if self._ws is ws:
            self._ws = None
        self._live.clear()
        error = self._socket_error(problem, ws.close_code)
        for queue in self._waiting.values():
            queue.put_nowait(error)

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
        return _Dropped(f"close code {code}")

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

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key else text

    async def _disconnect(self) -> None:
        """Close the socket. `close_socket` only when no context is live: with one live, the
        service would finish generating its (unwanted) audio before closing."""
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if ws is not None and not ws.closed:
            quiet = contextlib.suppress(
                ConnectionError, RuntimeError, aiohttp.ClientError, TimeoutError
            )
            if not self._live:
                with quiet:
                    await ws.send_str(json.dumps({"close_socket": True}))
            with quiet:
                await asyncio.wait_for(ws.close(), 2.0)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._live.clear()
        for queue in self._waiting.values():
            queue.put_nowait(_Dropped("socket replaced"))

    async def aclose(self) -> None:
        """Close the socket and the HTTP session; syntheses still running end with an error."""
        self._closed = True
        for queue in self._waiting.values():
            queue.put_nowait(ProviderError("ElevenLabs stream closed"))
        await self._disconnect()
        if self._http is not None:
            await self._http.close()

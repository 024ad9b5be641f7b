"""A fake of OpenAI's HTTP API on 127.0.0.1: chat completions, speech and transcriptions.

Written from the API reference (protocols.md §8 and platform.openai.com/docs/api-reference),
not from any client, so it checks a client rather than agreeing with it. Any OpenAI-style
client works against `base_url` (``http://127.0.0.1:P/v1``), the official SDK included.

- Auth: `Authorization: Bearer <key>`. No key → 401 with `code: null`; a wrong one → 401
  `invalid_api_key`, whose message quotes a masked key, as the real one does (so a client must
  not pass that message on). `quota_exceeded = True` → 429 `insufficient_quota` everywhere.
- `POST /v1/chat/completions`: the i-th request is answered with `replies[i]` (then
  `default_reply`): text, streamed a word at a time, or one or more `ToolCall`s, streamed as
  `tool_calls` fragments (`interleave_tool_calls` mixes several calls' fragments). Streaming
  follows §8: a role-first delta, content deltas, a `finish_reason` chunk, with
  `stream_options.include_usage` a usage chunk with empty `choices`, then `data: [DONE]`.
  `first_token_delay` / `token_delay` pace it (`stream: false` is not faked: 400).
  Requests are checked as the API does: a model, messages with known roles, `tool` messages
  answering a preceding assistant `tool_calls` id, function tools.
- `POST /v1/audio/speech`: a chunked body of a tone as long as the input would take to say
  (`seconds_per_char`), in `response_format` `pcm` (24 kHz PCM16 LE, no header) or `wav`
  (the same, with a header). The real default and the compressed formats (`mp3`, `opus`,
  `aac`, `flac`) are valid but cannot be produced here: 400 with code `unsupported_by_fake`; an
  unknown format or voice is the API's own 400 `invalid_value`. `first_byte_delay`,
  `chunk_ms` and `audio_speed` (× real time; 0 = as fast as possible) pace it.
- `POST /v1/audio/transcriptions` (multipart: `file`, `model`, `language`, `prompt`,
  `response_format`): the i-th non-silent file is `transcripts[i]` (then
  `default_transcript`); WAV files are decoded, and silence (RMS under `speech_rms`) gives
  `""`. Less than 0.1 s of audio is the API's 400 `audio_too_short`. `transcribe_delay`
  holds each answer back.

Faults: `drop_connections()` aborts every open connection (in-flight responses and idle
keep-alive ones) at the TCP level; `stall_speech = n` makes the next n speech requests send
their headers and then nothing (a stalled generation: no audio, no error, connection open);
`stall_speech_after(n)` makes the next one stop after `n` chunks of audio the same way
(mid-sentence).
For assertions: `requests` (every request, with its parsed
body), `chat_requests`, `speech_requests`, `transcription_requests`, `aborted` (responses the
client stopped reading before the end), `rejected` (statuses of refused requests).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import time
import uuid
import wave
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from getpatter.testing._loopback import LoopbackServer
from getpatter.testing.pacing import Pace

__all__ = ["FakeOpenAI", "ToolCall"]

VOICES = frozenset(
    "alloy ash ballad coral echo fable onyx nova sage shimmer verse marin cedar".split()
)
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SPEECH_RATE = 24000
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ToolCall:
    """A scripted model turn that calls a function instead of answering."""

    name: str
    arguments: dict[str, Any] | str
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


Reply = str | ToolCall | Sequence[ToolCall]


class _Refusal(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.body = (
            status,
            {"error": {"message": message, "type": kind, "param": param, "code": code}},
        )


def _bad(param: str | None, message: str, code: str | None = "invalid_value") -> _Refusal:
    return _Refusal(400, message, code=code, param=param)


def _missing(param: str) -> _Refusal:
    return _bad(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


@dataclass(eq=False)
class FakeOpenAI(LoopbackServer):
    """OpenAI's HTTP API on 127.0.0.1 at `base_url`; every knob is an attribute, live."""

    _on_stop = "leave"
    _client_max_size = 26 * 1024 * 1024  # room for audio uploads up to OpenAI's 25 MB

    api_key: str = "sk-test"
    _: KW_ONLY
    host: str = "127.0.0.1"
    port: int = 0
    #: Where the API lives on the host: OpenAI's `/v1`, or an OpenAI-compatible provider's
    #: own path (Groq serves the same API under `/openai/v1`, Cerebras under `/v1`).
    prefix: str = "/v1"
    replies: list[Reply] = field(default_factory=list)
    default_reply: str = "Okay."
    transcripts: list[str] = field(default_factory=list)
    default_transcript: str = "Hello."
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    interleave_tool_calls: bool = False
    first_byte_delay: float = 0.0
    chunk_ms: int = 100
    audio_speed: float = 0.0
    seconds_per_char: float = 0.06
    tone_hz: float = 440.0
    speech_rms: float = 200.0
    transcribe_delay: float = 0.0
    quota_exceeded: bool = False
    stall_speech: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    aborted: int = 0
    completed: int = 0
    _runner: web.AppRunner | None = field(default=None, repr=False)
    _speech_stalls: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.replies, self.transcripts = list(self.replies), list(self.transcripts)
        self.prefix = "/" + self.prefix.strip("/")

    def stall_speech_after(self, chunks: int) -> None:
        """The next speech request sends `chunks` chunks of audio and then nothing (no more
        audio, no end of the body, the connection open): a generation stalled mid-sentence."""
        self._speech_stalls.append(chunks)

    # --- addresses, views, lifecycle -------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    def _bodies(self, path: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"] == path]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return self._bodies(f"{self.prefix}/chat/completions")

    @property
    def speech_requests(self) -> list[dict[str, Any]]:
        return self._bodies(f"{self.prefix}/audio/speech")

    @property
    def transcription_requests(self) -> list[dict[str, Any]]:
        return self._bodies(f"{self.prefix}/audio/transcriptions")

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{self.prefix}/chat/completions", self._guard(self._chat)),
            web.post(f"{self.prefix}/audio/speech", self._guard(self._speech)),
            web.post(f"{self.prefix}/audio/transcriptions", self._guard(self._transcribe)),
        ]

    async def drop_connections(self) -> int:
        """Abort every open connection without a response end: a network failure."""
        return await self._abort_every_connection()

    # --- auth and errors -------------------------------------------------------------------

    def _guard(self, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                self._check_auth(request)
                if self.quota_exceeded:
                    raise _Refusal(
                        429,
                        "You exceeded your current quota, please check your plan and billing "
                        "details. For more information on this error, read the docs: "
                        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                        "insufficient_quota",
                        "insufficient_quota",
                    )
                response: web.StreamResponse = await handler(request)
                return response
            except _Refusal as refusal:
                self.rejected.append(refusal.status)
                return web.json_response(refusal.body, status=refusal.status)

        return guarded

    def _check_auth(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if not auth or scheme != "Bearer" or not key:
            raise _Refusal(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if key != self.api_key:
            shown = f"{key[:3]}{'*' * max(len(key) - 7, 0)}{key[-4:]}" if len(key) > 8 else "***"
            raise _Refusal(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _Refusal(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise _Refusal(400, "The request body must be a JSON object.")
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        return body

    # --- chat completions ------------------------------------------------------------------

    def _check_chat(self, body: dict[str, Any]) -> None:
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise _Refusal(400, "you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _missing("messages")
        open_calls: set[Any] = set()
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in _ROLES:
                raise _bad(f"messages[{i}]", f"Invalid value for 'messages[{i}].role'.", None)
            if m["role"] == "assistant" and m.get("tool_calls"):
                open_calls = {c.get("id") for c in m["tool_calls"] if isinstance(c, dict)}
            elif m["role"] == "tool":
                if m.get("tool_call_id") not in open_calls:
                    raise _bad(
                        f"messages.[{i}].role",
                        "Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.",
                        None,
                    )
            else:
                open_calls = set()
        for i, tool in enumerate(body.get("tools") or ()):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(fn, dict):
                raise _bad(f"tools[{i}]", f"Invalid value for 'tools[{i}].type'.")
            if not isinstance(fn.get("name"), str) or not _FUNCTION_NAME.fullmatch(fn["name"]):
                raise _bad(f"tools[{i}].function.name", f"Invalid 'tools[{i}].function.name'.")
        if body.get("stream_options") is not None and not body.get("stream"):
            message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            raise _bad("stream_options", message, None)

    def _next_reply(self) -> Reply:
        return self.replies.pop(0) if self.replies else self.default_reply

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        self._check_chat(body)
        if not body.get("stream"):
            raise _bad("stream", "FakeOpenAI only streams: set stream=true.", "unsupported_by_fake")
        reply = self._next_reply()
        text = reply if isinstance(reply, str) else ""
        calls: list[ToolCall] = (
            [] if isinstance(reply, str) else [reply] if isinstance(reply, ToolCall) else [*reply]
        )
        ids = [c.id or f"call_{uuid.uuid4().hex[:24]}" for c in calls]
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4 + 1
        pieces = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))] if text else []
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces) + sum(len(c.arguments_json) // 4 + 1 for c in calls),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = "tool_calls" if calls else "stop"
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)

        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            out = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": "" if not calls else None, "refusal": None}
        ]
        deltas += [{"content": piece} for piece in pieces]
        deltas += _tool_call_deltas(calls, ids, self.interleave_tool_calls)
        events = [chunk(d) for d in deltas] + [chunk({}, finish)]
        if include_usage:
            events.append(
                {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        try:
            for i, event in enumerate(events):
                delay = self.first_token_delay if i == 1 else self.token_delay if i > 1 else 0
                if delay:
                    await asyncio.sleep(delay)
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            self.aborted += 1
            return response
        self.completed += 1
        return response

    # --- speech ----------------------------------------------------------------------------

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        for name in ("model", "input", "voice"):
            if not body.get(name):
                raise _missing(name)
        text = body["input"]
        if not isinstance(text, str) or len(text) > 4096:
            raise _bad(
                "input",
                "Invalid 'input': string too long. Expected a string with maximum length 4096.",
                "string_above_max_length",
            )
        voice = body["voice"]
        voice_id = voice.get("id") if isinstance(voice, dict) else voice
        if not isinstance(voice_id, str) or (
            voice_id not in VOICES and not voice_id.startswith("voice_")
        ):
            raise _bad("voice", f"Invalid value: '{voice_id}'.")
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_FORMATS:
            raise _bad(
                "response_format",
                f"Invalid value: '{fmt}'. Supported values are: 'mp3', 'opus', 'aac', 'flac', "
                "'wav', and 'pcm'.",
            )
        if fmt not in ("pcm", "wav"):
            raise _bad(
                "response_format",
                f"FakeOpenAI produces only 'pcm' and 'wav', not {fmt!r}.",
                "unsupported_by_fake",
            )
        speed = body.get("speed", 1.0)
        if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            raise _bad("speed", "Invalid 'speed': expected 0.25 to 4.0.")
        pcm = self.tone(text, speed)
        if fmt == "wav":
            pcm = _wav_header(len(pcm)) + pcm
        response = web.StreamResponse(
            headers={"Content-Type": "audio/wav" if fmt == "wav" else "audio/pcm"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        step = max(2, SPEECH_RATE * 2 * self.chunk_ms // 1000)
        stalled = self.stall_speech > 0
        self.stall_speech -= stalled
        stop_after = self._speech_stalls.pop(0) if self._speech_stalls and not stalled else None
        try:
            if stalled:  # silent until the client gives up on it
                # polling the transport is how a handler learns its client has left
                while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                raise ConnectionResetError
            if self.first_byte_delay:
                await asyncio.sleep(self.first_byte_delay)
            pace = Pace(self.audio_speed)
            for n, i in enumerate(range(0, len(pcm), step)):
                if i:
                    await pace.sent(self.chunk_ms / 1000)
                while stop_after is not None and n >= stop_after:  # mid-sentence, then nothing
                    if request.transport is None or request.transport.is_closing():
                        raise ConnectionResetError
                    await asyncio.sleep(0.05)
                await response.write(pcm[i : i + step])
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            self.aborted += 1
            return response
        self.completed += 1
        return response

    def tone(self, text: str, speed: float = 1.0) -> bytes:
        """The PCM16 24 kHz audio the fake speaks for `text`: a tone as long as the words."""
        n = max(int(len(text) * self.seconds_per_char / speed * SPEECH_RATE), SPEECH_RATE // 10)
        t = np.arange(n) / SPEECH_RATE
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
        return (np.sin(2 * np.pi * self.tone_hz * t) * envelope * 6000).astype("<i2").tobytes()

    # --- transcriptions --------------------------------------------------------------------

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/form-data"):
            raise _Refusal(400, "Expected a multipart/form-data request body.")
        form = await request.post()
        upload = form.get("file")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not isinstance(upload, web.FileField):
            raise _missing("file")
        model = fields.get("model", "")
        if not model:
            raise _missing("model")
        data = upload.file.read()
        record: dict[str, Any] = {**fields, "filename": upload.filename, "bytes": len(data)}
        self.requests.append(
            {"path": request.path, "headers": dict(request.headers), "body": record}
        )
        ext = upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else ""
        if ext not in {"flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm"}:
            raise _bad(
                "file",
                "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', "
                "'mpga', 'oga', 'ogg', 'wav', 'webm']",
            )
        loud = True
        if ext == "wav":
            try:
                with wave.open(io.BytesIO(data)) as w:
                    rate, width = w.getframerate(), w.getsampwidth()
                    frames = w.readframes(w.getnframes())
            except (wave.Error, EOFError):
                raise _bad("file", "The audio file could not be decoded.", None) from None
            seconds = len(frames) / (rate * width)
            record.update(sample_rate=rate, seconds=seconds)
            if seconds < 0.1:
                raise _bad(
                    "file",
                    "Audio file is too short. Minimum audio length is 0.1 seconds.",
                    "audio_too_short",
                )
            samples = np.frombuffer(frames[: len(frames) // 2 * 2], "<i2").astype(np.float64)
            loud = width == 2 and float(np.sqrt(np.mean(samples**2))) >= self.speech_rms
        fmt = fields.get("response_format", "json")
        if fmt in ("verbose_json", "srt", "vtt") and model != "whisper-1":
            raise _bad(
                "response_format",
                f"response_format '{fmt}' is not compatible with model '{model}'. "
                "Use 'json' or 'text' instead.",
                "unsupported_value",
            )
        if self.transcribe_delay:
            await asyncio.sleep(self.transcribe_delay)
            if request.transport is None or request.transport.is_closing():
                self.aborted += 1  # the client is gone: its utterance is not used up
                return web.Response(status=499)
        text = (
            (self.transcripts.pop(0) if self.transcripts else self.default_transcript)
            if loud
            else ""
        )
        record["answered"] = text
        self.completed += 1
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        seconds = int(record.get("seconds", 1.0) + 0.999)
        return web.json_response({"text": text, "usage": {"type": "duration", "seconds": seconds}})


def _tool_call_deltas(
    calls: Sequence[ToolCall], ids: Sequence[str], interleave: bool
) -> list[dict[str, Any]]:
    """Each call: a first fragment (id, type, name, empty arguments), then argument pieces."""
    streams: list[list[dict[str, Any]]] = []
    for index, (call, call_id) in enumerate(zip(calls, ids, strict=True)):
        args = call.arguments_json
        pieces = [args[i : i + 8] for i in range(0, len(args), 8)]
        first = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        streams.append([first, *({"index": index, "function": {"arguments": p}} for p in pieces)])
    if interleave:
        order = [
            s[i] for i in range(max(map(len, streams), default=0)) for s in streams if i < len(s)
        ]
    else:
        order = [fragment for s in streams for fragment in s]
    return [{"tool_calls": [fragment]} for fragment in order]


def _wav_header(nbytes: int) -> bytes:
    """A 44-byte RIFF header for `nbytes` of 24 kHz mono PCM16."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, SPEECH_RATE, SPEECH_RATE * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + nbytes)
        + b"WAVEfmt "
        + fmt
        + b"data"
        + struct.pack("<I", nbytes)
    )

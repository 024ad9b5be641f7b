"""AnthropicLLM: Claude through the Messages API, streamed, with tool use.

Uses the official `anthropic` SDK (`AsyncAnthropic(base_url=...)` points it anywhere, a test
fake included). The SDK takes ~2 s to import, so it is imported in a worker thread: in the
background when the provider is built, and awaited off the event loop on the first turn.

Streaming → getpatter events: `text_delta` → `TextDelta` at once (the pipeline speaks sentence
by sentence while the model is still writing); `input_json_delta` fragments are collected per
`tool_use` block and become one `ToolCallRequest` at that block's `content_block_stop`; usage
from `message_start` and `message_delta` becomes one `Usage` at the end.

Failures: the SDK's own retries are off (its back-off is tuned for batch work, not a caller
waiting on the line); instead a request that fails before any output — connection refused,
overloaded, a 5xx — is retried once at once, and a stream cut mid-answer is re-requested once
with the text the caller already has skipped (when the new answer starts with it, which a
deterministic model does; otherwise the new remainder is spoken, and a warning logged). Auth,
quota and overload errors become `PatterConnectionError` naming Anthropic; a refused request
becomes `ProviderError`. The key never appears in either.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from getpatter.core.credentials import Secret, credential, validate_http_url
from getpatter.core.providers import LLMEvent, TextDelta, ToolCallRequest, Usage
from getpatter.core.sdk_import import in_sdk_thread, preload
from getpatter.errors import PatterConfigError, PatterConnectionError, PatterError, ProviderError

from ._convert import to_anthropic, tool_to_anthropic

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "AnthropicLLM", "AnthropicOptions"]

#: The small current model: on a phone call, time to first token matters most.
DEFAULT_MODEL: Final = "claude-haiku-4-5"
_RETRY_PAUSE: Final = 0.2
_RETRYABLE_STATUS: Final = frozenset({500, 502, 503, 504, 529})


@dataclass(frozen=True, slots=True)
class AnthropicOptions:
    """How AnthropicLLM calls the API; everything but the key (which is never stored here)."""

    model: str = DEFAULT_MODEL
    base_url: str = "https://api.anthropic.com"
    max_tokens: int = 1024
    temperature: float | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise PatterConfigError(f"AnthropicLLM model must be a model name, got {self.model!r}")
        object.__setattr__(
            self, "base_url", validate_http_url(self.base_url, "AnthropicLLM(base_url=...)")
        )
        if (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            raise PatterConfigError(
                f"AnthropicLLM max_tokens must be an int >= 1, got {self.max_tokens!r}"
            )
        if self.temperature is not None and not 0 <= self.temperature <= 1:
            raise PatterConfigError(
                f"AnthropicLLM temperature must be 0–1 or None, got {self.temperature!r}"
            )
        if not self.timeout > 0:
            raise PatterConfigError(
                f"AnthropicLLM timeout must be > 0 seconds, got {self.timeout!r}"
            )


#: what the client imports on its first request, if not before (on the loop)
_LAZY: Final = ("anyio._backends._asyncio", "jiter", "opentelemetry.propagate")


class _Dropped(Exception):
    """The response stream ended before `message_stop`."""


class AnthropicLLM:
    """Claude via Anthropic's Messages API, streamed (registered as llm ``"anthropic"``).

    - `model`: defaults to `claude-haiku-4-5`, the fast small model; pass e.g.
      `"claude-sonnet-4-5"` for a larger one.
    - `api_key`: defaults to `ANTHROPIC_API_KEY`; missing → `PatterConfigError` now.
    - `base_url`: the API host (a proxy, a test fake); `/v1/messages` is appended.
    - `max_tokens`: per reply; keep replies short for the phone.
    - `temperature`: sent only when set; models from Claude Opus 4.7 on refuse it (400).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        base_url: str = "https://api.anthropic.com",
        max_tokens: int = 1024,
        temperature: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.options = AnthropicOptions(model, base_url, max_tokens, temperature, timeout)
        self._key = Secret(
            credential(
                api_key, "ANTHROPIC_API_KEY", "Anthropic API key", "AnthropicLLM(api_key=...)"
            )
        )
        self._client: AsyncAnthropic | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        preload("anthropic")  # so the first turn does not wait ~2 s for it

    def __repr__(self) -> str:
        o = self.options
        extra = "" if o.base_url == "https://api.anthropic.com" else f", base_url={o.base_url!r}"
        return f"AnthropicLLM(model={o.model!r}, max_tokens={o.max_tokens}, api_key=<set>{extra})"

    async def _sdk_client(self) -> AsyncAnthropic:
        """One client (and connection pool) per event loop: httpx pools are loop-bound."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = await in_sdk_thread(self._new_client)
            self._client_loop = loop
        return self._client

    def _new_client(self) -> AsyncAnthropic:
        """Run in the SDK thread: the import, the TLS context, and the lazily imported parts."""
        sdk = importlib.import_module("anthropic")
        client = sdk.AsyncAnthropic(
            api_key=self._key.reveal(),
            base_url=self.options.base_url,
            max_retries=0,
            timeout=self.options.timeout,
        )
        _ = client.messages  # imported on first access: here, not on the loop
        for module in _LAZY:
            importlib.import_module(module)
        return client

    async def aclose(self) -> None:
        """Close the connection pool (optional: a finished call holds no request open)."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()

    def _request(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        system, converted = to_anthropic(messages)
        o = self.options
        request: dict[str, Any] = {
            "model": o.model,
            "max_tokens": o.max_tokens,
            "messages": converted,
            "stream": True,
        }
        if system:
            request["system"] = system
        if tools:
            request["tools"] = [tool_to_anthropic(t) for t in tools]
        if o.temperature is not None:
            # SDK 1.x dropped the keyword (models from Opus 4.7 on refuse it); older models
            # still take it, so it goes in the body, and only when asked for.
            request["extra_body"] = {"temperature": o.temperature}
        return request

    async def chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[LLMEvent]:
        """Stream one reply. Closing this iterator (or cancelling its consumer) closes the HTTP
        response, which cancels the generation."""
        request = self._request(messages, tools)
        client = await self._sdk_client()
        sdk = importlib.import_module("anthropic")  # loaded by now: a dict lookup
        said = ""  # text already yielded: a re-request must not say it twice
        tool_calls = 0
        for attempt in (1, 2):
            last = attempt == 2
            try:
                stream = await client.messages.create(**request)
            except Exception as exc:
                error = self._error(exc, sdk)
                if last or not _retryable(exc, sdk):
                    raise error from None
                log.warning("Anthropic request failed (%s); retrying once", error)
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            replay = said
            try:
                assembler = _Assembler()
                async for event in stream:
                    for out in assembler.feed(event):
                        if isinstance(out, TextDelta):
                            text, replay = _after_replay(out.text, replay)
                            if not text:
                                continue
                            said += text
                            out = TextDelta(text)
                        elif isinstance(out, ToolCallRequest):
                            tool_calls += 1
                        yield out
                if not assembler.stopped:
                    raise _Dropped("the stream ended before message_stop")
                return
            except Exception as exc:
                dropped = isinstance(exc, _Dropped) or _is_transport_error(exc, sdk)
                error = (
                    PatterConnectionError(f"Anthropic: the response stream was cut ({_kind(exc)})")
                    if dropped
                    else self._error(exc, sdk)
                )
                if last or tool_calls or not (dropped or _retryable(exc, sdk)):
                    raise error from None
                log.warning("%s; asking again once", error)
            finally:
                await stream.close()

    def _error(self, exc: BaseException, sdk: Any) -> PatterError:
        """The SDK's exception as a getpatter error that names Anthropic and never the key."""
        if isinstance(exc, PatterError):
            return exc
        if isinstance(exc, sdk.APIConnectionError) or _is_transport_error(exc, sdk):
            return PatterConnectionError(
                f"Anthropic: could not reach {self.options.base_url} ({_kind(exc)})"
            )
        status = getattr(exc, "status_code", None)
        kind, message = _error_body(getattr(exc, "body", None))
        message = self._scrub(message or str(exc))
        if status == 401 or kind == "authentication_error":
            return PatterConnectionError(
                f"Anthropic rejected the API key ({kind or 'HTTP 401'}): check ANTHROPIC_API_KEY "
                "or AnthropicLLM(api_key=...)"
            )
        if status == 403 or kind == "permission_error":
            return PatterConnectionError(f"Anthropic refused the key's access ({kind}): {message}")
        if status in (402, 429) or kind in ("billing_error", "rate_limit_error"):
            return PatterConnectionError(
                f"Anthropic rate limit or quota exceeded ({kind or status}): {message}"
            )
        if status in _RETRYABLE_STATUS or kind in ("overloaded_error", "api_error"):
            return PatterConnectionError(f"Anthropic is unavailable ({kind or status}): {message}")
        return ProviderError(f"Anthropic rejected the request ({kind or status}): {message}")

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key else text


def _error_body(body: Any) -> tuple[str, str]:
    """(type, message) from `{"type": "error", "error": {"type", "message"}}`."""
    if isinstance(body, dict):
        error = body.get("error")
        inner: dict[str, Any] = error if isinstance(error, dict) else body
        return str(inner.get("type") or ""), str(inner.get("message") or "")
    return "", ""


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


def _is_transport_error(exc: BaseException, sdk: Any) -> bool:
    """A broken connection, from the SDK or from the HTTP library under it."""
    if isinstance(exc, sdk.APIConnectionError):
        return True
    return any(
        cls.__name__ in ("TransportError", "RemoteProtocolError", "ReadError")
        and cls.__module__.split(".")[0].startswith("httpx")
        for cls in type(exc).__mro__
    )


def _retryable(exc: BaseException, sdk: Any) -> bool:
    if _is_transport_error(exc, sdk):
        return True
    kind, _ = _error_body(getattr(exc, "body", None))
    return getattr(exc, "status_code", None) in _RETRYABLE_STATUS or kind == "overloaded_error"


def _after_replay(text: str, replay: str) -> tuple[str, str]:
    """Skip the part of `text` the caller already heard; returns (new text, replay left)."""
    if not replay:
        return text, ""
    n = 0
    while n < len(text) and n < len(replay) and text[n] == replay[n]:
        n += 1
    if n == len(text):
        return "", replay[n:]
    if n < len(replay):
        log.warning("Anthropic: the re-requested answer differs from what was already said")
    return text[n:], ""


class _Assembler:
    """Raw stream events → TextDelta now, ToolCallRequest per finished block, Usage at the end."""

    def __init__(self) -> None:
        self.tools: dict[int, tuple[str, str, list[str]]] = {}
        self.usage: dict[str, Any] = {}
        self.stopped = False
        self.last_char = ""

    def feed(self, event: Any) -> list[LLMEvent]:
        kind = getattr(event, "type", "")
        if kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                self.last_char = delta.text[-1:] or self.last_char
                return [TextDelta(delta.text)] if delta.text else []
            if delta.type == "input_json_delta" and event.index in self.tools:
                self.tools[event.index][2].append(delta.partial_json)
        elif kind == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                first = [] if not getattr(block, "input", None) else [_json(block.input)]
                self.tools[event.index] = (block.id, block.name, first)
            if self.last_char and not self.last_char.isspace():
                # blocks are separate passages; the next text (this block's, or the next
                # round's after a tool call) must not run into the last word
                self.last_char = " "
                return [TextDelta(" ")]
        elif kind == "content_block_stop":
            if event.index in self.tools:
                tool_id, name, parts = self.tools.pop(event.index)
                return [ToolCallRequest(tool_id, name, "".join(parts) or "{}")]
        elif kind == "message_start":
            self._take_usage(getattr(event.message, "usage", None))
        elif kind == "message_delta":
            self._take_usage(getattr(event, "usage", None))
            if reason := getattr(event.delta, "stop_reason", None):
                self.usage["stop_reason"] = reason
        elif kind == "message_stop":
            self.stopped = True
            usage = dict(self.usage)
            return [
                Usage(
                    input_tokens=int(usage.pop("input_tokens", 0) or 0),
                    output_tokens=int(usage.pop("output_tokens", 0) or 0),
                    details=usage,
                )
            ]
        return []

    def _take_usage(self, usage: Any) -> None:
        if usage is None:
            return
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = getattr(usage, name, None)
            if value is not None:
                self.usage[name] = value


def _json(value: Any) -> str:
    import json

    return json.dumps(value)

"""OpenAILLM: streaming Chat Completions with tools, and what the OpenAI HTTP providers share.

The `openai` SDK is imported, and each client built, in the SDK thread (core/sdk_import.py): the
import and the TLS context take about a second, which would stall every call on the event loop.
Every client is built with `max_retries=0`: a phone call cannot wait through the SDK's
backoff, so each provider retries once itself, and only where that cannot repeat what the
caller already heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from getpatter.core.credentials import Secret, credential, validate_http_url
from getpatter.core.providers import LLMEvent, TextDelta, ToolCallRequest, Usage
from getpatter.core.sdk_import import in_sdk_thread, preload
from getpatter.errors import PatterConfigError, PatterConnectionError, PatterError, ProviderError

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletionChunk

__all__ = ["OPENAI_BASE_URL", "OpenAILLM", "OpenAILLMOptions"]

log = logging.getLogger(__name__)

OPENAI_BASE_URL: Final = "https://api.openai.com/v1"
_TRANSPORT_MODULES: Final = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "h11", "anyio"})


# --- shared by the OpenAI HTTP providers ------------------------------------------------------


def openai_key(api_key: str | None, who: str) -> Secret:
    """The key from the argument or OPENAI_API_KEY; PatterConfigError names both if missing."""
    return Secret(credential(api_key, "OPENAI_API_KEY", "OpenAI API key", f"{who}(api_key=...)"))


def check_timeout(who: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PatterConfigError(f"{who} timeout must be a number of seconds, got {value!r}")
    if value <= 0:
        raise PatterConfigError(f"{who} timeout must be positive, got {value!r}")
    return float(value)


def check_name(who: str, what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PatterConfigError(f"{who} {what} must be a non-empty string, got {value!r}")
    return value.strip()


def preload_sdk() -> None:
    """Start importing the SDK in the SDK thread when a provider is built, so the first call
    does not wait ~1 s for it."""
    preload("openai")


#: what the client imports on its first request, if not before (the loop's first turn, else)
_LAZY: Final = ("anyio._backends._asyncio", "jiter")


async def build_client(key: Secret, base_url: str, request_timeout: float) -> AsyncOpenAI:
    """An `AsyncOpenAI` for `base_url`, built in the SDK thread (see the module docstring)."""

    def build() -> AsyncOpenAI:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            api_key=key.reveal(), base_url=base_url, max_retries=0, timeout=request_timeout
        )
        # resources are imported on first attribute access: here, not on the loop
        _ = client.chat.completions, client.audio.speech, client.audio.transcriptions
        for module in _LAZY:
            importlib.import_module(module)
        return client

    return await in_sdk_thread(build)


def is_transport_error(exc: BaseException) -> bool:
    """A dropped or refused connection (worth one retry), as opposed to an API answer."""
    from openai import APIConnectionError

    if isinstance(exc, APIConnectionError | OSError | asyncio.IncompleteReadError):
        return True
    return any(t.__module__.split(".")[0] in _TRANSPORT_MODULES for t in type(exc).__mro__[:-1])


def is_retryable(exc: BaseException) -> bool:
    """Worth one more try: the connection failed, or the server had a 5xx moment."""
    from openai import APIStatusError

    if isinstance(exc, APIStatusError):
        return exc.status_code >= 500
    return is_transport_error(exc)


def provider_error(
    exc: BaseException, what: str, key: Secret, where: str, key_env: str = "OPENAI_API_KEY"
) -> PatterError:
    """An SDK or transport error as a PatterError that says what to do, never with the key.

    OpenAI's 401 message quotes part of the key, so it is never passed on.
    """
    from openai import APIError, APIStatusError

    if isinstance(exc, PatterError):
        return exc
    secret = key.reveal()

    def scrub(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    if isinstance(exc, APIStatusError):
        status = exc.status_code
        error = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else {}
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or error.get("type") or "")
        message = scrub(str(error.get("message") or ""))[:300]
        if status == 401:
            return PatterConnectionError(
                f"{what} refused the API key (HTTP 401 {code or 'unauthorized'}): check "
                f"{key_env} or the provider's api_key=..."
            )
        if status == 403:
            return PatterConnectionError(f"{what} denied access (HTTP 403 {code}): {message}")
        if status == 429 and code == "insufficient_quota":
            return PatterConnectionError(
                f"{what}: the account is out of quota (HTTP 429 insufficient_quota): check the "
                "plan and billing details"
            )
        if status == 429:
            return PatterConnectionError(f"{what} is rate limiting us (HTTP 429 {code}): {message}")
        if status >= 500:
            return PatterConnectionError(f"{what} failed (HTTP {status} {code}): {message}")
        return ProviderError(f"{what} rejected the request (HTTP {status} {code}): {message}")
    if is_transport_error(exc):
        return PatterConnectionError(
            f"lost the connection to {what} at {where}: {type(exc).__name__}"
        )
    if isinstance(exc, APIError):
        return ProviderError(f"{what} reported an error: {scrub(str(exc))[:300]}")
    return ProviderError(f"{what} failed: {type(exc).__name__}: {scrub(str(exc))[:300]}")


# --- the LLM ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAILLMOptions:
    """What every request is sent with (the key is kept apart, as a Secret)."""

    model: str = "gpt-4o-mini"
    base_url: str = OPENAI_BASE_URL
    temperature: float | None = None
    max_tokens: int | None = None
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    include_usage: bool = True
    timeout: float = 30.0


@dataclass(slots=True)
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAILLM:
    """A Chat Completions model, streamed, with function tools.

    `base_url` makes it any OpenAI-compatible server: Groq (`https://api.groq.com/openai/v1`),
    Cerebras (`https://api.cerebras.ai/v1`), vLLM, Ollama (`http://localhost:11434/v1`), …;
    for those `api_key` may be any non-empty string (Ollama ignores it). `extra_body` adds
    provider-specific fields to every request. `max_tokens` is sent as `max_tokens`, the name
    compatible servers know. `include_usage=False` for a server that rejects `stream_options`.

    Closing the `chat()` iterator (a barge-in) closes the HTTP stream, which stops generation.
    A connection that fails before the first token is retried once; after text has been
    yielded it is an error, so the caller never hears a sentence twice.

    A preset for one OpenAI-compatible provider (`GroqLLM`, `CerebrasLLM`) only overrides the
    class attributes below: where its key comes from, what errors call it, its default URL
    and model (`model=None`, `base_url=None`: those defaults).
    """

    #: Where the key is read from when `api_key` is not given, and what errors name.
    key_env: str = "OPENAI_API_KEY"
    provider: str = "OpenAI"
    default_base_url: str = OPENAI_BASE_URL
    default_model: str = "gpt-4o-mini"

    def __init__(
        self,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        *,
        include_usage: bool = True,
        timeout: float = 30.0,
    ) -> None:
        who = type(self).__name__
        self._key = Secret(
            credential(api_key, self.key_env, f"{self.provider} API key", f"{who}(api_key=...)")
        )
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise PatterConfigError(f"{who} temperature must be 0 to 2, got {temperature!r}")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise PatterConfigError(f"{who} max_tokens must be a positive int, got {max_tokens!r}")
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise PatterConfigError(f"{who} extra_body must be a dict of extra request fields")
        self.options = OpenAILLMOptions(
            model=check_name(who, "model", self.default_model if model is None else model),
            base_url=validate_http_url(base_url or self.default_base_url, f"{who} base_url"),
            temperature=None if temperature is None else float(temperature),
            max_tokens=max_tokens,
            extra_body=dict(extra_body or {}),
            include_usage=bool(include_usage),
            timeout=check_timeout(who, timeout),
        )
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )
        preload_sdk()

    def __repr__(self) -> str:
        o = self.options
        name = type(self).__name__
        return f"{name}(model={o.model!r}, base_url={o.base_url!r}, api_key=<set>)"

    @property
    def _what(self) -> str:
        if self.options.base_url == self.default_base_url:
            return f"{self.provider} chat completions"
        return f"the OpenAI-compatible server at {self.options.base_url}"

    async def _client(self) -> AsyncOpenAI:
        """One client (and connection pool) per event loop, kept between turns."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = await build_client(self._key, self.options.base_url, self.options.timeout)
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the connection pool of the current event loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    def _params(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        o = self.options
        params: dict[str, Any] = {
            "model": o.model,
            "messages": [dict(m) for m in messages],
            "stream": True,
        }
        if o.include_usage:
            params["stream_options"] = {"include_usage": True}
        if tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description") or "",
                        "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                    },
                }
                for t in tools
            ]
            params["tool_choice"] = "auto"
        if o.temperature is not None:
            params["temperature"] = o.temperature
        if o.max_tokens is not None:
            params["max_tokens"] = o.max_tokens
        if o.extra_body:
            params["extra_body"] = dict(o.extra_body)
        return params

    async def chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[LLMEvent]:
        client = await self._client()
        params = self._params(messages, tools)
        for attempt in (1, 2):
            try:
                stream = await client.chat.completions.create(**params)
            except Exception as exc:
                if attempt == 1 and is_retryable(exc):
                    log.warning("%s: %s; retrying once", self._what, type(exc).__name__)
                    continue
                raise provider_error(
                    exc, self._what, self._key, self.options.base_url, self.key_env
                ) from None
            yielded = False
            try:
                calls: dict[int, _PendingCall] = {}
                async for chunk in stream:
                    for event in _events(chunk, calls):
                        yielded = True
                        yield event
                for event in _flush(calls):  # a server that ended without a finish_reason
                    yield event
                return
            except Exception as exc:
                if attempt == 1 and not yielded and is_transport_error(exc):
                    log.warning("%s: the stream dropped before any output; retrying", self._what)
                    continue
                raise provider_error(
                    exc, self._what, self._key, self.options.base_url, self.key_env
                ) from None
            finally:
                with contextlib.suppress(Exception):
                    await stream.close()


def _events(chunk: ChatCompletionChunk, calls: dict[int, _PendingCall]) -> Iterator[LLMEvent]:
    """One chunk's text, and each tool call once its fragments are complete."""
    for choice in chunk.choices or ():
        delta = choice.delta
        if delta is not None and delta.content:
            yield TextDelta(delta.content)
        for fragment in (delta.tool_calls if delta is not None else None) or ():
            pending = calls.setdefault(fragment.index, _PendingCall())
            pending.id = pending.id or (fragment.id or "")
            if fragment.function is not None:
                pending.name = pending.name or (fragment.function.name or "")
                if fragment.function.arguments:
                    pending.arguments.append(fragment.function.arguments)
        if choice.finish_reason is not None:
            yield from _flush(calls)
    usage = chunk.usage
    if usage is not None:
        yield Usage(
            input_tokens=usage.prompt_tokens or 0,
            output_tokens=usage.completion_tokens or 0,
            details=usage.model_dump(exclude_none=True),
        )


def _flush(calls: dict[int, _PendingCall]) -> Iterator[ToolCallRequest]:
    for index in sorted(calls):
        call = calls[index]
        if call.name:
            yield ToolCallRequest(
                call.id or f"call_{index}", call.name, "".join(call.arguments) or "{}"
            )
    calls.clear()

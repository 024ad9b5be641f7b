"""GoogleLLM: Gemini through the official `google-genai` SDK, streamed, with function tools.

The SDK takes `HttpOptions(base_url=...)`, so the same client talks to Google or to a loopback
fake; it is imported in the SDK thread (core/sdk_import.py) when the provider is built, and
each client is built there too (the import takes about a second).
`client.aio.models.generate_content_stream` is the REST `streamGenerateContent?alt=sse`.

Conversation shape. The pipeline keeps history in the Chat Completions shape; this module
converts at its edge: `system` messages become the `system_instruction`, `assistant` turns
become `model` contents (text, and a `function_call` part per tool call), and the `tool`
messages answering one assistant turn become a single `user` content of `function_response`
parts — the API wants the responses of one function-call turn together, part for part.
Gemini 3 models attach a `thought_signature` to function calls and refuse a history that
drops it; the signatures are remembered by tool-call id (bounded) and sent back.

Closing the `chat()` iterator (a barge-in) closes the HTTP stream. A connection that fails
before any output is retried once; afterwards it is an error, so nothing is said twice. The
SDK's own retries are off (its default), so its backoff never stalls a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from getpatter.core.credentials import Secret, credential, validate_http_url
from getpatter.core.providers import LLMEvent, TextDelta, ToolCallRequest, Usage
from getpatter.core.sdk_import import in_sdk_thread, preload
from getpatter.errors import PatterConfigError, PatterConnectionError, PatterError, ProviderError

__all__ = ["GEMINI_BASE_URL", "GoogleLLM", "GoogleLLMOptions"]

log = logging.getLogger(__name__)

GEMINI_BASE_URL: Final = "https://generativelanguage.googleapis.com"
_KEY_ENVS: Final = ("GOOGLE_API_KEY", "GEMINI_API_KEY")  # the SDK's order: GOOGLE_ first
_SIGNATURES_KEPT: Final = 256


def gemini_key(api_key: str | None, who: str) -> Secret:
    """The key from the argument, else GOOGLE_API_KEY, else GEMINI_API_KEY (as google-genai)."""
    env = next((e for e in _KEY_ENVS if os.environ.get(e, "").strip()), "GEMINI_API_KEY")
    return Secret(credential(api_key, env, "Gemini API key", f"{who}(api_key=...)"))


@dataclass(frozen=True, slots=True)
class GoogleLLMOptions:
    """What every request is sent with (the key is kept apart, as a Secret)."""

    model: str = "gemini-2.5-flash"
    base_url: str = GEMINI_BASE_URL
    api_version: str | None = None  # None: the SDK's default
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise PatterConfigError(f"GoogleLLM model must be a model id, got {self.model!r}")
        object.__setattr__(self, "base_url", validate_http_url(self.base_url, "GoogleLLM base_url"))
        t = self.temperature
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 2
        ):
            raise PatterConfigError(f"GoogleLLM temperature must be 0 to 2, got {t!r}")
        m = self.max_tokens
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise PatterConfigError(f"GoogleLLM max_tokens must be a positive int, got {m!r}")
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not (0 < self.timeout < 3600)
        ):
            raise PatterConfigError(
                f"GoogleLLM timeout must be positive seconds, got {self.timeout!r}"
            )


class GoogleLLM:
    """A Gemini model, streamed, with function tools (registered as llm ``"google"``).

    - `api_key`: defaults to `GOOGLE_API_KEY`, else `GEMINI_API_KEY` (google-genai's order).
    - `base_url`: the Gemini API host (a proxy, a test fake); `api_version` e.g. "v1beta".
    - `temperature`, `max_tokens` (sent as `maxOutputTokens`), `timeout` per request.
    """

    def __init__(
        self,
        model: str = "gemini-2.5-flash",
        api_key: str | None = None,
        base_url: str = GEMINI_BASE_URL,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        api_version: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._key = gemini_key(api_key, "GoogleLLM")
        self.options = GoogleLLMOptions(
            model=model.strip() if isinstance(model, str) else model,
            base_url=base_url,
            api_version=api_version,
            temperature=None if temperature is None else temperature,
            max_tokens=max_tokens,
            timeout=timeout,
        )
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._signatures: OrderedDict[str, bytes] = OrderedDict()
        preload("google.genai")  # so the first turn does not wait ~1 s for it

    def __repr__(self) -> str:
        o = self.options
        return f"GoogleLLM(model={o.model!r}, base_url={o.base_url!r}, api_key=<set>)"

    @property
    def _what(self) -> str:
        if self.options.base_url == GEMINI_BASE_URL:
            return "the Gemini API"
        return f"the Gemini API at {self.options.base_url}"

    async def _client(self) -> Any:
        """One client (and connection pool) per event loop, built off the loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            o, key = self.options, self._key

            def build() -> Any:
                genai = importlib.import_module("google.genai")
                types = importlib.import_module("google.genai.types")
                http = types.HttpOptions(
                    base_url=o.base_url, api_version=o.api_version, timeout=int(o.timeout * 1000)
                )
                return genai.Client(api_key=key.reveal(), vertexai=False, http_options=http)

            client = await in_sdk_thread(build)
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the connection pool of the current event loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aio.aclose()

    # --- the request -----------------------------------------------------------------------

    def _config(self, system: str, tools: Sequence[Mapping[str, Any]]) -> Any:
        from google.genai import types

        o = self.options
        config: dict[str, Any] = {
            # the pipeline runs tools itself: the SDK must only report the calls
            "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True),
        }
        if system:
            config["system_instruction"] = system
        if tools:
            config["tools"] = [
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name=t["name"],
                            description=t.get("description") or "",
                            parameters_json_schema=t.get("parameters")
                            or {"type": "object", "properties": {}},
                        )
                        for t in tools
                    ]
                )
            ]
        if o.temperature is not None:
            config["temperature"] = float(o.temperature)
        if o.max_tokens is not None:
            config["max_output_tokens"] = o.max_tokens
        return types.GenerateContentConfig(**config)

    def _contents(self, messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]]:
        """Chat Completions messages as (system instruction, Gemini contents)."""
        from google.genai import types

        system: list[str] = []
        contents: list[Any] = []
        names: dict[str, str] = {}  # tool call id → function name
        answers: list[Any] = []  # function_response parts of the current tool turn

        def close_answers() -> None:
            if answers:
                contents.append(types.Content(role="user", parts=list(answers)))
                answers.clear()

        for m in messages:
            role, content = m.get("role"), m.get("content")
            if role in ("system", "developer"):
                system.append(_text(content))
                continue
            if role == "tool":
                call_id = str(m.get("tool_call_id") or "")
                answers.append(
                    types.Part(
                        function_response=types.FunctionResponse(
                            id=call_id or None,
                            name=names.get(call_id, str(m.get("name") or "")),
                            response=_response(content),
                        )
                    )
                )
                continue
            close_answers()
            if role == "assistant":
                parts: list[Any] = []
                if _text(content):
                    parts.append(types.Part(text=_text(content)))
                for call in m.get("tool_calls") or ():
                    fn = call.get("function") or {}
                    call_id = str(call.get("id") or "")
                    names[call_id] = str(fn.get("name") or "")
                    try:
                        args = json.loads(fn.get("arguments") or "{}")
                    except ValueError:
                        args = {}
                    parts.append(
                        types.Part(
                            function_call=types.FunctionCall(
                                id=call_id or None, name=names[call_id], args=args
                            ),
                            thought_signature=self._signatures.get(call_id),
                        )
                    )
                if parts:
                    contents.append(types.Content(role="model", parts=parts))
            else:
                contents.append(types.Content(role="user", parts=[types.Part(text=_text(content))]))
        close_answers()
        return "\n\n".join(s for s in system if s), contents

    def _remember(self, call_id: str, signature: bytes | None) -> None:
        if signature:
            self._signatures[call_id] = signature
            while len(self._signatures) > _SIGNATURES_KEPT:
                self._signatures.popitem(last=False)

    async def chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[LLMEvent]:
        client = await self._client()
        system, contents = self._contents(messages)
        config = self._config(system, tools)
        for attempt in (1, 2):
            yielded = False
            try:
                usage: Usage | None = None  # every chunk has one; the last has the totals
                async for chunk in self._chunks(client, contents, config):
                    for event in self._events(chunk):
                        if isinstance(event, Usage):
                            usage = event
                            continue
                        yielded = True
                        yield event
                if usage is not None:
                    yield usage
                return
            except Exception as exc:
                if attempt == 1 and not yielded and _is_transport_error(exc):
                    log.warning(
                        "%s: %s before any output; retrying once", self._what, type(exc).__name__
                    )
                    continue
                raise self._error(exc) from None

    async def _chunks(self, client: Any, contents: list[Any], config: Any) -> AsyncIterator[Any]:
        """The SDK's stream, read by a task of its own. Closing the SDK's generator does not
        reach the nested generator that holds the HTTP response (it would stay open until
        garbage collection); cancelling the reading task does, and closes the connection."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        end = object()

        async def pump() -> None:
            try:
                stream = await client.aio.models.generate_content_stream(
                    model=self.options.model, contents=contents, config=config
                )
                async for chunk in stream:
                    queue.put_nowait(chunk)
                queue.put_nowait(end)
            except Exception as exc:
                queue.put_nowait(exc)

        task = asyncio.get_running_loop().create_task(pump())
        try:
            while (item := await queue.get()) is not end:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _events(self, chunk: Any) -> Iterator[LLMEvent]:
        for candidate in (chunk.candidates or ())[:1]:
            content = candidate.content
            for part in (content.parts if content is not None else None) or ():
                if getattr(part, "thought", False):
                    continue  # a thinking model's reasoning summary: not to be spoken
                if part.function_call is not None:
                    fc = part.function_call
                    call_id = fc.id or f"call_{uuid.uuid4().hex[:16]}"
                    self._remember(call_id, part.thought_signature)
                    yield ToolCallRequest(call_id, fc.name or "", json.dumps(fc.args or {}))
                elif part.text:
                    yield TextDelta(part.text)
        meta = chunk.usage_metadata
        if meta is not None:
            yield Usage(
                input_tokens=meta.prompt_token_count or 0,
                output_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
                details=meta.model_dump(exclude_none=True, mode="json"),
            )

    def _error(self, exc: BaseException) -> PatterError:
        """An SDK or transport error as a PatterError that says what to do, never the key."""
        if isinstance(exc, PatterError):
            return exc
        from google.genai import errors

        secret = self._key.reveal()

        def scrub(text: str) -> str:
            return text.replace(secret, "***") if secret else text

        what = self._what
        if isinstance(exc, errors.APIError):
            code, status = exc.code, str(exc.status or "")
            message = scrub(str(exc.message or ""))[:300]
            reasons = json.dumps(exc.details or {})
            if "API_KEY_INVALID" in reasons or (code in (401, 403) and "PERMISSION" in status):
                return PatterConnectionError(
                    f"{what} refused the API key (HTTP {code} {status}): check GEMINI_API_KEY "
                    "(or GOOGLE_API_KEY) or GoogleLLM(api_key=...)"
                )
            if code == 429:
                return PatterConnectionError(f"{what}: quota or rate limit (HTTP 429): {message}")
            if code >= 500:
                return PatterConnectionError(f"{what} failed (HTTP {code} {status}): {message}")
            return ProviderError(f"{what} rejected the request (HTTP {code} {status}): {message}")
        if _is_transport_error(exc):
            return PatterConnectionError(
                f"lost the connection to {what} at {self.options.base_url}: {type(exc).__name__}"
            )
        return ProviderError(f"{what} failed: {type(exc).__name__}: {scrub(str(exc))[:300]}")


_TRANSPORT_MODULES: Final = frozenset({"aiohttp", "httpx", "httpcore", "h11", "anyio"})


def _is_transport_error(exc: BaseException) -> bool:
    """A dropped or refused connection (worth one retry), not an answer from the API."""
    if isinstance(exc, OSError | asyncio.IncompleteReadError | TimeoutError):
        return True
    return any(t.__module__.split(".")[0] in _TRANSPORT_MODULES for t in type(exc).__mro__[:-1])


def _text(content: Any) -> str:
    """Message content as text (Chat Completions allows a list of typed parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _response(content: Any) -> dict[str, Any]:
    """A tool result as the JSON object `function_response.response` must be."""
    text = _text(content)
    try:
        value = json.loads(text)
    except ValueError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}

"""A fake Anthropic Messages API on 127.0.0.1, for testing LLM clients over real sockets.

`FakeAnthropic` serves `POST /v1/messages` the way Anthropic's API reference describes it,
written from those docs rather than from any client, so it checks a client instead of agreeing
with it:

- auth: the key in `x-api-key` (the documented header) or `Authorization: Bearer` (what the
  `anthropic` SDK 2.x sends) must be the fake's key, else 401 `authentication_error`; the
  `anthropic-version` header is required (400 `invalid_request_error`);
- the request is validated like the real API: roles are `user`/`assistant` only, the first is
  `user` and they alternate, text blocks are non-blank, every `tool_result` answers a `tool_use`
  of the message just before it and every `tool_use` is answered in the very next message, and
  the conversation ends with a user turn (current models refuse assistant prefill; set
  `allow_prefill=True` to accept it, as older models did);
- with `"stream": true` the answer is Server-Sent Events with named events — `message_start`,
  `content_block_start`, `ping`, `content_block_delta` (`text_delta` / `input_json_delta`),
  `content_block_stop`, `message_delta` (with `stop_reason` and the output token count) and
  `message_stop`; without it, one JSON message;
- errors are `{"type": "error", "error": {"type", "message"}, "request_id"}`.

    async with FakeAnthropic(replies=["Sure, one moment.", ToolUse("lookup", {"id": 7})]) as f:
        client = AsyncAnthropic(api_key=f.api_key, base_url=f.base_url)

The model is a script: each request takes the next reply (`default_reply` once it runs out). A
reply is text, a `ToolUse`, or a list of them (the content blocks of one message). The model is
deterministic: a request identical to one whose stream was cut gets that same reply again.
Tokens are words; a reply longer than `max_tokens` words is cut (`stop_reason: "max_tokens"`).
Faults: `overload()` / `rate_limit()` fail the next requests with 529 / 429, `drop_after()` cuts
the next stream at the TCP level after some text deltas, `drop_connections()` cuts every live one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from getpatter.testing._loopback import LoopbackServer

__all__ = ["FakeAnthropic", "Reply", "ToolUse"]


@dataclass(frozen=True)
class ToolUse:
    """A scripted `tool_use` block; `id` defaults to a fresh `toolu_…`."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


Reply = str | ToolUse | Sequence[str | ToolUse]

MAX_OUTPUT_TOKENS = 64000
_NO_PREFILL = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)


def _words(text: str) -> list[str]:
    """Text as the deltas a model would stream: words with their trailing spaces."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


class _Invalid(Exception):
    pass


class _Dropped(Exception):
    pass


def _blocks(message: dict[str, Any], i: int) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            raise _Invalid(f"messages.{i}: all messages must have non-empty content")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _Invalid(f"messages.{i}.content: Input should be a valid string or list")
    if not content:
        raise _Invalid(f"messages.{i}: all messages must have non-empty content")
    return content


def validate(body: dict[str, Any], *, allow_prefill: bool = False) -> None:
    """Raise `_Invalid` with the API's message for a request the real API would refuse."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _Invalid("max_tokens: Field required (an integer >= 1)")
    if max_tokens > MAX_OUTPUT_TOKENS:
        raise _Invalid(
            f"max_tokens: {max_tokens} > {MAX_OUTPUT_TOKENS}, which is the maximum allowed "
            f"number of output tokens for {body['model']}"
        )
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        raise _Invalid("temperature: range: 0..1")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _Invalid("system: Input should be a valid string or list of text blocks")
    names = set()
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not tool.get("name"):
            raise _Invalid(f"tools.{i}.name: Field required")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _Invalid(f"tools.{i}.custom.input_schema: Field required")
        if schema.get("type") != "object":
            raise _Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        if tool["name"] in names:
            raise _Invalid("tools: Tool names must be unique.")
        names.add(tool["name"])
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("messages: at least one message is required")
    previous_tool_uses: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise _Invalid('messages: first message must use the "user" role')
        if i and messages[i - 1].get("role") == role:
            raise _Invalid(
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        tool_uses, tool_results, seen_other = set(), set(), False
        for j, block in enumerate(_blocks(message, i)):
            kind = block.get("type") if isinstance(block, dict) else None
            where = f"messages.{i}.content.{j}"
            if kind == "text":
                text = block.get("text")
                if not isinstance(text, str) or not text:
                    raise _Invalid("messages: text content blocks must be non-empty")
                if not text.strip():
                    raise _Invalid("messages: text content blocks must contain non-whitespace text")
                seen_other = True
            elif kind == "tool_use" and role == "assistant":
                if not block.get("id") or not block.get("name"):
                    raise _Invalid(f"{where}.tool_use: `id` and `name` are required")
                if not isinstance(block.get("input"), dict):
                    raise _Invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
                tool_uses.add(block["id"])
            elif kind == "tool_result" and role == "user":
                if seen_other:
                    raise _Invalid(
                        f"{where}: tool_result blocks must come first in the user message, "
                        "before any other content"
                    )
                ref = block.get("tool_use_id")
                if ref not in previous_tool_uses:
                    raise _Invalid(
                        f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{ref}. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message."
                    )
                tool_results.add(ref)
            elif kind == "image":
                seen_other = True
            else:
                raise _Invalid(f"{where}.type: unexpected block type {kind!r} for a {role} message")
        if role == "user" and previous_tool_uses - tool_results:
            missing = ", ".join(sorted(previous_tool_uses - tool_results))
            raise _Invalid(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {missing}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
        previous_tool_uses = tool_uses if role == "assistant" else set()
    last = messages[-1]
    if last.get("role") == "assistant":
        if not allow_prefill:
            raise _Invalid(_NO_PREFILL)
        if previous_tool_uses:
            raise _Invalid(
                f"messages.{len(messages) - 1}: `tool_use` ids were found without "
                "`tool_result` blocks immediately after"
            )
        if _text_of(last.get("content")) != _text_of(last.get("content")).rstrip():
            raise _Invalid("messages: final assistant content cannot end with trailing whitespace")


class FakeAnthropic(LoopbackServer):
    """Anthropic's Messages API on 127.0.0.1 (`base_url`, no `/v1`: the SDK adds it).

    Knobs: `first_token_delay` (seconds before the first content block), `token_delay`
    (between deltas), `allow_prefill`. For assertions: `requests` (every accepted request
    body), `headers` (their headers), `rejected` (`(status, error type)` of every refusal),
    `completed` / `cancelled` / `dropped` (streams sent in full / closed early by the client /
    cut by a fault).
    """

    _on_stop = "drop"

    def __init__(
        self,
        api_key: str = "sk-ant-test",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        replies: Sequence[Reply] = (),
        default_reply: Reply = "Okay.",
        first_token_delay: float = 0.0,
        token_delay: float = 0.0,
        allow_prefill: bool = False,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.replies: list[Reply] = list(replies)
        self.default_reply = default_reply
        self.first_token_delay = first_token_delay
        self.token_delay = token_delay
        self.allow_prefill = allow_prefill
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.rejected: list[tuple[int, str]] = []
        self.completed = 0
        self.cancelled = 0
        self.dropped = 0
        self._failures: list[tuple[int, str, str]] = []
        self._drop_after: list[int] = []
        self._live: dict[int, web.Request] = {}
        self._aborted: set[int] = set()
        self._ids = itertools.count(1)
        self._retries: dict[str, Reply] = {}

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages)]

    # --- faults ----------------------------------------------------------------------------

    def overload(self, times: int = 1) -> None:
        """The next `times` requests get 529 `overloaded_error`, as during an API overload."""
        self._failures += [(529, "overloaded_error", "Overloaded")] * times

    def rate_limit(self, times: int = 1) -> None:
        """The next `times` requests get 429 `rate_limit_error` (with `retry-after`)."""
        message = "Number of request tokens has exceeded your per-minute rate limit"
        self._failures += [(429, "rate_limit_error", message)] * times

    def drop_after(self, deltas: int, times: int = 1) -> None:
        """Cut the next `times` streams at the TCP level, each after `deltas` content deltas."""
        self._drop_after = [deltas] * times

    async def drop_connections(self) -> int:
        """Abort every live streaming response (no final chunk): a network failure."""
        dropped = 0
        for key, request in list(self._live.items()):
            if request.transport is not None:
                self._aborted.add(key)
                request.transport.abort()
                dropped += 1
        await asyncio.sleep(0)
        return dropped

    # --- the endpoint ----------------------------------------------------------------------

    def _error(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.rejected.append((status, kind))
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_{secrets.token_hex(12)}",
        }
        return web.json_response(body, status=status, headers=headers)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-api-key")
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        if not key and scheme.lower() == "bearer":
            key = bearer.strip()  # what the anthropic SDK 2.x sends for an API key
        if not key:
            return self._error(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "invalid_request_error", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return self._error(400, "invalid_request_error", "The request body must be an object.")
        if self._failures:
            status, kind, text = self._failures.pop(0)
            return self._error(status, kind, text, {"retry-after": "1"} if status == 429 else None)
        try:
            validate(body, allow_prefill=self.allow_prefill)
        except _Invalid as exc:
            return self._error(400, "invalid_request_error", str(exc))
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        fingerprint = json.dumps(body, sort_keys=True)
        reply = self._retries.pop(fingerprint, None)
        if reply is None:
            reply = self.replies.pop(0) if self.replies else self.default_reply
        content, stop_reason, output_tokens = self._answer(body, reply)
        usage = {
            "input_tokens": max(1, len(json.dumps(body.get("messages", []))) // 4),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        message: dict[str, Any] = {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": output_tokens},
        }
        if not body.get("stream"):
            self.completed += 1
            return web.json_response(message)
        response, finished = await self._stream(request, message, usage)
        if not finished:
            self._retries[fingerprint] = reply  # the same request again gets the same answer
        return response

    def _answer(self, body: dict[str, Any], reply: Reply) -> tuple[list[dict[str, Any]], str, int]:
        """The scripted reply as content blocks, cut at max_tokens words."""
        parts: list[str | ToolUse] = [reply] if isinstance(reply, str | ToolUse) else list(reply)
        last = body["messages"][-1]
        prefill = _text_of(last.get("content")) if last.get("role") == "assistant" else ""
        budget = body["max_tokens"]
        content: list[dict[str, Any]] = []
        tokens = 0
        for part in parts:
            if isinstance(part, ToolUse):
                block_id = part.id or f"toolu_{next(self._ids):02d}{secrets.token_hex(10)}"
                content.append(
                    {"type": "tool_use", "id": block_id, "name": part.name, "input": part.input}
                )
                tokens += 10
                continue
            if prefill and part.startswith(prefill):  # a prefilled turn continues the text
                part, prefill = part[len(prefill) :], ""
            words = _words(part)
            if tokens + len(words) > budget:
                words = words[: max(0, budget - tokens)]
                if words:
                    content.append({"type": "text", "text": "".join(words)})
                return content, "max_tokens", budget
            tokens += len(words)
            content.append({"type": "text", "text": part})
        tool = any(block["type"] == "tool_use" for block in content)
        return content, "tool_use" if tool else "end_turn", max(tokens, 1)

    async def _stream(
        self, request: web.Request, message: dict[str, Any], usage: dict[str, int]
    ) -> tuple[web.StreamResponse, bool]:
        """Send the answer as SSE; False when the stream did not reach its end."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": f"req_{secrets.token_hex(12)}",
            }
        )
        await response.prepare(request)
        drop_after = self._drop_after.pop(0) if self._drop_after else None
        self._live[id(request)] = request
        deltas = 0

        async def send(event: str, data: dict[str, Any]) -> None:
            payload = f"event: {event}\ndata: {json.dumps(data)}\n\n"
            await response.write(payload.encode())

        async def delta(index: int, body: dict[str, Any]) -> None:
            nonlocal deltas
            if drop_after is not None and deltas >= drop_after:
                assert request.transport is not None
                request.transport.abort()
                raise _Dropped
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            await send(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": body},
            )
            deltas += 1

        try:
            start = {**message, "content": [], "stop_reason": None}
            start["usage"] = {**usage, "output_tokens": 1}
            await send("message_start", {"type": "message_start", "message": start})
            if self.first_token_delay:
                await asyncio.sleep(self.first_token_delay)
            for index, block in enumerate(message["content"]):
                opening: dict[str, Any]
                if block["type"] == "text":
                    opening = {"type": "text", "text": ""}
                else:
                    opening = {**block, "input": {}}
                await send(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": opening},
                )
                if index == 0:
                    await send("ping", {"type": "ping"})
                if block["type"] == "text":
                    for piece in _words(block["text"]):
                        await delta(index, {"type": "text_delta", "text": piece})
                else:
                    text = json.dumps(block["input"])
                    for i in range(0, max(len(text), 1), 12):
                        await delta(
                            index, {"type": "input_json_delta", "partial_json": text[i : i + 12]}
                        )
                await send("content_block_stop", {"type": "content_block_stop", "index": index})
            await send(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": message["usage"]["output_tokens"]},
                },
            )
            await send("message_stop", {"type": "message_stop"})
            await response.write_eof()
            self.completed += 1
            return response, True
        except _Dropped:
            self.dropped += 1
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            if id(request) in self._aborted:
                self.dropped += 1
            else:
                self.cancelled += 1
        finally:
            self._live.pop(id(request), None)
            self._aborted.discard(id(request))
        return response, False

"""A fake of the Gemini API's streaming content generation on 127.0.0.1.

Written from the Gemini API reference (ai.google.dev/api: `models.streamGenerateContent`,
`Content`, `Part`, `FunctionCall`, `FunctionResponse`, `Tool`, `UsageMetadata`) and the
error shape Google APIs return, not from any client:

- `POST /{v1beta|v1}/models/{model}:streamGenerateContent` — with `?alt=sse` the answer is
  Server-Sent Events, one `GenerateContentResponse` per `data:` event (events end in CRLF
  CRLF, as Google's frontends send them) and no end sentinel: the stream ending is the end.
  Without `alt=sse` the same responses come as one JSON array. Auth is the `x-goog-api-key`
  header or `?key=`. No key → 403 `PERMISSION_DENIED`; a wrong key → **400**
  `INVALID_ARGUMENT` with reason `API_KEY_INVALID` (how the real API answers a bad key).
  `quota_exceeded` → 429 `RESOURCE_EXHAUSTED`. Errors are `{"error": {"code", "message",
  "status", "details"}}`.
- Field names are read as proto3 JSON is (lowerCamelCase or the original snake_case); the
  recorded `requests` hold them in lowerCamelCase. The body is checked as the API does:
  `contents` with roles `user`/`model` and non-empty `parts`; a turn of `functionResponse`
  parts must answer the preceding `functionCall` turn part for part (same count, same
  names); `tools[].functionDeclarations[]` with valid names and `parameters` or
  `parametersJsonSchema`; `systemInstruction` parts are text.
- The i-th request gets `replies[i]` (then `default_reply`): text, streamed a word or two per
  event, or `FunctionCall`s, sent whole in one event (Gemini does not fragment arguments).
  Every event carries `usageMetadata`; the last one has `finishReason: "STOP"` and the
  candidate token count. With `thought_signatures = True` (Gemini 3 behaviour) the first
  `functionCall` part carries a `thoughtSignature`, and a later request whose history holds
  that call without its signature is refused with 400, as the API does.

Knobs: `first_token_delay` / `token_delay`. Faults: `drop_connections()` aborts every open
connection. For assertions: `requests` (path, headers, query, body), `rejected` (statuses),
`aborted` (streams the client stopped reading).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from aiohttp import web

from getpatter.testing._loopback import LoopbackServer

__all__ = ["FakeGemini", "FunctionCall"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
_ROLES = frozenset({"user", "model"})
#: Fields whose values are the caller's own data (arguments, results, JSON schemas): their
#: keys are never renamed.
_OPAQUE = frozenset({"args", "response", "parameters", "parametersJsonSchema", "responseSchema"})


def camel_case(value: Any) -> Any:
    """The body with proto field names in lowerCamelCase. The API parses JSON with the proto3
    mapping, which accepts a field's original snake_case name as well (the SDK sends some
    that way, e.g. `parameters_json_schema`), so the fake reads both."""
    if isinstance(value, list):
        return [camel_case(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        head, *rest = key.split("_")
        name = head + "".join(w[:1].upper() + w[1:] for w in rest)
        out[name] = item if name in _OPAQUE else camel_case(item)
    return out


@dataclass(frozen=True)
class FunctionCall:
    """A scripted model turn that calls a function instead of answering."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


Reply = str | FunctionCall | Sequence[FunctionCall]


class _Refusal(Exception):
    def __init__(self, code: int, status: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        details: list[dict[str, Any]] = []
        if reason:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            )
        self.code = code
        self.body = {"error": {"code": code, "message": message, "status": status}}
        if details:
            self.body["error"]["details"] = details


def _invalid(message: str) -> _Refusal:
    return _Refusal(400, "INVALID_ARGUMENT", message)


@dataclass(eq=False)
class FakeGemini(LoopbackServer):
    """The Gemini API on 127.0.0.1 at `base_url` (what `HttpOptions(base_url=...)` takes)."""

    _on_stop = "leave"

    api_key: str = "AIza-test"
    _: KW_ONLY
    host: str = "127.0.0.1"
    port: int = 0
    replies: list[Reply] = field(default_factory=list)
    default_reply: str = "Okay."
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    thought_signatures: bool = False
    quota_exceeded: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    aborted: int = 0
    completed: int = 0
    _signatures: dict[str, str] = field(default_factory=dict, repr=False)
    _runner: web.AppRunner | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.replies = list(self.replies)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]

    def _routes(self) -> list[web.RouteDef]:
        return [web.post("/{version}/models/{call}", self._handle)]

    async def drop_connections(self) -> int:
        """Abort every open connection without a response end: a network failure."""
        return await self._abort_every_connection()

    # --- the request -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            version = request.match_info["version"]
            model, _, method = request.match_info["call"].partition(":")
            if version not in ("v1", "v1beta") or method != "streamGenerateContent":
                raise _Refusal(404, "NOT_FOUND", f"Method not found: {request.path}")
            self._check_key(request)
            try:
                body = await request.json()
            except ValueError:
                raise _invalid("Invalid JSON payload received.") from None
            if not isinstance(body, dict):
                raise _invalid("Invalid JSON payload received. Expected an object.")
            body = camel_case(body)
            self.requests.append(
                {
                    "path": request.path,
                    "query": dict(request.query),
                    "headers": dict(request.headers),
                    "body": body,
                }
            )
            if self.quota_exceeded:
                raise _Refusal(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "You exceeded your current quota, please check your plan and billing details.",
                )
            self._check_body(body)
        except _Refusal as refusal:
            self.rejected.append(refusal.code)
            return web.json_response(refusal.body, status=refusal.code)
        return await self._stream(request, model, body)

    def _check_key(self, request: web.Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key", "")
        if not key:
            raise _Refusal(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key != self.api_key:
            raise _Refusal(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                "API_KEY_INVALID",
            )

    def _check_body(self, body: dict[str, Any]) -> None:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _invalid("* GenerateContentRequest.contents: contents is not specified")
        pending: list[dict[str, Any]] = []  # the functionCall parts awaiting responses
        for i, content in enumerate(contents):
            where = f"GenerateContentRequest.contents[{i}]"
            if not isinstance(content, dict):
                raise _invalid(f"* {where}: must be an object")
            role = content.get("role", "user")
            parts = content.get("parts")
            if role not in _ROLES:
                raise _invalid(f"* {where}.role: Please use a valid role: user, model.")
            if not isinstance(parts, list) or not parts:
                raise _invalid(f"* {where}.parts: contents.parts must not be empty.")
            calls = [
                p["functionCall"] for p in parts if isinstance(p, dict) and "functionCall" in p
            ]
            answers = [
                p["functionResponse"]
                for p in parts
                if isinstance(p, dict) and "functionResponse" in p
            ]
            for part in parts:
                if not isinstance(part, dict) or not (
                    {"text", "functionCall", "functionResponse", "inlineData"} & part.keys()
                ):
                    raise _invalid(f"* {where}.parts: a part needs data (text, functionCall, …)")
            if answers:
                if (
                    role != "user"
                    or len(answers) != len(pending)
                    or sorted(a.get("name", "") for a in answers)
                    != sorted(c.get("name", "") for c in pending)
                ):
                    raise _invalid(
                        "Please ensure that the number of function response parts is equal to "
                        "the number of function call parts of the function call turn."
                    )
            elif pending:
                raise _invalid(
                    "Please ensure that function call turn comes immediately after a user turn "
                    "or after a function response turn."
                )
            for call_part in (p for p in parts if isinstance(p, dict) and "functionCall" in p):
                call = call_part["functionCall"]
                expected = self._signatures.get(str(call.get("id") or call.get("name")))
                if expected and call_part.get("thoughtSignature") != expected:
                    raise _invalid(
                        f"Function call is missing a thought_signature in functionCall parts. "
                        f"This is required for tools to work correctly, and missing "
                        f"thought_signature may lead to degraded model performance. "
                        f"Position: {where}.parts"
                    )
            pending = calls if role == "model" else []
        system = body.get("systemInstruction")
        if system is not None and not (
            isinstance(system, dict)
            and all(isinstance(p, dict) and "text" in p for p in system.get("parts") or [None])
        ):
            raise _invalid("* GenerateContentRequest.system_instruction: parts must be text")
        for t, tool in enumerate(body.get("tools") or ()):
            for d, decl in enumerate((tool or {}).get("functionDeclarations") or ()):
                where = f"GenerateContentRequest.tools[{t}].function_declarations[{d}]"
                if not isinstance(decl.get("name"), str) or not _NAME.fullmatch(decl["name"]):
                    raise _invalid(f"* {where}.name: Invalid function name.")
                if "parameters" in decl and "parametersJsonSchema" in decl:
                    raise _invalid(f"* {where}: set only one of parameters, parametersJsonSchema")
                schema = decl.get("parametersJsonSchema", decl.get("parameters"))
                if schema is not None and not isinstance(schema, dict):
                    raise _invalid(f"* {where}.parameters: must be a schema object")

    # --- the answer ------------------------------------------------------------------------

    def _events(self, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        reply = self.replies.pop(0) if self.replies else self.default_reply
        calls = (
            []
            if isinstance(reply, str)
            else [reply]
            if isinstance(reply, FunctionCall)
            else list(reply)
        )
        prompt = (
            sum(len(json.dumps(c)) for c in body["contents"]) // 4
            + len(json.dumps(body.get("systemInstruction") or "")) // 4
            + 1
        )
        response_id = secrets.token_urlsafe(12)
        parts: list[list[dict[str, Any]]] = []
        if isinstance(reply, str):
            words = reply.split(" ")
            parts = [
                [{"text": " ".join(words[i : i + 2]) + (" " if i + 2 < len(words) else "")}]
                for i in range(0, len(words), 2)
            ]
        else:
            call_parts: list[dict[str, Any]] = []
            for n, call in enumerate(calls):
                fc: dict[str, Any] = {"name": call.name, "args": call.args}
                if call.id:
                    fc["id"] = call.id
                part: dict[str, Any] = {"functionCall": fc}
                if self.thought_signatures and n == 0:
                    signature = base64.b64encode(secrets.token_bytes(24)).decode()
                    part["thoughtSignature"] = signature
                    self._signatures[str(call.id or call.name)] = signature
                call_parts.append(part)
            parts = [call_parts]
        events: list[dict[str, Any]] = []
        produced = 0
        for i, piece in enumerate(parts):
            produced += sum(len(json.dumps(p)) // 4 + 1 for p in piece)
            candidate: dict[str, Any] = {"content": {"parts": piece, "role": "model"}, "index": 0}
            if i == len(parts) - 1:
                candidate["finishReason"] = "STOP"
            usage: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
            if i == len(parts) - 1:
                usage = {
                    "promptTokenCount": prompt,
                    "candidatesTokenCount": produced,
                    "totalTokenCount": prompt + produced,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
                }
            events.append(
                {
                    "candidates": [candidate],
                    "usageMetadata": usage,
                    "modelVersion": model,
                    "responseId": response_id,
                }
            )
        return events

    async def _stream(
        self, request: web.Request, model: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        events = self._events(model, body)
        if request.query.get("alt") != "sse":
            self.completed += 1
            return web.json_response(events)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            for i, event in enumerate(events):
                delay = self.first_token_delay if i == 0 else self.token_delay
                if delay:
                    await asyncio.sleep(delay)
                await response.write(f"data: {json.dumps(event)}\r\n\r\n".encode())
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            self.aborted += 1
            return response
        self.completed += 1
        return response

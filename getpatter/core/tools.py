"""Running the agent's tools for any engine: schemas for the model, and one call of a tool.

Both engines (realtime and pipeline) offer the model the same function list — the agent's
tools plus two built-ins, `end_call` and `transfer_call` — and run a call through `run_tool`,
which never raises: whatever goes wrong (bad JSON from the model, a handler exception, a
timeout, a webhook error) becomes an `{"error": ...}` output the model can read and talk about.
The built-ins do not act themselves; they return an action the engine performs once the
speech in progress has played (hanging up mid-goodbye would cut it off).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    import aiohttp

    from getpatter.agent import Agent, Tool
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)

END_CALL: Final = "end_call"
TRANSFER_CALL: Final = "transfer_call"

_OK: Final = '{"ok": true}'

_BUILTINS: Final[dict[str, dict[str, Any]]] = {
    END_CALL: {
        "name": END_CALL,
        "description": "End the call after saying goodbye",
        "parameters": {"type": "object", "properties": {}},
    },
    TRANSFER_CALL: {
        "name": TRANSFER_CALL,
        "description": (
            "Transfer the caller to another phone number. Tell the caller you are transferring "
            "them before you call this."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "number": {
                    "type": "string",
                    "description": "The E.164 phone number to transfer to, e.g. +15550001111",
                }
            },
            "required": ["number"],
        },
    },
}


def tool_schemas(agent: Agent) -> list[dict[str, Any]]:
    """`{"name", "description", "parameters"}` for every function the model may call.

    The agent's tools come first; a tool named like a built-in replaces that built-in.
    """
    schemas = [tool.schema() for tool in agent.tools]
    taken = {schema["name"] for schema in schemas}
    schemas += [json.loads(json.dumps(b)) for name, b in _BUILTINS.items() if name not in taken]
    return schemas


@dataclass(frozen=True)
class ToolOutcome:
    """A tool call's result: `output` (JSON text) goes back to the model; `action`, if set,
    is for the engine to perform after the current speech has played."""

    output: str
    action: Literal["end_call", "transfer"] | None = None
    target: str = ""

    @property
    def ok(self) -> bool:
        return not _is_error(self.output)


def _is_error(output: str) -> bool:
    try:
        value = json.loads(output)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == {"error"}


def _error(message: str) -> ToolOutcome:
    return ToolOutcome(json.dumps({"error": message}))


def _to_json(result: Any) -> str:
    """The handler's result as JSON text; anything JSON can't hold becomes its str()."""
    try:
        return json.dumps(result, default=str, allow_nan=False)
    except (TypeError, ValueError):  # NaN/inf, circular structures, bad keys
        return json.dumps(str(result))


def _parse_arguments(arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """The model's arguments as a dict; raises ValueError with a message for the model."""
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def tool_context(call: CallSession, agent: Agent) -> dict[str, Any]:
    """The `ctx` a handler receives: who is on the call, and the call's variables."""
    return {
        "call_id": call.call_id,
        "caller": call.caller,
        "callee": call.callee,
        "direction": call.direction,
        "variables": {**agent.variables, **call.info.variables},
    }


async def run_tool(
    call: CallSession,
    agent: Agent,
    name: str,
    arguments: str | dict[str, Any],
    *,
    http: aiohttp.ClientSession | None = None,
) -> ToolOutcome:
    """Run one tool call the model asked for. Never raises (except cancellation)."""
    started = time.monotonic()
    outcome = await _run(call, agent, name, arguments, http)
    call.event(
        "tool",
        name=name,
        ok=outcome.ok,
        action=outcome.action,
        seconds=round(time.monotonic() - started, 3),
        # what was asked and answered, cut short: for the simulator's `[tool]` line and
        # the dashboard, not a full log of the handler's data
        arguments=_short(arguments if isinstance(arguments, str) else _to_json(arguments)),
        result=_short(outcome.output),
    )
    return outcome


def _short(text: str | None, limit: int = 300) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _run(
    call: CallSession,
    agent: Agent,
    name: str,
    arguments: str | dict[str, Any],
    http: aiohttp.ClientSession | None,
) -> ToolOutcome:
    try:
        args = _parse_arguments(arguments)
    except ValueError as exc:
        log.warning("call %s: tool %s: %s", call.call_id, name, exc)
        return _error(str(exc))
    tool = agent.get_tool(name)
    if tool is None:
        if name == END_CALL:
            return ToolOutcome(_OK, "end_call")
        if name == TRANSFER_CALL:
            number = args.get("number")
            if not isinstance(number, str) or not number.strip():
                return _error("transfer_call needs a 'number' (an E.164 phone number)")
            return ToolOutcome(_OK, "transfer", number.strip())
        log.warning("call %s: the model called unknown tool %r", call.call_id, name)
        return _error(f"unknown tool {name!r}")
    try:
        async with asyncio.timeout(tool.timeout):
            if tool.handler is not None:
                result = await _call_handler(tool, args, tool_context(call, agent))
            else:
                result = await _call_webhook(tool, args, call, http)
    except TimeoutError:
        log.warning("call %s: tool %s timed out after %gs", call.call_id, name, tool.timeout)
        return _error("tool timed out")
    except Exception as exc:
        log.exception("call %s: tool %s failed", call.call_id, name)
        return _error(f"{type(exc).__name__}: {exc}")
    return ToolOutcome(_to_json(result))


def _is_async(handler: Any) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004  (an object with an async __call__)
    )


async def _call_handler(tool: Tool, args: dict[str, Any], ctx: dict[str, Any]) -> Any:
    """Async handlers run on the loop; sync ones in a thread, so a slow one blocks nothing.

    A sync handler that times out keeps running in its thread (threads can't be killed); its
    result is thrown away.
    """
    handler = tool.handler
    assert handler is not None
    if _is_async(handler):
        result = handler(args, ctx)
    else:
        loop = asyncio.get_running_loop()
        run = functools.partial(contextvars.copy_context().run, handler, args, ctx)
        result = await loop.run_in_executor(None, run)
    if inspect.isawaitable(result):  # a sync function that returned a coroutine
        result = await result
    return result


async def _call_webhook(
    tool: Tool, args: dict[str, Any], call: CallSession, http: aiohttp.ClientSession | None
) -> Any:
    """POST the call to the tool's URL; its JSON reply (or text) is the result."""
    import aiohttp

    body = {
        "name": tool.name,
        "arguments": args,
        "call_id": call.call_id,
        "caller": call.caller,
        "callee": call.callee,
    }
    own = http is None
    session = aiohttp.ClientSession() if http is None else http
    try:
        async with session.post(tool.webhook_url, json=body) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise ToolWebhookError(f"webhook answered HTTP {resp.status}: {text[:200]}")
            try:
                return json.loads(text) if text.strip() else None
            except ValueError:
                return text
    finally:
        if own:
            await session.close()


class ToolWebhookError(Exception):
    """A tool's webhook answered with an HTTP error status."""


__all__ = ["END_CALL", "TRANSFER_CALL", "ToolOutcome", "run_tool", "tool_context", "tool_schemas"]

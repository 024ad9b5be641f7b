"""Tool schemas and `run_tool`: handlers, webhooks over a real socket, and every failure path."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from getpatter.agent import Agent, Tool
from getpatter.core.playout import PlayoutScheduler
from getpatter.core.session import CallCallbacks, CallInfo, CallSession
from getpatter.core.tools import END_CALL, TRANSFER_CALL, ToolOutcome, run_tool, tool_schemas


class _NoControl:
    async def hangup(self, call: CallSession) -> None: ...
    async def transfer(self, call: CallSession, to: str) -> None: ...
    async def start_recording(self, call: CallSession) -> None: ...


def make_call(agent: Agent, **variables: str) -> CallSession:
    info = CallInfo("CA" + "1" * 32, "+15557654321", "+15550001234", "inbound", variables=variables)
    return CallSession(
        info, agent, callbacks=CallCallbacks(), control=_NoControl(), scheduler=PlayoutScheduler()
    )


def tool_events(call: CallSession) -> list[dict[str, Any]]:
    return [e for e in call.events if e["kind"] == "tool"]


# --- schemas -------------------------------------------------------------------------------


def test_schemas_have_the_agents_tools_and_the_builtins() -> None:
    lookup = Tool(
        "lookup",
        "Look up an order.",
        {"type": "object", "properties": {"id": {"type": "string"}}},
        handler=lambda a, c: None,
    )
    schemas = tool_schemas(Agent(tools=[lookup]))
    assert [s["name"] for s in schemas] == ["lookup", END_CALL, TRANSFER_CALL]
    assert all(set(s) == {"name", "description", "parameters"} for s in schemas)
    assert schemas[0]["parameters"]["properties"] == {"id": {"type": "string"}}
    end = schemas[1]
    assert end["description"].startswith("End the call after saying goodbye")
    assert end["parameters"] == {"type": "object", "properties": {}}
    transfer = schemas[2]["parameters"]
    assert transfer["properties"]["number"]["type"] == "string"
    assert transfer["required"] == ["number"]
    # Fresh copies: editing one cannot change the next call's schemas.
    schemas[2]["parameters"]["required"].append("x")
    assert tool_schemas(Agent())[1]["parameters"]["required"] == ["number"]


def test_a_user_tool_overrides_a_builtin() -> None:
    mine = Tool("end_call", "My own goodbye.", handler=lambda a, c: {"bye": True})
    schemas = tool_schemas(Agent(tools=[mine]))
    assert [s["name"] for s in schemas] == [END_CALL, TRANSFER_CALL]
    assert schemas[0]["description"] == "My own goodbye."


async def test_overridden_builtin_runs_the_users_handler() -> None:
    agent = Agent(tools=[Tool("end_call", handler=lambda a, c: {"bye": True})])
    outcome = await run_tool(make_call(agent), agent, "end_call", "{}")
    assert outcome == ToolOutcome('{"bye": true}')


# --- handlers ------------------------------------------------------------------------------


async def test_async_handler_gets_args_and_context() -> None:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def book(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        seen.append((args, ctx))
        return {"confirmation": "ACME-123", "date": args["date"]}

    agent = Agent(tools=[Tool("book", handler=book)], variables={"shop": "Acme", "city": "Rome"})
    call = make_call(agent, city="Paris")
    outcome = await run_tool(call, agent, "book", '{"date": "2025-01-02"}')
    assert json.loads(outcome.output) == {"confirmation": "ACME-123", "date": "2025-01-02"}
    assert outcome.action is None and outcome.ok
    args, ctx = seen[0]
    assert args == {"date": "2025-01-02"}
    assert ctx == {
        "call_id": call.call_id,
        "caller": "+15557654321",
        "callee": "+15550001234",
        "direction": "inbound",
        "variables": {"shop": "Acme", "city": "Paris"},  # the call's own value wins
    }
    assert tool_events(call)[-1]["name"] == "book" and tool_events(call)[-1]["ok"] is True


async def test_sync_handler_runs_off_the_event_loop() -> None:
    threads: list[int] = []

    def slow(args: dict[str, Any], ctx: dict[str, Any]) -> str:
        threads.append(threading.get_ident())
        threading.Event().wait(0.2)  # blocking, as a sync library would
        return f"hello {args['who']}"

    agent = Agent(tools=[Tool("slow", handler=slow)])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    outcome = await run_tool(make_call(agent), agent, "slow", '{"who": "Ann"}')
    t.cancel()
    assert outcome.output == '"hello Ann"'
    assert threads and threads[0] != threading.get_ident()
    assert ticks >= 10  # the loop kept running while the handler blocked


async def test_unserialisable_results_become_text() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    agent = Agent(
        tools=[
            Tool("obj", handler=lambda a, c: Thing()),
            Tool("nested", handler=lambda a, c: {"when": Thing(), "n": 1}),
            Tool("nan", handler=lambda a, c: float("nan")),
            Tool("none", handler=lambda a, c: None),
        ]
    )
    call = make_call(agent)
    assert (await run_tool(call, agent, "obj", "{}")).output == '"a thing"'
    assert json.loads((await run_tool(call, agent, "nested", "{}")).output) == {
        "when": "a thing",
        "n": 1,
    }
    assert (await run_tool(call, agent, "nan", "{}")).output == '"nan"'
    assert (await run_tool(call, agent, "none", "")).output == "null"


async def test_handler_exception_becomes_an_error_output(caplog: pytest.LogCaptureFixture) -> None:
    def broken(args: dict[str, Any], ctx: dict[str, Any]) -> None:
        raise ValueError("no such date")

    agent = Agent(tools=[Tool("broken", handler=broken)])
    call = make_call(agent)
    outcome = await run_tool(call, agent, "broken", "{}")
    assert json.loads(outcome.output) == {"error": "ValueError: no such date"}
    assert not outcome.ok and outcome.action is None
    assert "tool broken failed" in caplog.text
    assert tool_events(call)[-1]["ok"] is False


async def test_timeout_async_and_sync() -> None:
    async def hangs(args: dict[str, Any], ctx: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    def blocks(args: dict[str, Any], ctx: dict[str, Any]) -> None:
        threading.Event().wait(1.0)

    agent = Agent(
        tools=[
            Tool("hangs", handler=hangs, timeout=0.1),
            Tool("blocks", handler=blocks, timeout=0.1),
        ]
    )
    call = make_call(agent)
    loop = asyncio.get_running_loop()
    for name in ("hangs", "blocks"):
        t0 = loop.time()
        outcome = await run_tool(call, agent, name, "{}")
        assert json.loads(outcome.output) == {"error": "tool timed out"}
        assert loop.time() - t0 < 0.5


@pytest.mark.parametrize(
    "arguments, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
    ],
)
async def test_bad_arguments_never_raise(arguments: str, message: str) -> None:
    called: list[object] = []
    agent = Agent(tools=[Tool("t", handler=lambda a, c: called.append(a))])
    outcome = await run_tool(make_call(agent), agent, "t", arguments)
    assert message in json.loads(outcome.output)["error"]
    assert not called


async def test_unknown_tool_is_an_error_output() -> None:
    agent = Agent()
    outcome = await run_tool(make_call(agent), agent, "launch_rockets", "{}")
    assert json.loads(outcome.output) == {"error": "unknown tool 'launch_rockets'"}
    assert outcome.action is None


# --- built-ins -----------------------------------------------------------------------------


async def test_builtins_return_actions_for_the_engine() -> None:
    agent = Agent()
    call = make_call(agent)
    assert await run_tool(call, agent, END_CALL, "") == ToolOutcome('{"ok": true}', "end_call")
    outcome = await run_tool(call, agent, TRANSFER_CALL, '{"number": "+15550001111"}')
    assert outcome == ToolOutcome('{"ok": true}', "transfer", "+15550001111")
    missing = await run_tool(call, agent, TRANSFER_CALL, "{}")
    assert missing.action is None and "number" in json.loads(missing.output)["error"]
    assert [e["action"] for e in tool_events(call)] == ["end_call", "transfer", None]


# --- webhooks ------------------------------------------------------------------------------


@pytest.fixture
async def hook_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def ok(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"slots": ["10:00", "11:30"]})

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="booked")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="database down")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.json_response({})

    app = web.Application()
    app.add_routes(
        [
            web.post("/ok", ok),
            web.post("/text", text),
            web.post("/fail", fail),
            web.post("/slow", slow),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", received
    await runner.cleanup()


async def test_webhook_tool_posts_and_returns_the_reply(
    hook_server: tuple[str, list[dict[str, Any]]],
) -> None:
    base, received = hook_server
    agent = Agent(
        tools=[
            Tool("slots", webhook_url=f"{base}/ok"),
            Tool("plain", webhook_url=f"{base}/text"),
            Tool("fails", webhook_url=f"{base}/fail"),
            Tool("slow", webhook_url=f"{base}/slow", timeout=0.2),
        ]
    )
    call = make_call(agent)
    outcome = await run_tool(call, agent, "slots", '{"day": "monday"}')
    assert json.loads(outcome.output) == {"slots": ["10:00", "11:30"]}
    assert received == [
        {
            "name": "slots",
            "arguments": {"day": "monday"},
            "call_id": call.call_id,
            "caller": "+15557654321",
            "callee": "+15550001234",
        }
    ]
    assert (await run_tool(call, agent, "plain", "{}")).output == '"booked"'
    failed = json.loads((await run_tool(call, agent, "fails", "{}")).output)["error"]
    assert "HTTP 500" in failed and "database down" in failed
    slow = await run_tool(call, agent, "slow", "{}")
    assert json.loads(slow.output) == {"error": "tool timed out"}


async def test_webhook_tool_uses_a_given_http_session(
    hook_server: tuple[str, list[dict[str, Any]]],
) -> None:
    import aiohttp

    base, received = hook_server
    agent = Agent(tools=[Tool("slots", webhook_url=f"{base}/ok")])
    async with aiohttp.ClientSession() as http:
        outcome = await run_tool(make_call(agent), agent, "slots", "{}", http=http)
        assert not http.closed
    assert outcome.ok and len(received) == 1


async def test_unreachable_webhook_is_an_error_output() -> None:
    agent = Agent(tools=[Tool("gone", webhook_url="http://127.0.0.1:9/nothing", timeout=2)])
    outcome = await run_tool(make_call(agent), agent, "gone", "{}")
    assert json.loads(outcome.output)["error"].startswith("Client")

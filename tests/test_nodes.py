"""One node as one of many, in process, through the fake networks (no nginx, no database):
its own route for everything it hands out, signatures on that route, capacity, drain.
The same behaviour behind real nginx and PostgreSQL: test_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest

from getpatter import Patter, Telnyx, Twilio
from getpatter.core.node import BUSY_MESSAGE, DRAIN_GOODBYE, OVERFLOW_HEADER, NodeSettings
from getpatter.errors import CallError, PatterConfigError
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.telnyx import FakeTelnyx
from getpatter.testing.twilio import FakeTwilio, compute_signature

from helpers import CALLER, HOST, NUMBER

SILENCE = np.zeros(8000 * 30, dtype=np.int16)
CALLEE = "+15550009876"


@pytest.fixture
async def node(net: FakeTwilio) -> AsyncIterator[Callable[..., Any]]:
    """`await node(**serve_kwargs)` → a Patter serving as a node against the fake Twilio."""
    started: list[tuple[Patter, asyncio.Task[None]]] = []

    async def start(**serve_kwargs: Any) -> Patter:
        phone = Patter(
            carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
            phone_number=NUMBER,
            webhook_url=HOST,
            persist=False,
        )
        agent = phone.agent(engine=ScriptedEngine(), first_message="Hello there.")
        kwargs = {"host": "127.0.0.1", "dashboard": False, **serve_kwargs}
        task = asyncio.create_task(phone.serve(agent, port=0, **kwargs))
        await asyncio.wait_for(phone.ready, 5)
        net.route(HOST, f"127.0.0.1:{phone.port}")
        started.append((phone, task))
        return phone

    yield start
    for phone, task in started:
        await phone.disconnect()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10)


async def live_call(net: FakeTwilio) -> Any:
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
    await call.wait_stream(5)
    await call.wait_for(lambda: len(call.marks_echoed) >= 1, 5)
    return call


def test_node_settings_are_checked_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for bad in ({"name": "Node_1"}, {"max_calls": 0}, {"drain_timeout": -1}, {"url": "http://x"}):
        with pytest.raises(PatterConfigError):
            NodeSettings.resolve(**bad)
    monkeypatch.setenv("GETPATTER_NODE", "b")
    monkeypatch.setenv("GETPATTER_MAX_CALLS", "40")
    monkeypatch.setenv("GETPATTER_DRAIN_TIMEOUT", "30")
    node = NodeSettings.resolve()
    assert (node.name, node.max_calls, node.drain_timeout) == ("b", 40, 30.0)
    assert node.base_url("calls.example.com") == "https://calls.example.com/n/b"
    own = NodeSettings.resolve(url="b.calls.example.com")
    assert own.base_url("calls.example.com") == "https://b.calls.example.com"
    assert own.prefix("calls.example.com") == ""


async def test_a_named_node_hands_out_its_own_route_and_takes_callbacks_on_it(
    node: Callable[..., Any], net: FakeTwilio
) -> None:
    phone = await node(node="b")
    call = await live_call(net)
    assert f'url="wss://{HOST}/n/b/ws/stream/' in call.twiml[0]
    await call.hangup()

    net.set_callee(CALLEE, answer="human")
    out = await phone.call(to=CALLEE, agent=phone.server.agent)
    fake = net.calls[out.call_id]
    await fake.wait_stream(5)
    await fake.wait_for(lambda: any(h.kind == "amd" and h.status for h in net.webhooks), 5)
    await fake.hangup()
    record = await out.wait(5)
    assert "amd" in [e["kind"] for e in record["events"]]  # the AMD callback was taken
    create = next(r for r in net.requests if r.path.endswith("/Calls.json"))
    assert create.form["StatusCallback"] == f"https://{HOST}/n/b/webhooks/twilio/status"
    assert create.form["AsyncAmdStatusCallback"] == f"https://{HOST}/n/b/webhooks/twilio/amd"
    hooks = [h for h in net.webhooks if h.call_sid == out.call_id]
    assert hooks and all(h.status == 204 for h in hooks), [(h.url, h.status) for h in hooks]

    # the prefixed route checks the signature of the prefixed URL, as Twilio signed it
    url = f"https://{HOST}/n/b/webhooks/twilio/status"
    params = {"CallSid": out.call_id, "CallStatus": "completed"}
    local = f"http://127.0.0.1:{phone.port}/n/b/webhooks/twilio/status"
    async with aiohttp.ClientSession() as http:
        for signed_url, status in ((url, 204), (f"https://{HOST}/webhooks/twilio/status", 403)):
            sig = compute_signature(net.auth_token, signed_url, list(params.items()))
            headers = {"Host": HOST, "X-Twilio-Signature": sig}
            async with http.post(local, data=params, headers=headers) as resp:
                assert resp.status == status


async def test_a_node_on_its_own_host_is_reached_and_verified_there(
    node: Callable[..., Any], net: FakeTwilio
) -> None:
    phone = await node(node="b", node_url="https://b.agent.example.test")
    net.route("b.agent.example.test", f"127.0.0.1:{phone.port}")
    call = await live_call(net)
    assert 'url="wss://b.agent.example.test/ws/stream/' in call.twiml[0]
    net.set_callee(CALLEE, answer="human")
    out = await phone.call(to=CALLEE, agent=phone.server.agent)
    fake = net.calls[out.call_id]
    await fake.wait_stream(5)
    await fake.hangup()
    await out.wait(5)
    hooks = [h for h in net.webhooks if h.call_sid == out.call_id]
    assert hooks and all(h.url.startswith("https://b.agent.example.test/") for h in hooks)
    assert all(h.status == 204 for h in hooks)
    await call.hangup()


async def test_a_full_lone_node_says_all_lines_are_busy(
    node: Callable[..., Any], net: FakeTwilio
) -> None:
    phone = await node(max_calls=1)
    first = await live_call(net)
    second = await net.place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
    await second.wait_ended(5)
    assert second.said == [BUSY_MESSAGE] and not second.errors
    assert not first.ended
    with pytest.raises(CallError, match="full"):
        await phone.call(to=CALLEE, agent=phone.server.agent)
    await first.hangup()


async def test_a_full_named_node_refuses_for_the_balancer_until_its_last_try(
    node: Callable[..., Any], net: FakeTwilio
) -> None:
    phone = await node(node="b", max_calls=1)
    first = await live_call(net)
    url = f"https://{HOST}/webhooks/twilio/voice"
    params = {"CallSid": "CA" + "1" * 32, "From": CALLER, "To": NUMBER, "CallStatus": "ringing"}
    sig = compute_signature(net.auth_token, url, list(params.items()))
    headers = {"Host": HOST, "X-Twilio-Signature": sig}
    local = f"http://127.0.0.1:{phone.port}/webhooks/twilio/voice"
    async with aiohttp.ClientSession() as http:
        async with http.post(local, data=params, headers=headers) as resp:
            assert resp.status == 503  # nginx tries the next node
        async with http.post(
            local, data=params, headers={**headers, OVERFLOW_HEADER: "all-busy"}
        ) as resp:
            assert resp.status == 200  # every node said no: the caller is told
            assert BUSY_MESSAGE in await resp.text()
        async with http.get(f"http://127.0.0.1:{phone.port}/health") as resp:
            health = await resp.json()
    assert health == {
        "status": "ok",
        "carrier": "twilio",
        "active_calls": 1,
        "node": "b",
        "max_calls": 1,
        "full": True,
    }
    await first.hangup()


async def test_drain_lets_calls_finish_then_says_goodbye(
    node: Callable[..., Any], net: FakeTwilio
) -> None:
    phone = await node(node="b", drain_timeout=1.5)
    short, long = await live_call(net), await live_call(net)
    stopping = asyncio.create_task(phone.disconnect())
    health = f"http://127.0.0.1:{phone.port}/health"
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(health) as resp:
                if resp.status == 503:
                    assert (await resp.json())["status"] == "draining"
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("/health never said draining")
    refused = await net.place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
    await refused.wait_ended(5)
    voice = [h for h in net.webhooks if h.call_sid == refused.call_sid and h.kind == "voice"]
    assert voice[0].status == 503  # no new calls while draining
    await asyncio.sleep(0.3)
    assert not short.ended and not long.ended  # live calls go on
    await short.hangup()
    await asyncio.wait_for(stopping, 10)
    await long.wait_ended(5)
    assert long.said == [DRAIN_GOODBYE]  # in the carrier's voice, then hung up


@contextlib.asynccontextmanager
async def telnyx_node(tx: FakeTelnyx, **serve_kwargs: Any) -> AsyncIterator[Patter]:
    phone = Patter(
        carrier=Telnyx(tx.api_key, tx.connection_id, tx.public_key, base_url=tx.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=False,
    )
    agent = phone.agent(engine=ScriptedEngine(), first_message="Hello there.")
    kwargs = {"host": "127.0.0.1", "dashboard": False, **serve_kwargs}
    task = asyncio.create_task(phone.serve(agent, port=0, **kwargs))
    await asyncio.wait_for(phone.ready, 5)
    tx.route(HOST, f"127.0.0.1:{phone.port}")
    try:
        yield phone
    finally:
        await phone.disconnect()
        await asyncio.wait_for(task, 10)


async def test_telnyx_node_has_the_call_s_webhooks_sent_to_itself() -> None:
    async with FakeTelnyx() as tx:
        tx.add_number(NUMBER, f"https://{HOST}/webhooks/telnyx/voice")
        async with telnyx_node(tx, node="b"):
            call = await tx.place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
            await call.wait_stream(5)
            answer = next(body for _, action, body in call.commands if action == "answer")
            assert answer["webhook_url"] == f"https://{HOST}/n/b/webhooks/telnyx/voice"
            assert answer["stream_url"].startswith(f"wss://{HOST}/n/b/ws/telnyx/stream/")
            await call.hangup()
            await call.wait_ended(5)


async def test_telnyx_full_node_says_busy_in_telnyx_s_voice() -> None:
    async with FakeTelnyx() as tx:
        tx.add_number(NUMBER, f"https://{HOST}/webhooks/telnyx/voice")
        async with telnyx_node(tx, max_calls=1):
            call = await tx.place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
            await call.wait_stream(5)
            busy = await tx.place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
            await busy.wait_ended(10)
            assert busy.said == [BUSY_MESSAGE]
            assert not call.ended
            await call.hangup()


async def test_a_node_behind_a_balancer_never_serves_its_dashboard_without_a_token(
    node: Callable[..., Any], net: FakeTwilio
) -> None:
    phone = await node(node="b", dashboard=True)  # on 127.0.0.1, but nginx makes it public
    async with aiohttp.ClientSession() as http:
        for path in ("/api/calls/active", "/n/b/api/calls/active"):
            url = f"http://127.0.0.1:{phone.port}{path}"
            async with http.get(url, headers={"Host": HOST}) as resp:
                assert resp.status == 401, path

"""Three nodes behind real nginx sharing real PostgreSQL (see cluster_rig.py), called through
the fake Twilio network: calls spread and stay on their node, callbacks come home, a full
node's calls go elsewhere, all full → the caller hears "all lines are busy", SIGTERM drains
(a rolling restart drops no call), kill -9 leaves `node_lost` records, control works across
nodes, and a PostgreSQL restart mid-call ends no call.

Node capacities: a 1, b 2, c 2 calls. Every test leaves the three nodes up and no call live.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from getpatter.core.node import BUSY_MESSAGE
from getpatter.testing import services
from getpatter.testing.twilio import FakeCall

from cluster_rig import (
    APP,
    CALLER,
    HEARTBEAT_TIMEOUT,
    HOST,
    NUMBER,
    Rig,
    node_of,
    open_rig,
    rolling_restart,
)

MISSING = services.missing()
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("cluster"),  # one rig, one worker (make test: --dist loadgroup)
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"CLUSTER TESTS SKIPPED: {', '.join(MISSING)} not installed "
        "(apt-get install nginx postgresql; .ci/run does)",
    ),
]
SILENCE = np.zeros(8000 * 60, dtype=np.int16)  # callers stay on the line until they hang up


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig() -> AsyncIterator[Rig]:
    async with open_rig("twilio") as the_rig:
        yield the_rig


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def all_up(rig: Rig) -> AsyncIterator[None]:
    """Every node running and no call live, before and after each test."""
    yield
    await rig.settle()


async def place(rig: Rig) -> FakeCall:
    call = await rig.net.place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
    await call.wait_stream(10)
    await call.wait_for(lambda: len(call.marks_echoed) >= 1, 10)  # the greeting is heard
    return call


async def test_calls_spread_stay_on_their_node_and_are_controlled_from_any(rig: Rig) -> None:
    calls = [await place(rig) for _ in range(3)]
    where = {c.call_sid: node_of(c) for c in calls}
    assert sorted(where.values()) == ["a", "b", "c"]  # round robin over three nodes

    # the dashboard API of node a lists the live calls of all three, with their nodes
    async def listed() -> dict[str, str]:
        status, body = await rig.get("a", "/api/calls/active")
        assert status == 200
        return {c["call_id"]: c.get("node", "") for c in body["calls"]}

    deadline = asyncio.get_running_loop().time() + 5
    while await listed() != where:
        assert asyncio.get_running_loop().time() < deadline, await listed()
        await asyncio.sleep(0.1)

    # a hang-up asked of node a ends the call node c holds
    victim = next(c for c in calls if where[c.call_sid] == "c")
    status, body = await rig.post("a", f"/api/calls/{victim.call_sid}/hangup")
    assert status == 200 and body["ok"] and body["node"] == "c", body
    await victim.wait_ended(5)
    row = await rig.wait_row(victim.call_sid, state="ended")
    assert (row["end_reason"], row["node"]) == ("operator_hangup", "c")
    assert not any(c.ended for c in calls if c is not victim)  # the others go on
    status, body = await rig.post("b", f"/api/calls/{victim.call_sid}/hangup")
    assert status == 404  # no longer live anywhere

    # a transfer asked of node c reaches the call on node b
    moved = next(c for c in calls if where[c.call_sid] == "b")
    status, body = await rig.post(
        "c", f"/api/calls/{moved.call_sid}/transfer", {"to": "+15550001111"}
    )
    assert status == 200 and body["node"] == "b", body
    await moved.wait_for(lambda: moved.transfers == ["+15550001111"], 5)
    row = await rig.wait_row(moved.call_sid, state="ended")
    assert (row["end_reason"], row["node"]) == ("transferred", "b")

    last = next(c for c in calls if where[c.call_sid] == "a")
    await last.hangup()
    row = await rig.wait_row(last.call_sid, state="ended")
    assert (row["end_reason"], row["node"]) == ("hangup", "a")
    assert not any(c.errors for c in calls)


async def test_outbound_call_placed_on_b_gets_its_callbacks_on_b(rig: Rig) -> None:
    callee = "+15550009876"
    rig.net.set_callee(callee, answer="human")
    call_id = await rig.dial("b", callee)
    call = rig.net.calls[call_id]
    await call.wait_stream(10)
    assert node_of(call) == "b"
    hooks = rig.net.webhooks
    await call.wait_for(lambda: any(h.kind == "amd" and h.status for h in hooks), 10)
    await call.hangup()
    row = await rig.wait_row(call_id, state="ended", node="b")
    assert row["direction"] == "outbound"
    hooks = [h for h in rig.net.webhooks if h.call_sid == call_id]
    kinds = {h.kind for h in hooks}
    assert {"amd", "status"} <= kinds, kinds
    for hook in hooks:  # every callback addressed node b, through nginx, and was taken
        assert hook.url.startswith(f"https://{HOST}/n/b/webhooks/twilio/"), hook.url
        assert hook.status == 204, (hook.kind, hook.status, hook.body)
    events = await rig.rows("SELECT kind FROM events WHERE call_id = $1", call_id)
    assert "amd" in {e["kind"] for e in events}  # node b handled its own AMD callback


async def test_full_nodes_pass_calls_on_and_all_full_hears_busy(rig: Rig) -> None:
    calls = [await place(rig) for _ in range(5)]
    # capacities a 1, b 2, c 2: round robin alone would put 2 on a; its 503 sent one on
    assert Counter(node_of(c) for c in calls) == {"a": 1, "b": 2, "c": 2}
    busy = await rig.net.place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
    await busy.wait_ended(15)
    assert busy.said == [BUSY_MESSAGE]  # in the carrier's voice, not its error message
    assert busy.status == "completed" and not busy.errors
    assert all(not c.ended for c in calls)
    assert await rig.call_row(busy.call_sid) is None  # no session was opened for it
    # one free line, on each node in turn: nginx tries every node until it finds it
    for name in ("a", "b", "c", "a", "b", "c"):
        leaving = next(c for c in calls if not c.ended and node_of(c) == name)
        await leaving.hangup()
        await rig.wait_row(leaving.call_sid, state="ended")
        await rig.wait_gone(leaving.call_sid)
        newcomer = await place(rig)
        assert node_of(newcomer) == name
        calls.append(newcomer)


async def test_rolling_restart_drops_no_call(rig: Rig) -> None:
    live = await rolling_restart(rig, place)
    for call in live:
        row = await rig.wait_row(call.call_sid, state="ended")
        assert row["end_reason"] == "hangup", row  # every call ended by its caller
        assert not call.errors


async def test_kill_9_leaves_node_lost_records_and_other_calls_untouched(rig: Rig) -> None:
    calls = [await place(rig) for _ in range(3)]
    victim = next(c for c in calls if node_of(c) == "c")
    await rig.kill("c")
    await victim.wait_ended(5)
    row = await rig.wait_row(victim.call_sid, within=HEARTBEAT_TIMEOUT + 2, end_reason="node_lost")
    assert row["node"] == "c" and row["answered"]
    survivors = [c for c in calls if c is not victim]
    assert not any(c.ended for c in survivors)
    for call in survivors:
        await call.hangup()
        row = await rig.wait_row(call.call_sid, state="ended")
        assert row["end_reason"] == "hangup"


async def test_postgres_restart_mid_call_ends_no_call(rig: Rig) -> None:
    calls = [await place(rig) for _ in range(3)]
    await asyncio.to_thread(rig.pg.restart, 1.0)
    await asyncio.sleep(1.5)
    assert not any(c.ended for c in calls)
    # control across nodes is back too (each node listens again on its channel)
    on_c = next(c for c in calls if node_of(c) == "c")
    deadline = asyncio.get_running_loop().time() + 10
    while (await rig.post("a", f"/api/calls/{on_c.call_sid}/hangup"))[0] != 200:
        assert asyncio.get_running_loop().time() < deadline, "no control after the restart"
        await asyncio.sleep(0.3)
    await on_c.wait_ended(5)
    for call in calls:
        if call is not on_c:
            await call.hangup()
    for call in calls:  # written once the database is back
        row = await rig.wait_row(call.call_sid, within=15, state="ended")
        assert row["end_reason"] == ("operator_hangup" if call is on_c else "hangup")
        assert not call.errors


async def test_workers_start_named_nodes_print_their_upstream_and_stop_on_sigterm(
    rig: Rig,
) -> None:
    port = services.free_port()
    env = {k: v for k, v in rig.env(rig.nodes["a"]).items() if k != "GETPATTER_NODE"}
    env["CLUSTER_TEST_DIAL_PORT"] = ""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "getpatter.cli", "serve", APP, "--workers", "2",
        "--port", str(port), "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not (lines and lines[-1] == "}\n" and any("_w2 {" in line for line in lines)):
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert raw, lines
            lines.append(raw.decode())
        text = "".join(lines)
        assert f"server 127.0.0.1:{port} max_fails=0;  # w1" in text
        assert "upstream getpatter_w2 {" in text
        for i, name in enumerate(("w1", "w2")):
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    async with rig.http.get(f"http://127.0.0.1:{port + i}/health") as resp:
                        assert (await resp.json())["node"] == name
                        break
                except aiohttp.ClientError:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

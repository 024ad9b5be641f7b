"""The cluster over Telnyx: three nodes behind real nginx sharing real PostgreSQL (cluster_rig.py),
called through the fake Telnyx network, whose Call Control app webhook is the shared host.

Telnyx sends every event of a call to one webhook URL, the app's until the node answers or
dials it with its own (`/n/<node>/...`). So what has to hold: a call's media socket and all
its later events (call.answered, streaming.*, AMD, call.hangup...) reach the node holding it,
for inbound and outbound calls, and control asked of another node reaches it too.

Node capacities: a 1, b 2, c 2 calls. Every test leaves the three nodes up and no call live.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from getpatter.core.node import BUSY_MESSAGE
from getpatter.testing import services
from getpatter.testing.telnyx import FakeCall, FakeTelnyx, Webhook

from cluster_rig import (
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
    pytest.mark.xdist_group("cluster_telnyx"),  # its own rig, on one worker
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"CLUSTER TESTS SKIPPED: {', '.join(MISSING)} not installed "
        "(apt-get install nginx postgresql; .ci/run does)",
    ),
]
SILENCE = np.zeros(8000 * 60, dtype=np.int16)  # callers stay on the line until they hang up
SHARED = f"https://{HOST}/webhooks/telnyx/voice"  # the Call Control app's webhook


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig() -> AsyncIterator[Rig]:
    async with open_rig("telnyx") as the_rig:
        yield the_rig


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def all_up(rig: Rig) -> AsyncIterator[None]:
    """Every node running and no call live, before and after each test."""
    yield
    await rig.settle()


def network(rig: Rig) -> FakeTelnyx:
    assert isinstance(rig.net, FakeTelnyx)
    return rig.net


async def place(rig: Rig) -> FakeCall:
    call = await network(rig).place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
    await call.wait_stream(10)
    await call.wait_for(lambda: len(call.marks_echoed) >= 1, 10)  # the greeting is heard
    return call


def hooks(rig: Rig, call: FakeCall) -> list[Webhook]:
    return [h for h in network(rig).webhooks if h.call_control_id == call.call_control_id]


def assert_all_home(rig: Rig, call: FakeCall, node: str) -> set[str]:
    """Every event of `call` after an inbound call.initiated went to `node`'s own webhook,
    through nginx, and was taken; its media socket too. Returns the event types."""
    home = f"https://{HOST}/n/{node}/webhooks/telnyx/voice"
    seen = set()
    for hook in hooks(rig, call):
        seen.add(hook.event_type)
        first = hook.event_type == "call.initiated" and call.direction == "incoming"
        assert hook.url == (SHARED if first else home), (hook.event_type, hook.url)
        assert hook.ok, (hook.event_type, hook.status, hook.error)
    assert call.stream_urls, call
    for url in call.stream_urls:
        assert url.startswith(f"wss://{HOST}/n/{node}/ws/telnyx/stream/"), url
    return seen


async def test_inbound_calls_spread_and_each_calls_events_reach_its_node(rig: Rig) -> None:
    calls = [await place(rig) for _ in range(3)]
    where = {c.call_control_id: node_of(c) for c in calls}
    assert sorted(where.values()) == ["a", "b", "c"]  # round robin over three nodes
    for call in calls:
        row = await rig.wait_row(call.call_control_id, node=where[call.call_control_id])
        assert row["direction"] == "inbound"
    for call in calls:
        await call.send_dtmf("7")  # a call.dtmf.received webhook mid-call, too
        await call.hangup()  # returns once call.hangup was delivered
    for call in calls:
        node = where[call.call_control_id]
        row = await rig.wait_row(call.call_control_id, state="ended")
        assert (row["end_reason"], row["node"], row["answered"]) == ("hangup", node, True)
        transcript = await rig.rows(
            "SELECT role, text FROM transcript WHERE call_id = $1 ORDER BY seq",
            call.call_control_id,
        )
        assert transcript[:1] == [{"role": "assistant", "text": "Hello there."}], transcript
        seen = assert_all_home(rig, call, node)
        want = {"call.answered", "streaming.started", "call.dtmf.received", "call.hangup"}
        assert want <= seen, seen
        assert not call.errors, call.errors


async def test_outbound_call_placed_on_b_gets_its_events_on_b(rig: Rig) -> None:
    net = network(rig)
    callee = "+15550009876"
    net.set_callee(callee, answer="human")
    call_id = await rig.dial("b", callee)
    call = net.calls[call_id]
    await call.wait_stream(10)
    assert node_of(call) == "b"
    await call.wait_for(
        lambda: any(h.event_type == "call.machine.detection.ended" for h in hooks(rig, call)), 10
    )
    await call.hangup()
    row = await rig.wait_row(call_id, state="ended")
    assert (row["direction"], row["node"], row["end_reason"]) == ("outbound", "b", "hangup")
    dial = next(body for _, action, body in call.commands if action == "dial")
    assert dial["webhook_url"] == f"https://{HOST}/n/b/webhooks/telnyx/voice"
    seen = assert_all_home(rig, call, "b")
    want = {"call.initiated", "call.answered", "call.machine.detection.ended", "call.hangup"}
    assert want <= seen, seen
    events = await rig.rows("SELECT kind FROM events WHERE call_id = $1", call_id)
    kinds = {e["kind"] for e in events}
    assert "amd" in kinds, kinds  # node b handled its own AMD event
    assert not call.errors, call.errors


async def test_hangup_asked_of_a_ends_the_call_c_holds(rig: Rig) -> None:
    calls = [await place(rig) for _ in range(3)]
    where = {c.call_control_id: node_of(c) for c in calls}
    victim = next(c for c in calls if where[c.call_control_id] == "c")
    status, body = await rig.post("a", f"/api/calls/{victim.call_control_id}/hangup")
    assert status == 200 and body["ok"] and body["node"] == "c", body
    await victim.wait_ended(5)
    assert victim.hangup_source == "callee"  # the app's leg hung up, not the caller
    assert [a for _, a, _ in victim.commands].count("hangup") == 1
    row = await rig.wait_row(victim.call_control_id, state="ended")
    assert (row["end_reason"], row["node"]) == ("operator_hangup", "c")
    assert "call.hangup" in assert_all_home(rig, victim, "c")
    assert not any(c.ended for c in calls if c is not victim)  # the others go on
    status, body = await rig.post("b", f"/api/calls/{victim.call_control_id}/hangup")
    assert status == 404  # no longer live anywhere
    assert not any(c.errors for c in calls)


async def test_all_full_hears_busy_in_telnyx_voice_from_one_node(rig: Rig) -> None:
    """nginx passes the very same signed call.initiated from node to node, and its last try
    (with the overflow header) reaches a node that already refused it with 503: that is no
    replay, or the caller hears nothing at all."""
    calls = [await place(rig) for _ in range(5)]
    assert Counter(node_of(c) for c in calls) == {"a": 1, "b": 2, "c": 2}
    busy = await network(rig).place_call(from_=CALLER, to=NUMBER, audio=SILENCE)
    await busy.wait_ended(10)
    assert not busy.errors, busy.errors  # was: call.initiated refused 403 "replayed"
    assert busy.said == [BUSY_MESSAGE]
    assert busy.hangup_source == "callee"  # we hung up once it was said
    later = [h for h in hooks(rig, busy) if h.event_type != "call.initiated"]
    # answered by the node nginx gave the overflow to: the rest of its events went there
    nodes = {h.url.removeprefix(f"https://{HOST}/n/").split("/", 1)[0] for h in later}
    assert len(nodes) == 1 and nodes <= {"a", "b", "c"}, [h.url for h in later]
    assert {"call.answered", "call.speak.ended", "call.hangup"} <= {h.event_type for h in later}
    assert all(h.ok for h in hooks(rig, busy))
    assert await rig.call_row(busy.call_control_id) is None  # no session was opened for it
    assert all(not c.ended for c in calls)


async def test_kill_9_leaves_node_lost_records_and_other_calls_untouched(rig: Rig) -> None:
    """Telnyx keeps a call up when its stream drops: the caller is on a silent line, the
    record says `node_lost` once the dead node's heartbeat is stale, and the other nodes'
    calls go on."""
    calls = [await place(rig) for _ in range(3)]
    victim = next(c for c in calls if node_of(c) == "c")
    await rig.kill("c")
    row = await rig.wait_row(
        victim.call_control_id, within=HEARTBEAT_TIMEOUT + 2, end_reason="node_lost"
    )
    assert row["node"] == "c" and row["answered"]
    survivors = [c for c in calls if c is not victim]
    assert not any(c.ended for c in survivors)
    for call in survivors:
        await call.hangup()
        row = await rig.wait_row(call.call_control_id, state="ended")
        assert row["end_reason"] == "hangup"
        assert not call.errors
    await victim.hangup()  # the caller gives up; its call.hangup finds no node to take it
    row = await rig.wait_row(victim.call_control_id, end_reason="node_lost")
    assert row["node"] == "c"  # the record stands


async def test_postgres_restart_mid_call_ends_no_call(rig: Rig) -> None:
    calls = [await place(rig) for _ in range(3)]
    await asyncio.to_thread(rig.pg.restart, 1.0)
    await asyncio.sleep(1.5)
    assert not any(c.ended for c in calls)
    for call in calls:
        await call.hangup()
    for call in calls:  # written once the database is back
        row = await rig.wait_row(call.call_control_id, within=15, state="ended")
        assert row["end_reason"] == "hangup"
        assert not call.errors


async def test_rolling_restart_drops_no_call(rig: Rig) -> None:
    live = await rolling_restart(rig, place)
    for call in live:
        row = await rig.wait_row(call.call_control_id, state="ended")
        assert row["end_reason"] == "hangup", row  # every call ended by its caller
        assert not call.errors

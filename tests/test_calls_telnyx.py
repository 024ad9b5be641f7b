"""Whole calls through the fake Telnyx network, over real sockets; and the Telnyx wire helpers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from nacl.signing import SigningKey

from getpatter import CallError, MachineDetectionResult, Patter, Telnyx
from getpatter.agent import Agent
from getpatter.carriers.telnyx.wire import TelnyxMediaEncoder, parse_media_message
from getpatter.core.media import DtmfReceived, Ignored, InboundAudio, StreamStarted
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.telnyx import FakeCall, FakeTelnyx

from helpers import CALLER, HOST, NUMBER

CALLEE = "+15550009876"
VOICE_URL = f"https://{HOST}/webhooks/telnyx/voice"


@dataclass
class Served:
    phone: Patter
    net: FakeTelnyx
    task: asyncio.Task[None]
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def callbacks(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        def make(kind: str) -> Callable[[dict[str, Any]], Any]:
            async def cb(event: dict[str, Any]) -> None:
                self.events.setdefault(kind, []).append(event)

            return cb

        return {k: make(k) for k in ("on_call_start", "on_call_end", "on_transcript")}

    async def ended(self, n: int = 1, limit: float = 5.0) -> list[dict[str, Any]]:
        await wait_until(lambda: len(self.events.get("on_call_end", [])) >= n, limit)
        return self.events["on_call_end"]


def carrier(net: FakeTelnyx, **kwargs: Any) -> Telnyx:
    args = {"api_key": net.api_key, "connection_id": net.connection_id, **kwargs}
    return Telnyx(public_key=net.public_key, base_url=net.base_url, **args)


@pytest.fixture
async def net() -> AsyncIterator[FakeTelnyx]:
    async with FakeTelnyx() as tx:
        tx.add_number(NUMBER, webhook_url=VOICE_URL)
        yield tx


@pytest.fixture
async def serve(net: FakeTelnyx) -> AsyncIterator[Callable[..., Any]]:
    served: list[Served] = []

    async def start(agent_kwargs: dict[str, Any], **serve_kwargs: Any) -> Served:
        phone = Patter(carrier=carrier(net), phone_number=NUMBER, webhook_url=HOST, persist=False)
        agent: Agent = phone.agent(**agent_kwargs)
        s = Served(phone, net, asyncio.create_task(asyncio.sleep(0)))
        kwargs = {**s.callbacks(), **serve_kwargs}
        s.task = asyncio.create_task(phone.serve(agent, port=0, host="127.0.0.1", **kwargs))
        assert await asyncio.wait_for(phone.ready, 5) == HOST
        net.route(HOST, f"127.0.0.1:{phone.port}")
        served.append(s)
        return s

    yield start
    for s in served:
        await s.phone.disconnect()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(s.task, 5)


async def wait_until(pred: Callable[[], bool], limit: float = 5) -> None:
    for _ in range(int(limit / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def media_times(call: FakeCall) -> list[float]:
    return [t for t, event, _ in call.received if event == "media"]


def commands(call: FakeCall, name: str) -> list[dict[str, Any]]:
    return [body for _, action, body in call.commands if action == name]


# --- inbound -------------------------------------------------------------------------------


async def test_dtmf_reaches_the_engine_once_and_can_transfer(
    serve: Callable[..., Any], net: FakeTelnyx
) -> None:
    # Every digit arrives twice (media socket + call.dtmf.received): delivered once.
    engine = ScriptedEngine(transfer_to="+15550002222")
    s = await serve({"engine": engine})
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: bool(engine.calls), 3)
    await call.send_dtmf("5")
    await call.send_dtmf("5")
    await call.send_dtmf("0")
    await call.wait_for(lambda: call.transfers == ["+15550002222"], 5)
    await asyncio.sleep(0.2)  # let the late duplicates arrive
    assert engine.calls[0].dtmf == ["5", "5", "0"]
    end = (await s.ended())[0]
    assert end["end_reason"] == "transferred"
    await call.wait_ended(5)  # the target answered: our leg is over


async def test_unordered_and_duplicated_webhooks(
    serve: Callable[..., Any], net: FakeTelnyx
) -> None:
    net.shuffle_webhooks = True
    net.duplicate_webhooks = True
    engine = ScriptedEngine()
    s = await serve({"engine": engine, "first_message": "Hello!"})
    call = await net.place_call(from_=CALLER, to=NUMBER)
    assert call.stream_open, call.errors
    await call.wait_for(lambda: bool(engine.calls), 3)
    for digit in "123":
        await call.send_dtmf(digit)
        await asyncio.sleep(0.3)  # beyond the shuffle window: the order is defined
    await asyncio.sleep(0.3)
    assert engine.calls[0].dtmf == ["1", "2", "3"]
    assert len(commands(call, "answer")) == 1  # one answer for two call.initiated
    await call.hangup()
    ends = await s.ended()
    await asyncio.sleep(0.3)
    assert len(ends) == 1 and len(engine.calls) == 1


# --- refusals ------------------------------------------------------------------------------


async def test_forged_or_replayed_webhooks_are_refused(
    serve: Callable[..., Any], net: FakeTelnyx
) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    url = f"http://127.0.0.1:{s.phone.port}/webhooks/telnyx/voice"
    event = {
        "data": {
            "record_type": "event",
            "event_type": "call.initiated",
            "id": str(uuid.uuid4()),
            "payload": {
                "call_control_id": "v3:forged",
                "direction": "incoming",
                "from": CALLER,
                "to": NUMBER,
            },
        }
    }
    body = json.dumps(event).encode()
    forger = SigningKey.generate()
    ts = int(time.time())
    forged = {
        "telnyx-signature-ed25519": base64.b64encode(
            forger.sign(f"{ts}|".encode() + body).signature
        ).decode(),
        "telnyx-timestamp": str(ts),
    }
    async with aiohttp.ClientSession() as http:
        for headers in ({}, forged, net.sign(body, ts - 600)):
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 403
        good = net.sign(body)
        async with http.post(url, data=body, headers=good) as resp:
            assert resp.status == 200
        async with http.post(url, data=body, headers=good) as resp:
            assert resp.status == 403  # the same signed request, replayed
    # Only the genuine one made a call; Telnyx does not know it, so answering fails and the
    # call ends with its record written.
    ends = await s.ended()
    await asyncio.sleep(0.2)
    assert [(e["call_id"], e["end_reason"]) for e in ends] == [("v3:forged", "failed")]
    assert not engine.calls


async def test_media_socket_needs_the_calls_token(
    serve: Callable[..., Any], net: FakeTelnyx
) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    port = s.phone.port
    assert s.phone.server is not None
    answers: list[dict[str, Any]] = []

    async def answer(call_control_id: str, **fields: Any) -> None:
        answers.append(fields)  # keep the call pending: we play Telnyx's media side by hand

    s.phone.server.carrier.rest.answer = answer  # type: ignore[attr-defined]
    ccid = "v3:raw-" + uuid.uuid4().hex
    body = json.dumps(
        {
            "data": {
                "event_type": "call.initiated",
                "id": str(uuid.uuid4()),
                "payload": {"call_control_id": ccid, "direction": "incoming", "from": CALLER},
            }
        }
    ).encode()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"ws://127.0.0.1:{port}/ws/telnyx/stream/v3:unknown")
        assert err.value.status == 404
        async with http.post(
            f"http://127.0.0.1:{port}/webhooks/telnyx/voice", data=body, headers=net.sign(body)
        ) as resp:
            assert resp.status == 200
        await wait_until(lambda: bool(answers))
        prefix = f"wss://{HOST}/ws/telnyx/stream/"
        assert answers[0]["stream_url"].startswith(prefix)
        path = "/ws/telnyx/stream/" + answers[0]["stream_url"].removeprefix(prefix)
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}")
        await ws.send_json({"event": "connected", "version": "1.0.0"})
        await ws.send_json(
            {
                "event": "start",
                "sequence_number": "1",
                "stream_id": str(uuid.uuid4()),
                "start": {"call_control_id": ccid, "custom_parameters": {"token": "guessed"}},
            }
        )
        msg = await ws.receive(timeout=3)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1008
        assert not engine.calls and not s.events.get("on_call_end")
        # A refused socket touched nothing: the call still waits for its real stream.
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}")
        token = answers[0]["stream_auth_token"]
        stream_id = str(uuid.uuid4())
        await ws.send_json(
            {
                "event": "start",
                "sequence_number": "1",
                "stream_id": stream_id,
                "start": {"call_control_id": ccid, "custom_parameters": {"token": token}},
            }
        )
        await wait_until(lambda: bool(engine.calls))
        await ws.send_json({"event": "stop", "stream_id": stream_id})
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError):  # used up: it opened the call
            await http.ws_connect(f"ws://127.0.0.1:{port}{path}")
    assert (await s.ended())[0]["end_reason"] == "hangup"


# --- outbound ------------------------------------------------------------------------------


async def test_outbound_human_with_amd(serve: Callable[..., Any], net: FakeTelnyx) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine, "first_message": "Hi, this is Acme."})
    net.set_callee(CALLEE, answer="human")
    results: list[MachineDetectionResult] = []
    call = await s.phone.call(
        to=CALLEE,
        agent=s.phone.server.agent,
        first_message="Hello from Acme, calling about your order.",
        on_machine_detection=results.append,
    )
    fake = net.calls[call.call_id]
    await fake.wait_for(lambda: bool(results) and bool(engine.calls), 5)
    assert results[0].result == "human" and not results[0].is_machine
    assert results[0].call_id == call.call_id
    dial = commands(fake, "dial")[0]
    assert dial["answering_machine_detection"] == "detect_beep"
    assert dial["timeout_secs"] == 25
    assert dial["connection_id"] == net.connection_id
    assert dial["webhook_url"] == VOICE_URL
    assert base64.b64decode(dial["client_state"]).decode().startswith("out-")
    await fake.wait_for(lambda: len(fake.played) > 4000, 5)
    assert s.events["on_call_start"][0]["direction"] == "outbound"
    transcript = [e["text"] for e in s.events["on_transcript"]]
    assert transcript[0] == "Hello from Acme, calling about your order."
    await fake.hangup()
    record = await call.wait(5)
    assert record["answered"] and call.outcome == "hangup"
    assert record["call_id"] == fake.call_control_id
    assert not fake.errors, fake.errors


async def test_outbound_with_unordered_duplicated_webhooks(
    serve: Callable[..., Any], net: FakeTelnyx
) -> None:
    """Greeting-ended may beat detection-ended, hang-ups may beat the dial response."""
    net.shuffle_webhooks = True
    net.duplicate_webhooks = True
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    net.set_callee(CALLEE, answer="machine", machine_greeting_s=0.05)
    net.set_callee("+15550008888", answer="busy")
    results: list[MachineDetectionResult] = []
    agent = s.phone.server.agent
    vm = await s.phone.call(
        to=CALLEE,
        agent=agent,
        on_machine_detection=results.append,
        voicemail_message="Call us back.",
    )
    busy = await s.phone.call(to="+15550008888", agent=agent)
    await vm.wait(8)
    record = await busy.wait(8)
    assert vm.outcome == "voicemail" and busy.outcome == "busy"
    assert record["call_id"] == busy.call_id and busy.call_id in net.calls
    assert len(results) == 1 and results[0].is_machine
    fake = net.calls[vm.call_id]
    await fake.wait_ended(5)
    assert fake.said == ["Call us back."]


async def test_ring_timeout_none_omits_the_parameter(
    serve: Callable[..., Any], net: FakeTelnyx
) -> None:
    s = await serve({"engine": ScriptedEngine()})
    net.set_callee(CALLEE, answer="busy")
    call = await s.phone.call(to=CALLEE, agent=s.phone.server.agent, ring_timeout=None)
    await call.wait(5)
    assert "timeout_secs" not in commands(net.calls[call.call_id], "dial")[0]


async def test_call_refusals_carry_telnyx_errors_not_the_key(net: FakeTelnyx) -> None:
    phone = Patter(
        carrier=carrier(net, api_key="KEYWRONG_not-the-real-key"),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=False,
    )
    ended: list[dict[str, Any]] = []
    agent = phone.agent(engine=ScriptedEngine())
    task = asyncio.create_task(
        phone.serve(agent, port=0, host="127.0.0.1", on_call_end=ended.append)
    )
    try:
        await asyncio.wait_for(phone.ready, 5)
        with pytest.raises(CallError) as err:
            await phone.call(to=CALLEE, agent=agent)
        assert "Authentication failed" in str(err.value) and "401" in str(err.value)
        assert "KEYWRONG" not in str(err.value) and net.api_key not in str(err.value)
        await wait_until(lambda: bool(ended))
        assert ended[0]["end_reason"] == "failed"
        assert phone.server is not None and not phone.server.sessions
    finally:
        await phone.disconnect()
        await asyncio.wait_for(task, 5)


# --- the spec's examples, on Telnyx ---------------------------------------------------------


# --- wire helpers ---------------------------------------------------------------------------


def _media(seq: int, stream_id: str = "s1", track: str = "inbound") -> str:
    payload = base64.b64encode(bytes([seq % 256]) * 160).decode()
    return json.dumps(
        {
            "event": "media",
            "sequence_number": str(seq),
            "stream_id": stream_id,
            "media": {"track": track, "chunk": str(seq), "timestamp": "0", "payload": payload},
        }
    )


def test_start_carries_the_token_and_the_call() -> None:
    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_id": "abc",
        "start": {
            "call_control_id": "v3:x",
            "custom_parameters": {"token": "t0k"},
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
    }
    event = parse_media_message(json.dumps(start)).event
    assert event == StreamStarted("abc", "v3:x", {"token": "t0k"})
    start["start"]["custom_parameters"] = [{"name": "token", "value": "t0k"}]  # type: ignore[index]
    assert parse_media_message(json.dumps(start)).event == event


def test_outbound_track_and_unknown_events_are_ignored() -> None:
    assert isinstance(parse_media_message(_media(2, track="outbound")).event, Ignored)
    assert isinstance(parse_media_message('{"event":"connected","version":"1.0.0"}').event, Ignored)


class _NoCalls:
    """A call table with no calls: all the adapter's media parsing looks up."""

    def find_call(self, call_id: str) -> None:
        return None

    def call_by_key(self, key: str) -> None:
        return None


def _adapter() -> Any:
    from getpatter.carriers.telnyx.adapter import TelnyxAdapter
    from getpatter.config import LocalConfig

    config = LocalConfig(telephony_provider="telnyx", telnyx_key="k")
    return TelnyxAdapter(_NoCalls(), config)  # type: ignore[arg-type]


async def test_late_and_duplicate_media_frames_are_dropped() -> None:
    adapter = _adapter()
    start = {"event": "start", "stream_id": "s1", "start": {"call_control_id": "v3:x"}}
    assert isinstance(adapter.parse(json.dumps(start)), StreamStarted)
    kept = [adapter.parse(_media(seq)) for seq in (2, 3, 5, 4, 5, 6)]
    audio = [e.payload[0] for e in kept if isinstance(e, InboundAudio)]
    assert audio == [2, 3, 5, 6]  # 4 came after 5: dropped, not played out of order
    assert isinstance(
        adapter.parse('{"event":"dtmf","stream_id":"s1","dtmf":{"digit":"7"}}'), DtmfReceived
    )


def test_encoder_pads_short_frames_to_20ms() -> None:
    enc = TelnyxMediaEncoder("s1")
    msg = json.loads(enc.media(b"\x00" * 100))
    assert msg == {"event": "media", "media": {"payload": msg["media"]["payload"]}}
    assert base64.b64decode(msg["media"]["payload"]) == b"\x00" * 100 + b"\xff" * 60
    assert json.loads(enc.mark("m1")) == {"event": "mark", "mark": {"name": "m1"}}
    assert json.loads(enc.clear()) == {"event": "clear"}

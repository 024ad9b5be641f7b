"""What a stranger who knows a pending call's id can do through its media socket (nothing),
and what an authenticated stream's bad or excessive messages do (they are counted, the call
carries on). Real sockets, both carriers' fakes."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from getpatter.core import media_socket
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.twilio import FakeTwilio

from carrier_nets import Network
from helpers import CALLER, HOST, NUMBER

CALLEE = "+15550009876"
SILENCE = base64.b64encode(b"\xff" * 160).decode()


def local(url: str, port: int) -> str:
    return url.replace(f"wss://{HOST}", f"ws://127.0.0.1:{port}")


def messages(kind: str, call_id: str, stream: str, token: str) -> dict[str, dict[str, Any]]:
    """A carrier's media-socket messages, in its own words."""
    if kind == "twilio":
        sid = {"streamSid": stream}
        return {
            "connected": {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            "media": {**sid, "event": "media", "media": {"payload": SILENCE, "timestamp": "5"}},
            "dtmf": {**sid, "event": "dtmf", "dtmf": {"digit": "1"}},
            "mark": {**sid, "event": "mark", "mark": {"name": "g1-1"}},
            "stop": {**sid, "event": "stop"},
            "start": {
                **sid,
                "event": "start",
                "start": {
                    "streamSid": stream,
                    "callSid": call_id,
                    "customParameters": {"token": token},
                },
            },
        }
    if kind == "plivo":
        sid = {"streamId": stream}
        return {
            "connected": {"event": "connected"},
            "media": {**sid, "event": "media", "media": {"payload": SILENCE, "track": "inbound"}},
            "dtmf": {**sid, "event": "dtmf", "dtmf": {"digit": "1"}},
            "mark": {**sid, "event": "playedStream", "name": "g1-1"},
            "stop": {**sid, "event": "stop"},
            "start": {
                "event": "start",
                "start": {"streamId": stream, "callId": call_id},
                "extra_headers": f"token={token}",
            },
        }
    sid = {"stream_id": stream}
    return {
        "connected": {"event": "connected", "version": "1.0.0"},
        "media": {**sid, "event": "media", "media": {"payload": SILENCE, "track": "inbound"}},
        "dtmf": {**sid, "event": "dtmf", "dtmf": {"digit": "1"}},
        "mark": {**sid, "event": "mark", "mark": {"name": "g1-1"}},
        "stop": {**sid, "event": "stop"},
        "start": {
            **sid,
            "event": "start",
            "start": {"call_control_id": call_id, "custom_parameters": {"token": token}},
        },
    }


async def refused(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The server closed this socket as a policy violation."""
    msg = await ws.receive(timeout=3)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    assert ws.close_code == 1008


async def test_nothing_before_a_valid_start_touches_the_call(
    serve_any: Callable[..., Any], network: Network
) -> None:
    engine = ScriptedEngine()
    s = await serve_any({"engine": engine, "first_message": "Hello from Acme."})
    server = s.phone.server
    network.fake.set_callee(CALLEE, answer="human", answer_delay=2.0)
    call = await s.phone.call(to=CALLEE, agent=server.agent, machine_detection=False)
    session = call.session
    # where the carrier will be told to stream (Telnyx has a path of its own)
    stream_url = getattr(server.carrier, "stream_url", server.stream_url)(session.key)
    url = local(stream_url, s.phone.port)
    wire = messages(network.kind, call.call_id, "MZ" + "7" * 32, "not-the-token")
    async with aiohttp.ClientSession() as http:
        # a plain GET on the socket's path: no upgrade, nothing marked connected
        async with http.get(url.replace("ws://", "http://")) as response:
            assert response.status == 426
        # anything but a start first: that socket is closed, the call does not hear of it
        for first in ("media", "dtmf", "mark", "stop"):
            ws = await http.ws_connect(url)
            await ws.send_json(wire["connected"])
            for _ in range(50):
                if ws.closed:
                    break
                await ws.send_json(wire[first])
            await refused(ws)
        for junk in ("not json", "[" * 20000, json.dumps({"event": 7})):
            ws = await http.ws_connect(url)
            await ws.send_str(junk)
            await refused(ws)
        ws = await http.ws_connect(url)  # a start with a guessed token
        await ws.send_json(wire["start"])
        await refused(ws)
    assert session.state == "pending" and not engine.calls and not session.end_reason
    carrier_only = {"dialing", "carrier_status", "carrier_event"}  # the real carrier's news
    assert {e["kind"] for e in session.events} <= carrier_only, session.events
    # the callee answers: the carrier's real stream opens the call, which works as usual
    fake = network.fake_call(call.call_id)
    await fake.wait_for(lambda: len(fake.played) > 2000, 8)
    await fake.hangup()
    record = await call.wait(5)
    assert record["answered"] and record["end_reason"] == "hangup"
    assert record["transcript"][0]["text"] == "Hello from Acme."
    kinds = {e["kind"] for e in record["events"]}
    assert "dtmf" not in kinds and "media_refused" not in kinds


async def test_a_silent_socket_is_closed_and_the_call_still_waits(
    serve: Callable[..., Any], net: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_socket, "START_TIMEOUT", 0.3)
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    net.set_callee(CALLEE, answer="human", answer_delay=1.5)
    call = await s.phone.call(to=CALLEE, agent=s.phone.server.agent, machine_detection=False)
    url = local(s.phone.server.stream_url(call.session.key), s.phone.port)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        await refused(ws)  # said nothing: closed after the deadline
    assert call.session.state == "pending"
    fake = net.calls[call.call_id]
    await fake.wait_for(lambda: bool(engine.calls), 8)  # the real stream still opens it
    await fake.hangup()
    assert (await call.wait(5))["end_reason"] == "hangup"


# --- an authenticated stream ------------------------------------------------------------------


async def open_by_hand(port: int, net: FakeTwilio) -> tuple[str, str]:
    """Play Twilio's voice webhook by hand: (CallSid, the stream's token)."""
    from twilio.request_validator import RequestValidator

    form = {"CallSid": "CA" + "5" * 32, "From": CALLER, "To": NUMBER, "Direction": "inbound"}
    sig = RequestValidator(net.auth_token).compute_signature(
        f"https://{HOST}/webhooks/twilio/voice", form
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/webhooks/twilio/voice",
            data=form,
            headers={"X-Twilio-Signature": sig},
        ) as resp,
    ):
        twiml = await resp.text()
    token = re.search(r'name="token" value="([^"]+)"', twiml)
    assert token is not None, twiml
    return form["CallSid"], token.group(1)


async def test_bad_and_excess_messages_of_a_live_stream_are_counted_not_fatal(
    serve: Callable[..., Any], net: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    port = s.phone.port
    call_sid, token = await open_by_hand(port, net)
    wire = messages("twilio", call_sid, "MZ" + "8" * 32, token)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/ws/stream/{call_sid}")
        await ws.send_json(wire["connected"])
        await ws.send_json(wire["start"])
        for _ in range(100):
            if engine.calls:
                break
            await asyncio.sleep(0.02)
        assert engine.calls
        with caplog.at_level(logging.WARNING):
            for _ in range(20):
                await ws.send_str("[" * 20000)  # nested deeper than the parser can go
            burst = json.dumps(wire["media"])
            for _ in range(3000):  # far over a carrier's 50 a second
                await ws.send_str(burst)
            await ws.send_json(wire["dtmf"])
            await asyncio.sleep(0.5)
            assert not ws.closed and s.phone.server.sessions  # the call carries on
        await ws.send_json(wire["stop"])
        await ws.close()
    for _ in range(100):
        if s.events.get("on_call_end"):
            break
        await asyncio.sleep(0.02)
    record = s.events["on_call_end"][0]
    assert record["end_reason"] == "hangup"
    (refusal,) = [e for e in record["events"] if e["kind"] == "media_refused"]
    assert refusal["malformed"] == 20 and refusal["dropped"] > 1000
    lines = [r for r in caplog.records if r.name.startswith("getpatter")]
    assert len(lines) <= 4, [r.getMessage() for r in lines]  # one per kind, not per message
    assert not any(r.exc_info for r in lines)

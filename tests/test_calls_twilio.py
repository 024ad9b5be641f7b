"""Whole calls through the fake Twilio network, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from twilio.request_validator import RequestValidator

from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech


def media_times(call: Any) -> list[float]:
    return [t for t, event, _ in call.received if event == "media"]


async def test_inbound_call_end_to_end(serve: Callable[..., Any], net: FakeTwilio) -> None:
    engine = ScriptedEngine(replies=["Sure, let me help."])
    s = await serve({"engine": engine, "first_message": "Thanks for calling Acme!"})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0))
    await call.wait_for(lambda: len(engine.calls) == 1 and engine.calls[0].turn >= 1, 8)
    await call.wait_for(lambda: call.played.count(b"\xff") < len(call.played), 2)
    await asyncio.sleep(0.5)
    await call.hangup()
    await call.wait_ended()
    for _ in range(50):
        if s.events.get("on_call_end"):
            break
        await asyncio.sleep(0.05)

    start = s.events["on_call_start"][0]
    assert start["call_id"] == call.call_sid
    assert (start["caller"], start["callee"], start["direction"]) == (CALLER, NUMBER, "inbound")
    roles = [(e["role"], e["text"]) for e in s.events["on_transcript"]]
    assert roles[0] == ("assistant", "Thanks for calling Acme!")
    assert ("user", "<utterance 1>") in roles
    assert ("assistant", "Sure, let me help.") in roles
    end = s.events["on_call_end"][0]
    assert end["call_id"] == call.call_sid and end["end_reason"] == "hangup"
    assert [e["role"] for e in end["transcript"]][:1] == ["assistant"]
    assert end["duration"] > 1.0
    # The caller really heard the greeting: non-silent audio reached the phone.
    heard = call.heard_audio()
    assert np.abs(heard.astype(np.int32)).max() > 2000
    # Paced: never more than ~100 ms ahead of real time (plus scheduling slack).
    times = media_times(call)
    assert len(times) > 20
    span = times[-1] - times[0]
    assert span >= (len(times) - 1) * 0.02 - 0.15
    assert s.phone.server is not None and not s.phone.server.sessions
    assert engine.calls[0].closed


async def test_barge_in_clears_and_nothing_stale_follows(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    engine = ScriptedEngine(replies=["ok"])
    long_greeting = "This is a very long greeting that goes on and on. " * 6
    await serve({"engine": engine, "first_message": long_greeting})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=1.5, tail=3.0))
    await call.wait_for(lambda: call.clears >= 1, 6)
    clear_at = next(t for t, event, _ in call.received if event == "clear")
    ec = engine.calls[0]
    await call.wait_for(lambda: ec.turn >= 1, 5)
    # Between the clear and the caller's end of speech no media was sent at all: nothing of
    # the interrupted greeting reached the caller after the clear.
    reply_start = min((t for t in media_times(call) if t > clear_at), default=float("inf"))
    assert reply_start - clear_at > 0.3
    assert ec.interrupted and ec.interrupted[0].startswith("turn-0")
    # The greeting was cut to what was heard: far less than its full length.
    heard = ec.call.heard_seconds(ec.interrupted[0])
    assert 1.0 < heard < 3.0
    await call.hangup()


async def test_dtmf_reaches_the_engine_and_can_transfer(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    engine = ScriptedEngine(transfer_to="+15550002222")
    s = await serve({"engine": engine})
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: bool(engine.calls), 3)
    await call.send_dtmf("5")
    await call.send_dtmf("0")
    await call.wait_for(lambda: call.transfers == ["+15550002222"], 5)
    assert engine.calls[0].dtmf == ["5", "0"]
    for _ in range(40):
        if s.events.get("on_call_end"):
            break
        await asyncio.sleep(0.05)
    assert s.events["on_call_end"][0]["end_reason"] == "transferred"


async def test_hangup_by_the_agent_via_dtmf(serve: Callable[..., Any], net: FakeTwilio) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: bool(engine.calls), 3)
    await call.send_dtmf("#")
    await call.wait_ended(5)
    assert call.status == "completed"
    await asyncio.sleep(0.1)
    assert s.events["on_call_end"][0]["end_reason"] == "dtmf_hangup"


async def test_recording_is_started_when_media_starts(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    await serve({"engine": ScriptedEngine()}, recording=True)
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(
        lambda: any(r.call_sid == call.call_sid for r in net.recordings.values()), 3
    )
    await call.hangup()


# --- refusals ------------------------------------------------------------------------------


async def test_unsigned_or_forged_webhooks_are_refused(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    url = f"http://127.0.0.1:{s.phone.port}/webhooks/twilio/voice"
    form = {"CallSid": "CA" + "1" * 32, "From": CALLER, "To": NUMBER, "Direction": "inbound"}
    public = f"https://{HOST}/webhooks/twilio/voice"
    good = RequestValidator(net.auth_token).compute_signature(public, form)
    forged = RequestValidator("not-the-token").compute_signature(public, form)
    async with aiohttp.ClientSession() as http:
        for headers, expected in [({}, 403), ({"X-Twilio-Signature": forged}, 403)]:
            async with http.post(url, data=form, headers=headers) as resp:
                assert resp.status == expected
        tampered = {**form, "From": "+15559999999"}
        async with http.post(url, data=tampered, headers={"X-Twilio-Signature": good}) as resp:
            assert resp.status == 403
        async with http.post(url, data=form, headers={"X-Twilio-Signature": good}) as resp:
            assert resp.status == 200
            assert "<Stream" in await resp.text()
    assert not engine.calls  # refused requests opened nothing


async def test_media_socket_needs_the_calls_token(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    port = s.phone.port
    form = {"CallSid": "CA" + "2" * 32, "From": CALLER, "To": NUMBER, "Direction": "inbound"}
    sig = RequestValidator(net.auth_token).compute_signature(
        f"https://{HOST}/webhooks/twilio/voice", form
    )
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"ws://127.0.0.1:{port}/ws/stream/CA{'9' * 32}")
        assert err.value.status == 404
        async with http.post(
            f"http://127.0.0.1:{port}/webhooks/twilio/voice",
            data=form,
            headers={"X-Twilio-Signature": sig},
        ) as resp:
            twiml = await resp.text()
        assert "token" in twiml
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/ws/stream/{form['CallSid']}")
        await ws.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await ws.send_json(
            {
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": "MZ" + "0" * 32,
                "start": {
                    "streamSid": "MZ" + "0" * 32,
                    "callSid": form["CallSid"],
                    "customParameters": {"token": "guessed"},
                },
            }
        )
        msg = await ws.receive(timeout=3)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1008
        # The token was single use: the real one no longer opens the call either.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(f"ws://127.0.0.1:{port}/ws/stream/{form['CallSid']}")
    assert not engine.calls
    await asyncio.sleep(0.1)
    assert s.events["on_call_end"][0]["end_reason"] == "unauthorized_media"


async def test_require_signature_without_credentials_is_503() -> None:
    from getpatter.agent import Agent
    from getpatter.config import LocalConfig
    from getpatter.core.server import EmbeddedServer

    config = LocalConfig(twilio_sid="AC" + "0" * 32, twilio_token="", phone_number=NUMBER)
    server = EmbeddedServer(config, Agent(engine=ScriptedEngine()))
    task = asyncio.create_task(server.start(0))
    try:
        await asyncio.wait_for(server.listening, 5)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.port}/webhooks/twilio/voice"
            async with http.post(url, data={"CallSid": "CA1"}) as resp:
                assert resp.status == 503
            async with http.get(f"http://127.0.0.1:{server.port}/health") as resp:
                assert (await resp.json())["status"] == "ok"
    finally:
        await server.stop()
        await asyncio.wait_for(task, 5)

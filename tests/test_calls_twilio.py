"""Whole calls through the fake Twilio network, over real sockets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER


def media_times(call: Any) -> list[float]:
    return [t for t, event, _ in call.received if event == "media"]


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
        assert not engine.calls and not s.events.get("on_call_end")
        # A refused socket touched nothing: the real token still opens the call, once.
        token = re.search(r'name="token" value="([^"]+)"', twiml)
        assert token is not None
        url = f"ws://127.0.0.1:{port}/ws/stream/{form['CallSid']}"
        ws = await http.ws_connect(url)
        await ws.send_json(
            {
                "event": "start",
                "sequence_number": "1",
                "streamSid": "MZ" + "1" * 32,
                "start": {
                    "streamSid": "MZ" + "1" * 32,
                    "callSid": form["CallSid"],
                    "customParameters": {"token": token.group(1)},
                },
            }
        )
        for _ in range(100):
            if engine.calls:
                break
            await asyncio.sleep(0.02)
        assert engine.calls
        await ws.send_json({"event": "stop", "streamSid": "MZ" + "1" * 32})
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(url)
    for _ in range(100):
        if s.events.get("on_call_end"):
            break
        await asyncio.sleep(0.02)
    assert s.events["on_call_end"][0]["end_reason"] == "hangup"


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

"""Bad input and failures: the bad call ends cleanly or carries on, others are untouched,
every record is written."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from getpatter import Patter, Twilio
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech


class RawCarrier:
    """A hand-driven Twilio media client, to send what a real Twilio never would."""

    def __init__(self, port: int, auth_token: str, call_sid: str) -> None:
        self.port = port
        self.token = auth_token
        self.call_sid = call_sid
        self.stream_sid = "MZ" + call_sid[2:]
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self) -> None:
        form = {"CallSid": self.call_sid, "From": CALLER, "To": NUMBER, "Direction": "inbound"}
        sig = RequestValidator(self.token).compute_signature(
            f"https://{HOST}/webhooks/twilio/voice", form
        )
        async with self.http.post(
            f"http://127.0.0.1:{self.port}/webhooks/twilio/voice",
            data=form,
            headers={"X-Twilio-Signature": sig},
        ) as resp:
            twiml = await resp.text()
        token = re.search(r'name="token" value="([^"]+)"', twiml)
        path = re.search(r'url="wss://[^/]+(/[^"]+)"', twiml)
        assert token and path
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{self.port}{path.group(1)}")
        await self.ws.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        start = {"streamSid": self.stream_sid, "callSid": self.call_sid}
        start["customParameters"] = {"token": token.group(1)}  # type: ignore[assignment]
        await self.ws.send_json(
            {"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid, "start": start}
        )

    async def media(self, payload: bytes, n: int = 1) -> None:
        assert self.ws is not None
        b64 = base64.b64encode(payload).decode()
        for i in range(n):
            await self.ws.send_json(
                {
                    "event": "media",
                    "streamSid": self.stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(i),
                        "timestamp": str(i * 20),
                        "payload": b64,
                    },
                }
            )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


async def wait_until(pred: Callable[[], bool], limit: float = 5) -> None:
    for _ in range(int(limit / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_malformed_messages_are_contained(serve: Callable[..., Any], net: FakeTwilio) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine})
    # A healthy call through the fake network runs alongside the abused one.
    healthy = await net.place_call(from_=CALLER, to=NUMBER, audio=speech())
    raw = RawCarrier(s.phone.port, net.auth_token, "CA" + "a" * 32)
    await raw.open()
    assert raw.ws is not None
    await wait_until(lambda: len(engine.calls) == 2)
    bad_call = next(c for c in engine.calls if c.call.call_id == raw.call_sid)
    await raw.ws.send_str("{not json")
    await raw.ws.send_str('{"event":"media","media":{"payload":"!!!not-base64!!!"}}')
    await raw.ws.send_str('{"event":"media"}')
    await raw.ws.send_str('{"event":"weird-new-event","x":1}')
    await raw.ws.send_str("[1,2,3]")
    await raw.ws.send_bytes(b"\x00\x01binary")
    await raw.media(b"\xff" * 160, n=10)
    await wait_until(lambda: bad_call.frames == 10)
    assert bad_call.call.state == "live"  # it carried on
    # An oversize frame closes that socket (1009); the call ends with its record written.
    await raw.ws.send_str('{"event":"media","media":{"payload":"' + "A" * 100_000 + '"}}')
    await wait_until(
        lambda: any(e["call_id"] == raw.call_sid for e in s.events.get("on_call_end", []))
    )
    await raw.close()
    # The healthy call never noticed.
    assert healthy.stream_open and not healthy.ended
    assert healthy.call_sid in {c.call.call_id for c in engine.calls if c.call.state == "live"}
    await healthy.hangup()
    await wait_until(lambda: len(s.events.get("on_call_end", [])) == 2)


async def test_socket_dropped_mid_call_ends_the_call(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine, "first_message": "Hello there, how can I help?"})
    raw = RawCarrier(s.phone.port, net.auth_token, "CA" + "b" * 32)
    await raw.open()
    await raw.media(b"\xff" * 160, n=5)
    await wait_until(lambda: bool(engine.calls) and engine.calls[0].frames == 5)
    assert raw.ws is not None
    await raw.http.close()  # the socket vanishes: no stop, no close frame
    await wait_until(lambda: bool(s.events.get("on_call_end")))
    record = s.events["on_call_end"][0]
    assert record["call_id"] == raw.call_sid and record["answered"]
    assert record["transcript"][0]["text"] == "Hello there, how can I help?"
    assert engine.calls[0].closed
    assert s.phone.server is not None and not s.phone.server.sessions


async def test_engine_crash_ends_only_that_call(serve: Callable[..., Any], net: FakeTwilio) -> None:
    class Crashing(ScriptedEngine):
        def open(self, call: Any) -> Any:
            engine_call = super().open(call)
            if len(self.calls) == 1:

                async def boom() -> None:
                    raise RuntimeError("provider exploded")

                engine_call.start = boom  # type: ignore[method-assign]
            return engine_call

    engine = Crashing()
    s = await serve({"engine": engine})
    first = await net.place_call(from_=CALLER, to=NUMBER)
    await first.wait_ended(5)
    second = await net.place_call(from_=CALLER, to=NUMBER, audio=speech())
    await second.wait_for(lambda: len(engine.calls) == 2 and engine.calls[1].turn >= 1, 6)
    assert not second.ended
    ends = s.events["on_call_end"]
    assert ends[0]["call_id"] == first.call_sid
    await second.hangup()


async def test_ready_rejects_when_the_port_is_in_use() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        phone = Patter(
            carrier=Twilio("AC" + "0" * 32, "token"),
            phone_number=NUMBER,
            webhook_url=HOST,
            persist=False,
        )
        agent = phone.agent(engine=ScriptedEngine())
        task = asyncio.create_task(phone.serve(agent, port=port, host="127.0.0.1"))
        with pytest.raises(OSError):
            await asyncio.wait_for(phone.ready, 5)
        with pytest.raises(OSError):
            await task
    finally:
        blocker.close()


async def test_ready_rejects_on_bad_config() -> None:
    phone = Patter(carrier=Twilio("AC" + "0" * 32, "token"), phone_number=NUMBER, webhook_url=HOST)
    agent = phone.agent(engine=ScriptedEngine())
    task = asyncio.create_task(phone.serve(agent, port=70000))
    with pytest.raises(ValueError, match="port"):
        await asyncio.wait_for(phone.ready, 5)
    with pytest.raises(ValueError):
        await task

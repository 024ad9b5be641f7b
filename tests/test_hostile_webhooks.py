"""Webhooks a stranger (or a replay) can send: they open no session, rewrite no history, and
every malformed one gets a 4xx and at most one log line of its kind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from getpatter import Patter
from getpatter.testing.engines import ScriptedEngine

from carrier_nets import Network, open_network
from helpers import CALLER, HOST, NUMBER, speech


@contextlib.asynccontextmanager
async def served(network: Network, persist: Path) -> AsyncIterator[tuple[Patter, ScriptedEngine]]:
    phone = Patter(
        carrier=network.carrier(), phone_number=NUMBER, webhook_url=HOST, persist=str(persist)
    )
    engine = ScriptedEngine()
    agent = phone.agent(engine=engine, first_message="Hello there.")
    task = asyncio.create_task(phone.serve(agent, port=0, host="127.0.0.1", dashboard=False))
    await asyncio.wait_for(phone.ready, 5)
    network.fake.route(HOST, f"127.0.0.1:{phone.port}")
    try:
        yield phone, engine
    finally:
        await phone.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


async def a_whole_call(network: Network) -> Any:
    call = await network.fake.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=0.2, tail=3))
    await call.wait_for(lambda: len(call.marks_echoed) >= 1, 8)
    await call.hangup()
    await call.wait_ended(5)
    return call


async def stored(phone: Patter, call_id: str) -> dict[str, Any]:
    assert phone.server is not None and phone.server.store is not None
    for _ in range(100):
        record = await phone.server.store.get(call_id)
        if record is not None and record["state"] == "ended":
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished record of {call_id}")


async def replay_twilio(port: int, auth_token: str, call_sid: str) -> tuple[int, str]:
    """Twilio's signed voice webhook for `call_sid`, sent again (its signature has no time)."""
    form = {"CallSid": call_sid, "From": CALLER, "To": NUMBER, "Direction": "inbound"}
    url = f"https://{HOST}/webhooks/twilio/voice"
    signature = RequestValidator(auth_token).compute_signature(url, form)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/webhooks/twilio/voice",
            data=form,
            headers={"X-Twilio-Signature": signature},
        ) as response,
    ):
        return response.status, await response.text()


async def test_a_replayed_twilio_voice_webhook_opens_nothing_and_rewrites_nothing(
    tmp_path: Path,
) -> None:
    async with open_network("twilio") as network:
        token = network.fake.auth_token
        async with served(network, tmp_path) as (phone, engine):
            done = await a_whole_call(network)
            before = await stored(phone, done.call_sid)
            status, twiml = await replay_twilio(phone.port or 0, token, done.call_sid)
            assert status == 200 and "<Hangup/>" in twiml and "<Stream" not in twiml
            # and during a live call: the replay is told to hang up, the call goes on
            live = await network.fake.place_call(from_=CALLER, to=NUMBER, audio=speech(tail=4))
            await live.wait_for(lambda: len(live.marks_echoed) >= 1, 8)
            status, twiml = await replay_twilio(phone.port or 0, token, live.call_sid)
            assert "<Hangup/>" in twiml and "<Stream" not in twiml
            await asyncio.sleep(0.3)
            assert live.stream_open and not live.ended
            await live.hangup()
            assert (await stored(phone, live.call_sid))["end_reason"] == "hangup"
            assert len(engine.calls) == 2
            assert phone.server is not None and not phone.server.sessions
            assert await stored(phone, done.call_sid) == before
        # after a restart the history itself remembers the call
        async with served(network, tmp_path) as (phone, engine):
            status, twiml = await replay_twilio(phone.port or 0, token, done.call_sid)
            assert "<Hangup/>" in twiml and "<Stream" not in twiml
            await asyncio.sleep(0.2)
            assert not engine.calls and phone.server is not None and not phone.server.sessions
            assert await stored(phone, done.call_sid) == before


async def replay_plivo(port: int, hook: Any) -> tuple[int, str]:
    """Plivo's answer webhook sent again byte for byte: same nonce, same V3 signature (it
    carries no time, so it still verifies)."""
    path = urlsplit(hook.url).path
    headers = {k: v for k, v in hook.headers.items() if k.lower() != "host"}
    async with aiohttp.ClientSession() as http:
        if hook.method == "GET":
            query = urlsplit(hook.url).query
            async with http.get(f"http://127.0.0.1:{port}{path}?{query}", headers=headers) as r:
                return r.status, await r.text()
        async with http.post(
            f"http://127.0.0.1:{port}{path}", data=hook.params, headers=headers
        ) as response:
            return response.status, await response.text()


async def test_a_replayed_plivo_answer_webhook_opens_nothing_and_rewrites_nothing(
    tmp_path: Path,
) -> None:
    async with open_network("plivo") as network:
        async with served(network, tmp_path) as (phone, engine):
            done = await a_whole_call(network)
            before = await stored(phone, done.call_uuid)
            answer = next(
                h
                for h in network.fake.webhooks
                if h.kind == "answer" and h.call_uuid == done.call_uuid
            )
            status, xml = await replay_plivo(phone.port or 0, answer)
            assert status == 200 and "<Hangup" in xml and "<Stream" not in xml
            await asyncio.sleep(0.2)
            assert len(engine.calls) == 1
            assert phone.server is not None and not phone.server.sessions
            assert await stored(phone, done.call_uuid) == before
        async with served(network, tmp_path) as (phone, engine):  # history remembers it
            status, xml = await replay_plivo(phone.port or 0, answer)
            assert status == 200 and "<Hangup" in xml and "<Stream" not in xml
            assert not engine.calls
            assert await stored(phone, done.call_uuid) == before


async def test_a_telnyx_call_seen_before_a_restart_is_not_answered_again(tmp_path: Path) -> None:
    async with open_network("telnyx") as network:
        async with served(network, tmp_path) as (phone, engine):
            done = await a_whole_call(network)
            before = await stored(phone, done.call_control_id)
        async with served(network, tmp_path) as (phone, engine):
            body = json.dumps(
                {
                    "data": {
                        "event_type": "call.initiated",
                        "id": str(uuid.uuid4()),  # a new delivery id: not a plain duplicate
                        "payload": {
                            "call_control_id": done.call_control_id,
                            "direction": "incoming",
                            "from": CALLER,
                            "to": NUMBER,
                        },
                    }
                }
            ).encode()
            sent = len(network.fake.requests)
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"http://127.0.0.1:{phone.port}/webhooks/telnyx/voice",
                    data=body,
                    headers={**network.fake.sign(body), "Content-Type": "application/json"},
                ) as response,
            ):
                assert response.status == 200
            await asyncio.sleep(0.3)
            answers = [r for r in network.fake.requests[sent:] if "answer" in r.path]
            assert not answers and not engine.calls
            assert await stored(phone, done.call_control_id) == before


# --- malformed webhooks ------------------------------------------------------------------------


async def raw_request(port: int, head: str, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = head.replace("\n", "\r\n").encode("utf-8") + b"\r\n\r\n" + body
        writer.write(request)
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["twilio", "telnyx", "plivo"])
async def test_malformed_webhooks_get_4xx_and_one_line_each(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_network(kind) as network, served(network, tmp_path) as (phone, _):
        port = phone.port or 0
        form = b"CallSid=CA1&From=%2B15557654321"
        nested = b'{"data": ' + b"[" * 50000 + b"]" * 50000 + b"}"
        if kind in ("twilio", "plivo"):
            signature = "X-Twilio-Signature" if kind == "twilio" else "X-Plivo-Signature-V3"
            route = "/webhooks/twilio/voice" if kind == "twilio" else "/webhooks/plivo/answer"
            path = f"POST {route} HTTP/1.1\nHost: x"
            cases = [
                (  # a charset nobody knows
                    f"{path}\nContent-Type: application/x-www-form-urlencoded; charset=klingon"
                    f"\nContent-Length: {len(form)}",
                    form,
                    b"400",
                ),
                (  # multipart, and broken: Twilio never sends it
                    f"{path}\nContent-Type: multipart/form-data; boundary=zz\nContent-Length: 9",
                    b"--zz\r\nbad",
                    b"415",
                ),
                (  # a signature that is not ASCII
                    f"{path}\nContent-Type: application/x-www-form-urlencoded"
                    f"\n{signature}: ünïcødé\nX-Plivo-Signature-V3-Nonce: 1"
                    f"\nContent-Length: {len(form)}",
                    form,
                    b"403",
                ),
            ]
        else:
            signed = network.fake.sign(nested)
            path = "POST /webhooks/telnyx/voice HTTP/1.1\nHost: x\nContent-Type: application/json"
            cases = [
                (  # a timestamp of 400 digits
                    f"{path}\ntelnyx-signature-ed25519: {signed['telnyx-signature-ed25519']}"
                    f"\ntelnyx-timestamp: {'9' * 400}\nContent-Length: 2",
                    b"{}",
                    b"403",
                ),
                (  # deeply nested JSON, genuinely signed
                    "\n".join([path, *(f"{k}: {v}" for k, v in signed.items())])
                    + f"\nContent-Length: {len(nested)}",
                    nested,
                    b"400",
                ),
            ]
        with caplog.at_level(logging.WARNING):
            for head, body, status in cases:
                for i in range(15):
                    if kind == "telnyx" and status == b"400":  # a new delivery, not a replay
                        body = nested + b" " * i
                        signed = network.fake.sign(body)
                        head = "\n".join([path, *(f"{k}: {v}" for k, v in signed.items())])
                        head += f"\nContent-Length: {len(body)}"
                    line = await raw_request(port, head, body)
                    assert line.split(b" ")[1] == status, (head[:80], line)
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not any(r.exc_info or r.levelno >= logging.ERROR for r in lines), [
            r.getMessage() for r in lines
        ]
        assert len(lines) <= len(cases), [r.getMessage() for r in lines]

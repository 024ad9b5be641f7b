"""Plivo-specific checks through the fake Plivo network, over real sockets (the whole calls
every carrier shares are in test_calls_shared.py); and the Plivo wire helpers."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

from getpatter import CallError, Patter, Plivo
from getpatter.carriers.plivo.wire import (
    PlivoMediaEncoder,
    compute_signature,
    parse_media_message,
    stream_xml,
)
from getpatter.core.media import DtmfReceived, Ignored, InboundAudio, MarkPlayed, StreamStarted
from getpatter.testing.engines import ScriptedEngine

from carrier_nets import Network, Served, open_network, serve_on, stop
from helpers import CALLER, HOST, NUMBER

CALLEE = "+15550009876"


@pytest.fixture
async def net() -> AsyncIterator[Network]:
    async with open_network("plivo") as network:
        yield network


@pytest.fixture
async def served(net: Network) -> AsyncIterator[Served]:
    s = await serve_on(
        net, {"engine": ScriptedEngine(), "first_message": "Hello, thanks for calling!"}
    )
    yield s
    await stop(s)


def _sdk_signature(token: str, url: str, form: dict[str, str], nonce: str) -> str:
    """Plivo's own SDK signing the way Plivo signs: the oracle our check must agree with."""
    base = construct_post_url(url, dict(form)).decode()
    return str(get_signature_v3(token.encode(), base, nonce.encode()).decode())


# --- answering ---------------------------------------------------------------------------


async def test_answer_is_a_bidirectional_mulaw_stream_that_holds_the_call(
    net: Network, served: Served
) -> None:
    call = await net.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: len(call.played) > 1600, 5)  # the greeting is heard
    answer = next(h for h in net.fake.webhooks if h.kind == "answer")
    stream = ET.fromstring(answer.body).find("Stream")
    assert stream is not None
    assert stream.get("bidirectional") == "true" and stream.get("keepCallAlive") == "true"
    assert stream.get("contentType") == "audio/x-mulaw;rate=8000"
    assert (stream.text or "").startswith(f"wss://{HOST}/")
    start = next(m for _, ev, m in call.sent if ev == "start")
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000}
    assert call.custom_parameters["token"]  # the media token rode in extraHeaders
    # the caller's number reaches the app in E.164, though Plivo writes it without '+'
    await served.phone.disconnect()
    record = (await served.ended())[0]
    assert (record["caller"], record["callee"]) == (CALLER, NUMBER)
    assert not call.errors, call.errors


async def test_webhooks_need_a_genuine_v3_signature(net: Network, served: Served) -> None:
    token = net.fake.auth_token
    url = f"https://{HOST}/webhooks/plivo/answer"
    form = {"CallUUID": "c0ffee00-0000-4000-8000-000000000001", "From": "15557654321"}
    form["To"], form["Direction"], form["CallStatus"] = "15550001234", "inbound", "ringing"
    local = f"http://127.0.0.1:{served.phone.port}/webhooks/plivo/answer"
    nonce = "12345678901234567890"

    async def post(headers: dict[str, str], data: dict[str, str] = form) -> int:
        async with aiohttp.ClientSession() as http:
            headers = {"Host": HOST, **headers}
            async with http.post(local, data=data, headers=headers) as resp:
                return resp.status

    good = _sdk_signature(token, url, form, nonce)
    assert compute_signature(token, "POST", url, form.items(), nonce) == good
    assert await post({}) == 403  # unsigned
    bad = {"X-Plivo-Signature-V3": good, "X-Plivo-Signature-V3-Nonce": "0" * 20}
    assert await post(bad) == 403  # another nonce
    other = _sdk_signature("someone-elses-token", url, form, nonce)
    assert await post({"X-Plivo-Signature-V3": other, "X-Plivo-Signature-V3-Nonce": nonce}) == 403
    tampered = {**form, "From": "15550000000"}
    headers = {"X-Plivo-Signature-V3": good, "X-Plivo-Signature-V3-Nonce": nonce}
    assert await post(headers, tampered) == 403
    assert not served.phone.server.sessions  # type: ignore[union-attr]  # nothing was created
    # one of several signatures (token rotation) is enough
    headers = {"X-Plivo-Signature-V3": f"{other},{good}", "X-Plivo-Signature-V3-Nonce": nonce}
    assert await post(headers) == 200
    # and every webhook the fake sends carries a signature Plivo's SDK accepts
    call = await net.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_stream()
    hook = next(h for h in net.fake.webhooks if h.kind == "answer")
    assert hook.status == 200
    sdk = _sdk_signature(token, hook.url, hook.params, hook.headers["X-Plivo-Signature-V3-Nonce"])
    assert hook.headers["X-Plivo-Signature-V3"] == sdk


async def test_require_signature_without_a_token_is_503(net: Network) -> None:
    from getpatter.agent import Agent
    from getpatter.config import LocalConfig
    from getpatter.core.server import EmbeddedServer

    config = LocalConfig(telephony_provider="plivo", plivo_auth_id="MA1", phone_number=NUMBER)
    server = EmbeddedServer(config, Agent(engine=ScriptedEngine()))
    task = asyncio.create_task(server.start(0))
    try:
        await asyncio.wait_for(server.listening, 5)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.port}/webhooks/plivo/answer"
            async with http.post(url, data={"CallUUID": "x"}) as resp:
                assert resp.status == 503
    finally:
        await server.stop()
        await asyncio.wait_for(task, 5)


# --- outbound ----------------------------------------------------------------------------


async def test_outbound_dial_request_asks_for_machine_detection(
    net: Network, served: Served
) -> None:
    net.fake.set_callee(CALLEE, answer="human")
    agent = served.phone.server.agent  # type: ignore[union-attr]
    call = await served.phone.call(to=CALLEE, agent=agent, ring_timeout=20)
    dial = next(r for r in net.fake.requests if r.method == "POST" and r.path.endswith("/Call/"))
    body = dial.body
    assert (body["from"], body["to"], body["ring_timeout"]) == (NUMBER[1:], CALLEE[1:], 20)
    assert body["machine_detection"] == "true"
    for key in ("answer_url", "hangup_url", "machine_detection_url"):
        parts = urlsplit(body[key])
        assert parts.scheme == "https" and parts.netloc == HOST
        assert parse_qs(parts.query)["call"]  # each webhook finds its call by our key
    fake = net.fake_call(call.call_id)
    await fake.wait_for(lambda: fake.answered_by == "human" and len(fake.played) > 800, 5)
    assert call.call_id == fake.call_uuid  # learned at answer: the request_uuid is replaced
    await fake.hangup()
    record = await call.wait(5)
    assert record["call_id"] == fake.call_uuid and call.outcome == "hangup"

    call2 = await served.phone.call(to=CALLEE, agent=agent, machine_detection=False)
    dial2 = [r for r in net.fake.requests if r.method == "POST" and r.path.endswith("/Call/")][-1]
    assert "machine_detection" not in dial2.body and "machine_detection_url" not in dial2.body
    fake2 = net.fake_call(call2.call_id)
    await fake2.wait_for(lambda: fake2.stream_open, 5)
    await fake2.hangup()


async def test_hanging_up_before_answer_cancels_the_request(net: Network, served: Served) -> None:
    net.fake.set_callee(CALLEE, answer="human", answer_delay=10)
    agent = served.phone.server.agent  # type: ignore[union-attr]
    call = await served.phone.call(to=CALLEE, agent=agent)
    fake = net.fake_call(call.call_id)
    await served.phone.disconnect()
    await fake.wait_ended(5)
    cancel = [r for r in net.fake.requests if r.method == "DELETE"]
    assert [r.path.split("/")[-3:-1] for r in cancel] == [["Request", fake.request_uuid]]
    assert fake.status == "cancel" and not fake.answered
    assert call.outcome == "server_stopped"


async def test_wrong_credentials_fail_the_call_clearly(net: Network) -> None:
    wrong = Plivo(net.fake.auth_id, "not-the-token", base_url=net.fake.base_url)
    phone = Patter(carrier=wrong, phone_number=NUMBER, webhook_url=HOST, persist=False)
    ends: list[dict[str, Any]] = []
    agent = phone.agent(engine=ScriptedEngine())
    task = asyncio.create_task(
        phone.serve(agent, port=0, host="127.0.0.1", on_call_end=ends.append)
    )
    try:
        await asyncio.wait_for(phone.ready, 5)
        with pytest.raises(CallError) as err:
            await phone.call(to=CALLEE, agent=agent)
        assert "401" in str(err.value) and "not-the-token" not in str(err.value)
        for _ in range(100):
            if ends:
                break
            await asyncio.sleep(0.02)
        assert ends and ends[0]["end_reason"] == "failed"  # the record is written all the same
        assert not net.fake.calls
    finally:
        await phone.disconnect()
        await asyncio.wait_for(task, 5)


# --- call control ------------------------------------------------------------------------


async def test_transfer_and_last_words_move_the_call_to_new_xml(net: Network) -> None:
    s = await serve_on(net, {"engine": ScriptedEngine(transfer_to="+15550002222")})
    try:
        call = await net.fake.place_call(from_=CALLER, to=NUMBER)
        await call.wait_stream()
        await call.send_dtmf("0")
        await call.wait_for(lambda: bool(call.transfers) and not call.stream_open, 5)
        moves = [r for r in net.fake.requests if r.method == "POST" and "/Call/" in r.path]
        assert moves[-1].body["legs"] == "aleg" and moves[-1].body["aleg_method"] == "POST"
        fetched = next(h for h in net.fake.webhooks if h.kind == "transfer")
        assert ET.fromstring(fetched.body).find("Dial/Number").text == "+15550002222"  # type: ignore[union-attr]
        assert call.transfers == ["+15550002222"] and not call.stream_open
    finally:
        await stop(s)


async def test_recording_runs_the_whole_call_and_reports_back(net: Network) -> None:
    s = await serve_on(net, {"engine": ScriptedEngine()}, recording=True)
    try:
        call = await net.fake.place_call(from_=CALLER, to=NUMBER)
        await call.wait_for(lambda: net.recorded(call), 3)
        record_req = next(r for r in net.fake.requests if r.path.endswith("/Record/"))
        assert record_req.body["time_limit"] >= 3600  # Plivo's default would stop it at 60 s
        await call.hangup()
        [record] = await s.ended()
        recording = [e for e in record["events"] if e["kind"] == "recording"]
        assert recording[0]["status"] == "started"
        for _ in range(100):  # the callback comes with the hang-up, after the record
            if any(h.kind == "recording" and h.status == 200 for h in net.fake.webhooks):
                break
            await asyncio.sleep(0.02)
        hook = next(h for h in net.fake.webhooks if h.kind == "recording")
        assert hook.status == 200 and hook.params["record_url"].endswith(".mp3")
    finally:
        await stop(s)


# --- wire --------------------------------------------------------------------------------


def test_encoder_speaks_plivos_stream_protocol() -> None:
    enc = PlivoMediaEncoder("sid-1")
    media = json.loads(enc.media(b"\xff" * 160))
    assert media["event"] == "playAudio"
    assert media["media"]["contentType"] == "audio/x-mulaw" and media["media"]["sampleRate"] == 8000
    assert json.loads(enc.mark("g0-1")) == {
        "event": "checkpoint",
        "streamId": "sid-1",
        "name": "g0-1",
    }
    assert json.loads(enc.clear()) == {"event": "clearAudio", "streamId": "sid-1"}


def test_stream_messages_become_media_events() -> None:
    start = {
        "event": "start",
        "sequenceNumber": 1,
        "start": {"callId": "c1", "streamId": "s1", "mediaFormat": {"encoding": "audio/x-mulaw"}},
        "extra_headers": "token=abc123;x=1",
    }
    event = parse_media_message(json.dumps(start)).event
    assert event == StreamStarted("s1", "c1", {"token": "abc123", "x": "1"})
    start["extra_headers"] = "token=abc123,x=1"  # as the XML attribute writes them
    assert parse_media_message(json.dumps(start)).event == event
    played = {"event": "playedStream", "streamId": "s1", "name": "g0-3"}
    assert parse_media_message(json.dumps(played)).event == MarkPlayed("g0-3")
    dtmf = {"event": "dtmf", "streamId": "s1", "dtmf": {"digit": "7"}}
    assert parse_media_message(json.dumps(dtmf)).event == DtmfReceived("7")
    cleared = {"event": "clearedAudio", "streamId": "s1", "sequenceNumber": 9}
    assert isinstance(parse_media_message(json.dumps(cleared)).event, Ignored)


async def test_audio_timestamps_are_relative_to_the_stream() -> None:
    from getpatter.carriers.plivo.adapter import PlivoAdapter
    from getpatter.config import LocalConfig

    class NoCalls:
        def find_call(self, call_id: str) -> None:
            return None

    config = LocalConfig(telephony_provider="plivo", plivo_auth_id="MA1", plivo_auth_token="t")
    adapter = PlivoAdapter(NoCalls(), config)  # type: ignore[arg-type]
    adapter.parse(json.dumps({"event": "start", "start": {"callId": "c", "streamId": "s"}}))

    def media(ts: int) -> str:
        body = {"track": "inbound", "timestamp": str(ts), "chunk": 1, "payload": "/w=="}
        return json.dumps({"event": "media", "streamId": "s", "media": body})

    first, later = adapter.parse(media(1_705_312_200_000)), adapter.parse(media(1_705_312_200_040))
    assert isinstance(first, InboundAudio) and isinstance(later, InboundAudio)
    assert (first.timestamp, later.timestamp) == (0.0, 0.04)


def test_stream_xml_refuses_a_token_extra_headers_cannot_carry() -> None:
    assert 'extraHeaders="token=ab12"' in stream_xml("wss://h/ws/stream/k", "ab12")
    with pytest.raises(ValueError):
        stream_xml("wss://h/ws/stream/k", "ab-12_")

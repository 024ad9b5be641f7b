"""The fake Telnyx network, tested against a tiny voice-agent server over real sockets.

PyNaCl is the oracle for webhook signatures: the app verifies every delivery with the
published public key, exactly as the official SDK's `webhooks.unwrap` does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from getpatter.testing.phone.audio import ulaw_encode
from getpatter.testing.telnyx import FakeCall, FakeTelnyx

NUMBER = "+15550001000"
CALLER = "+15557654321"
CALLEE = "+15559990000"
HOST = "agent.test"
VOICE_URL = f"https://{HOST}/webhooks/telnyx/voice"
STATE = base64.b64encode(b"tenant=acme").decode()


@dataclass
class Hook:
    env: dict[str, Any]
    raw: bytes
    headers: dict[str, str]
    verified: bool

    @property
    def event(self) -> str:
        return str(self.env["data"]["event_type"])

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = self.env["data"]["payload"]
        return payload


class Session:
    """One media socket as the app sees it."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.msgs: list[tuple[float, dict[str, Any]]] = []
        self.started = asyncio.Event()
        self.close_code: int | None = None

    def of(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.msgs if m["event"] == event]

    async def send(self, msg: dict[str, Any] | str) -> None:
        await self.ws.send_str(msg if isinstance(msg, str) else json.dumps(msg))

    async def audio(self, ulaw: bytes, chunk: int = 800) -> None:
        for i in range(0, len(ulaw), chunk):
            payload = base64.b64encode(ulaw[i : i + chunk]).decode()
            await self.send({"event": "media", "media": {"payload": payload}})

    async def mark(self, name: str) -> None:
        await self.send({"event": "mark", "mark": {"name": name}})


class Agent:
    """A Telnyx voice-agent app: verifies webhooks, answers calls, serves /media."""

    def __init__(self, tx: FakeTelnyx) -> None:
        self.tx = tx
        self.key = VerifyKey(base64.b64decode(tx.public_key))
        self.hooks: list[Hook] = []
        self.sessions: list[Session] = []
        self.answer: dict[str, Any] | None = {
            "stream_url": f"wss://{HOST}/media?token=abc",
            "stream_track": "inbound_track",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
            "stream_auth_token": "s3cret",
            "client_state": STATE,
            "command_id": "answer-1",
        }
        self.status: Callable[[Hook], int] = lambda hook: 200
        self.replies: list[tuple[int, dict[str, Any]]] = []
        self.runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None
        self.port = 0

    def verify(self, raw: bytes, headers: dict[str, str]) -> bool:
        ts = headers.get("telnyx-timestamp", "")
        try:
            sig = base64.b64decode(headers.get("telnyx-signature-ed25519", ""))
            self.key.verify(f"{ts}|".encode() + raw, sig)
        except (BadSignatureError, ValueError):
            return False
        return True

    async def webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = dict(request.headers)
        hook = Hook(json.loads(raw), raw, headers, self.verify(raw, headers))
        self.hooks.append(hook)
        status = self.status(hook)
        payload = hook.payload
        if (
            status == 200
            and hook.event == "call.initiated"
            and payload["direction"] == "incoming"
            and self.answer is not None
        ):
            asyncio.get_running_loop().create_task(
                self.command(payload["call_control_id"], "answer", self.answer)
            )
        return web.Response(status=status)

    async def command(
        self, ccid: str, action: str, body: dict[str, Any] | None = None, key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        return await self.rest("POST", f"/calls/{ccid}/actions/{action}", body or {}, key)

    async def rest(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {key if key is not None else self.tx.api_key}"}
        data = body if isinstance(body, bytes) else None
        js = None if isinstance(body, bytes) else body
        async with self.http.request(
            method, self.tx.base_url + path, json=js, data=data, headers=headers
        ) as resp:
            reply = (resp.status, await resp.json())
        self.replies.append(reply)
        return reply

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = Session(ws, request)
        self.sessions.append(session)
        loop = asyncio.get_running_loop()
        async for msg in ws:
            m = json.loads(msg.data)
            session.msgs.append((loop.time(), m))
            if m["event"] == "start":
                session.started.set()
        session.close_code = ws.close_code
        return ws

    def events(self, ccid: str | None = None) -> list[str]:
        return [h.event for h in self.hooks if ccid in (None, h.payload["call_control_id"])]

    def hook(self, event: str, ccid: str | None = None) -> Hook:
        return next(
            h
            for h in self.hooks
            if h.event == event and ccid in (None, h.payload["call_control_id"])
        )

    async def wait_hook(self, event: str, ccid: str | None = None, within: float = 5.0) -> Hook:
        async with asyncio.timeout(within):
            while True:
                try:
                    return self.hook(event, ccid)
                except StopIteration:
                    await asyncio.sleep(0.01)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/telnyx/voice", self.webhook)
        app.router.add_get("/media", self.media)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.http = aiohttp.ClientSession()

    async def stop(self) -> None:
        assert self.runner is not None and self.http is not None
        await self.http.close()
        await self.runner.cleanup()


@pytest.fixture
async def env() -> AsyncIterator[tuple[FakeTelnyx, Agent]]:
    tx = FakeTelnyx()
    await tx.start()
    agent = Agent(tx)
    await agent.start()
    tx.route(HOST, f"127.0.0.1:{agent.port}")
    tx.add_number(NUMBER, VOICE_URL)
    try:
        yield tx, agent
    finally:
        await tx.stop()
        await agent.stop()


async def streaming(agent: Agent, call: FakeCall, index: int = 0) -> Session:
    await call.wait_for(lambda: len(agent.sessions) > index)
    session = agent.sessions[index]
    async with asyncio.timeout(5):
        await session.started.wait()
    return session


def tone(seconds: float, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    return ulaw_encode((8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16))


async def test_webhooks_are_signed_and_forgeries_fail(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    await agent.wait_hook("streaming.started")
    assert agent.hooks and all(h.verified for h in agent.hooks)
    hook = agent.hooks[0]
    assert abs(int(hook.headers["telnyx-timestamp"]) - time.time()) < 5
    assert hook.env["meta"] == {"attempt": 1, "delivered_to": VOICE_URL}
    assert hook.headers["Host"] == HOST and hook.headers["X-Forwarded-Proto"] == "https"
    assert hook.headers["Content-Type"].startswith("application/json")
    # the exact bytes are signed: any change breaks verification
    forged = hook.raw.replace(CALLER.encode(), b"+19999999999")
    assert forged != hook.raw and not agent.verify(forged, hook.headers)
    replay = dict(
        hook.headers, **{"telnyx-timestamp": str(int(hook.headers["telnyx-timestamp"]) + 1)}
    )
    assert not agent.verify(hook.raw, replay)
    # tx.sign() makes headers the app accepts, for tests that craft their own webhooks
    assert agent.verify(b'{"x":1}', tx.sign(b'{"x":1}'))
    assert tx.sign(b"{}", 1700000000)["telnyx-timestamp"] == "1700000000"
    # the recorded deliveries match what the app received
    assert [w.event_type for w in tx.webhooks] == agent.events()
    assert all(w.status == 200 and w.attempt == 1 for w in tx.webhooks)
    await call.hangup()


async def test_inbound_answer_then_stream_at_real_time(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    speech = tone(0.1)
    call = await tx.place_call(from_=CALLER, to=NUMBER, audio=speech)
    session = await streaming(agent, call)
    assert call.stream_open and call.state == "answered" and call.status == "in-progress"

    initiated = agent.hook("call.initiated").payload
    assert initiated["direction"] == "incoming" and initiated["state"] == "parked"
    assert initiated["call_control_id"] == call.call_control_id
    assert call.call_control_id.startswith("v3:")
    assert initiated["connection_id"] == tx.connection_id
    assert (initiated["from"], initiated["to"]) == (CALLER, NUMBER)
    assert initiated["client_state"] is None
    for key in ("call_leg_id", "call_session_id", "start_time"):
        assert initiated[key]
    await agent.wait_hook("streaming.started")
    assert agent.events()[:3] == ["call.initiated", "call.answered", "streaming.started"]
    # client_state from answer is echoed, base64, in every later webhook
    assert agent.hook("call.answered").payload["client_state"] == STATE
    started = agent.hook("streaming.started").payload
    assert started["stream_url"] == f"wss://{HOST}/media?token=abc"
    assert started["stream_id"] == call.stream_id
    assert agent.replies[0] == (200, {"data": {"result": "ok"}})

    # the upgrade: query string kept, auth token header, public host
    req = session.request
    assert req.path_qs == "/media?token=abc"
    assert req.headers["x-telnyx-streaming-auth-token"] == "s3cret"
    assert req.host == HOST

    await call.wait_for(lambda: len(session.of("media")) >= 30, 3)
    connected, start = session.msgs[0][1], session.msgs[1][1]
    assert connected == {"event": "connected", "version": "1.0.0"}
    assert start["sequence_number"] == "1" and start["stream_id"] == call.stream_id
    s = start["start"]
    assert s["call_control_id"] == call.call_control_id
    assert s["call_session_id"] == call.call_session_id
    assert (s["from"], s["to"], s["client_state"]) == (CALLER, NUMBER, STATE)
    assert s["media_format"] == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    assert s["user_id"] == tx.user_id and "stream_id" not in s

    media = session.of("media")
    for i, (_, m) in enumerate(media[:30]):
        assert m["sequence_number"] == str(i + 2) and m["stream_id"] == call.stream_id
        assert m["media"]["track"] == "inbound"
        assert m["media"]["chunk"] == str(i + 1) and m["media"]["timestamp"] == str(i * 20)
        assert len(base64.b64decode(m["media"]["payload"])) == 160
    heard = b"".join(base64.b64decode(m["media"]["payload"]) for _, m in media[:5])
    assert heard == speech[:800]
    assert base64.b64decode(media[6][1]["media"]["payload"]) == b"\xff" * 160  # then silence
    # paced at 20 ms without drift
    t0 = media[0][0]
    for i, (t, _) in enumerate(media[:30]):
        assert abs((t - t0) - i * 0.020) < 0.03, (i, t - t0)
    assert abs((media[29][0] - t0) - 29 * 0.020) < 0.02
    await call.hangup()


async def test_marks_echo_after_playout_and_clear(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    session = await streaming(agent, call)
    loop = asyncio.get_running_loop()

    await session.mark("empty")  # nothing queued: echoed at once
    await call.wait_for_mark("empty", 1)

    reply = tone(0.4)
    t0 = loop.time()
    await session.audio(reply)
    await session.mark("greeting")
    echoed = await call.wait_for_mark("greeting", 3)
    assert 0.35 < echoed - t0 < 0.6, echoed - t0
    assert bytes(call.played) == reply
    await call.wait_for(lambda: bool(session.of("mark")))
    mark = session.of("mark")[0][1]
    assert mark["event"] == "mark" and mark["stream_id"] == call.stream_id

    await session.audio(tone(2.0, 300))
    await session.mark("long")
    await asyncio.sleep(0.2)
    t_clear = loop.time()
    await session.send({"event": "clear"})
    echoed = await call.wait_for_mark("long", 1)
    assert echoed - t_clear < 0.1 and call.clears == 1
    played_after = len(call.played) - len(reply)
    assert 800 <= played_after <= 2400  # ~0.2 s of 2 s played before the clear
    await asyncio.sleep(0.1)
    assert len(call.played) - len(reply) == played_after  # nothing more plays
    assert [n for _, _, m in call.sent if m["event"] == "mark" for n in [m["mark"]["name"]]] == [
        "empty",
        "greeting",
        "long",
    ]
    assert not call.errors
    await call.hangup()


async def test_bad_media_messages_are_recorded_not_fatal(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    session = await streaming(agent, call)
    await session.send("{not json")
    await session.ws.send_bytes(b"\x00\x01")
    await session.send({"event": "media", "media": {"payload": "@@not base64@@"}})
    await session.send(
        {"event": "media", "media": {"payload": base64.b64encode(b"\xff" * 80).decode()}}
    )
    await session.send({"event": "dance"})
    await call.wait_for(lambda: len(call.errors) >= 5)
    assert call.error_codes == ["100003", "100003", "100004", "100004", "100003"]
    await call.wait_for(lambda: len(session.of("error")) >= 5)
    err = session.of("error")[0][1]
    assert err["stream_id"] == call.stream_id and err["payload"]["code"] == 100003
    # the stream keeps going
    n = len(session.of("media"))
    await call.wait_for(lambda: len(session.of("media")) > n + 3)
    assert call.stream_open
    await call.hangup()


async def test_without_rtp_mode_media_must_be_mp3(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    assert agent.answer is not None
    del agent.answer["stream_bidirectional_mode"]
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    session = await streaming(agent, call)
    await session.audio(tone(0.2))  # raw PCMU: Telnyx would try to play it as an MP3
    mp3 = b"ID3\x04\x00" + b"\x00" * 100
    await session.send({"event": "media", "media": {"payload": base64.b64encode(mp3).decode()}})
    await call.wait_for(lambda: len(call.mp3_received) == 1)
    assert call.error_codes == ["100004", "100004"] and not call.played  # 2 chunks
    await call.hangup()


async def test_caller_hangup_stops_stream_and_sends_hangup(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    session = await streaming(agent, call)
    status, _ = await agent.command(call.call_control_id, "record_start", {"format": "wav"})
    assert status == 422  # channels is required too
    status, _ = await agent.command(
        call.call_control_id, "record_start", {"format": "mp3", "channels": "single"}
    )
    assert status == 200
    await call.hangup()
    assert call.ended and call.status == "completed"
    assert session.msgs[-1][1]["event"] == "stop"
    stop = session.msgs[-1][1]
    assert stop["stop"]["call_control_id"] == call.call_control_id
    assert int(stop["sequence_number"]) == int(session.msgs[-2][1]["sequence_number"]) + 1
    await call.wait_for(lambda: session.close_code is not None)
    assert session.close_code == 1000
    hangup = agent.hook("call.hangup").payload
    assert hangup["hangup_cause"] == "normal_clearing" and hangup["hangup_source"] == "caller"
    assert hangup["state"] == "hangup" and hangup["client_state"] == STATE
    assert (call.hangup_cause, call.hangup_source) == ("normal_clearing", "caller")
    saved = agent.hook("call.recording.saved").payload
    assert saved["recording_urls"]["mp3"] and saved["channels"] == "single"
    assert agent.events()[-3:] == ["streaming.stopped", "call.hangup", "call.recording.saved"]


async def test_rest_auth_and_error_shapes(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    status, body = await agent.rest("POST", "/calls", {}, key="KEYwrong")
    assert status == 401
    assert body["errors"][0]["code"] == "10009"
    assert body["errors"][0]["title"] == "Authentication failed"
    assert (await agent.rest("GET", "/calls/v3:nope", key=""))[0] == 401
    status, body = await agent.rest("GET", "/calls/v3:nope")
    assert status == 404 and body["errors"][0]["code"] == "10005"
    status, body = await agent.rest("POST", "/calls", b"{not json")
    assert status == 400 and body["errors"][0]["code"] == "10015"
    dial = {"connection_id": tx.connection_id, "from": NUMBER}
    status, body = await agent.rest("POST", "/calls", dial)
    assert status == 422 and body["errors"][0]["code"] == "10004"
    assert body["errors"][0]["source"] == {"pointer": "/to"}
    status, body = await agent.rest("POST", "/calls", {**dial, "to": "5551234"})
    assert status == 422 and body["errors"][0]["code"] == "10016"
    status, body = await agent.rest("POST", "/calls", {**dial, "to": CALLEE, "connection_id": "1"})
    assert status == 422
    assert (await agent.rest("POST", "/calls", {**dial, "to": CALLEE, "client_state": "%%"}))[
        0
    ] == 422

    call = await tx.place_call(from_=CALLER, to=NUMBER)
    ccid = call.call_control_id
    speak = {"payload": "Hello there", "voice": "female", "command_id": "say-1"}
    assert await agent.command(ccid, "speak", speak) == (200, {"data": {"result": "ok"}})
    assert await agent.command(ccid, "speak", speak) == (200, {"data": {"result": "ok"}})
    assert call.said == ["Hello there"]  # the repeated command_id was ignored
    status, body = await agent.command(ccid, "answer", {})
    assert status == 422  # already answered
    status, body = await agent.command(ccid, "fly", {})
    assert status == 404
    status, body = await agent.rest("GET", f"/calls/{ccid}")
    assert status == 200 and body["data"]["is_alive"] is True
    assert await agent.command(ccid, "hangup", {}) == (200, {"data": {"result": "ok"}})
    await call.wait_ended()
    hangup = agent.hook("call.hangup").payload
    assert (hangup["hangup_cause"], hangup["hangup_source"]) == ("normal_clearing", "callee")
    status, body = await agent.command(ccid, "hangup", {})
    assert status == 422
    assert body["errors"][0]["code"] == "90018"
    assert body["errors"][0]["title"] == "Call has already ended"
    status, body = await agent.rest("GET", f"/calls/{ccid}")
    assert body["data"]["is_alive"] is False
    assert tx.requests[0].status == 401 and tx.requests[-1].path == f"/v2/calls/{ccid}"


async def dial(agent: Agent, tx: FakeTelnyx, **extra: Any) -> FakeCall:
    body = {"connection_id": tx.connection_id, "to": CALLEE, "from": NUMBER, **extra}
    status, reply = await agent.rest("POST", "/calls", body)
    assert status == 200, reply
    data = reply["data"]
    assert data["is_alive"] is False and data["record_type"] == "call"
    assert set(data) == {
        "call_control_id",
        "call_leg_id",
        "call_session_id",
        "is_alive",
        "record_type",
    }
    return tx.calls[data["call_control_id"]]


async def test_outbound_human_with_amd_and_stream(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    tx.set_callee(CALLEE, answer="human", answer_delay=0.1, audio=tone(0.2))
    call = await dial(
        agent,
        tx,
        answering_machine_detection="detect",
        stream_url=f"wss://{HOST}/media",
        stream_track="both_tracks",
        stream_bidirectional_mode="rtp",
        stream_bidirectional_codec="PCMU",
        client_state=STATE,
        custom_parameters=[{"name": "campaign", "value": "spring"}],
    )
    session = await streaming(agent, call)
    await agent.wait_hook("call.machine.detection.ended")
    assert call.direction == "outgoing" and call.answered_by == "human"
    initiated = agent.hook("call.initiated").payload
    assert initiated["direction"] == "outgoing" and initiated["state"] == "bridging"
    assert initiated["client_state"] == STATE
    assert agent.hook("call.machine.detection.ended").payload["result"] == "human"
    order = agent.events()
    assert order.index("call.initiated") < order.index("call.answered")
    assert "streaming.started" in order
    assert session.msgs[1][1]["start"]["custom_parameters"] == {"campaign": "spring"}
    await call.wait_for(lambda: len(session.of("media")) >= 10)
    tracks = [m["media"]["track"] for _, m in session.of("media")[:10]]
    assert tracks == ["inbound", "outbound"] * 5
    await asyncio.sleep(0.5)
    assert "call.machine.greeting.ended" not in agent.events()
    await call.hangup()
    assert agent.hook("call.hangup").payload["hangup_source"] == "callee"


async def test_outbound_machine_greeting_ends_with_beep(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    tx.set_callee(CALLEE, answer="machine", machine_greeting_s=0.3)
    call = await dial(agent, tx, answering_machine_detection="detect_beep")
    detected = await agent.wait_hook("call.machine.detection.ended")
    assert detected.payload["result"] == "machine"
    loop = asyncio.get_running_loop()
    t_answer = call.answered_at
    assert t_answer is not None
    greeting = await agent.wait_hook("call.machine.greeting.ended")
    assert greeting.payload["result"] == "beep_detected"
    assert 0.25 < loop.time() - t_answer < 1.0
    assert not call.stream_ids  # no stream was asked for
    premium = await dial(agent, tx, answering_machine_detection="premium")
    hook = await agent.wait_hook("call.machine.premium.detection.ended", premium.call_control_id)
    assert hook.payload["result"] == "machine"


async def test_outbound_busy_no_answer_failed(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    cases = {"+15550000001": "busy", "+15550000002": "no-answer", "+15550000003": "failed"}
    for number, mode in cases.items():
        tx.set_callee(number, answer=mode)  # type: ignore[arg-type]
    calls = {
        mode: await dial(agent, tx, to=number, timeout_secs=1) for number, mode in cases.items()
    }
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(c.wait_ended() for c in calls.values()))
    causes = {
        mode: agent.hook("call.hangup", c.call_control_id).payload["hangup_cause"]
        for mode, c in calls.items()
    }
    assert causes == {"busy": "user_busy", "no-answer": "timeout", "failed": "unspecified"}
    assert {m: c.status for m, c in calls.items()} == {
        "busy": "busy",
        "no-answer": "no-answer",
        "failed": "failed",
    }
    assert 0.9 < calls["no-answer"].ended_at - t0 < 1.6  # type: ignore[operator]
    assert "call.answered" not in agent.events()


async def test_transfer_ends_our_leg(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    tx.set_callee("+15551112222", answer="busy")
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    session = await streaming(agent, call)
    ccid = call.call_control_id
    assert (await agent.command(ccid, "transfer", {"to": "+15551112222"}))[0] == 200
    leg = await agent.wait_hook("call.hangup")
    assert leg.payload["call_control_id"] != ccid and leg.payload["hangup_cause"] == "user_busy"
    assert not call.ended
    assert (await agent.command(ccid, "transfer", {"to": CALLEE}))[0] == 200
    await call.wait_ended()
    assert call.transfers == ["+15551112222", CALLEE]
    hangup = agent.hook("call.hangup", ccid).payload
    assert hangup["hangup_cause"] == "normal_clearing"
    assert session.msgs[-1][1]["event"] == "stop"
    assert "streaming.stopped" in agent.events(ccid)
    assert (await agent.command(ccid, "transfer", {"to": CALLEE}))[0] == 422


async def test_speak_and_dtmf(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    session = await streaming(agent, call)
    ccid = call.call_control_id
    status, body = await agent.command(ccid, "speak", {"payload": "One moment please"})
    assert status == 422 and body["errors"][0]["source"] == {"pointer": "/voice"}
    speak = {"payload": "One moment please", "voice": "female", "language": "en-US"}
    assert (await agent.command(ccid, "speak", speak))[0] == 200
    assert call.said == ["One moment please"]
    await agent.wait_hook("call.speak.ended")
    assert agent.hook("call.speak.ended").payload["status"] == "completed"
    assert agent.events().index("call.speak.started") < agent.events().index("call.speak.ended")

    await call.send_dtmf("5")
    hook = await agent.wait_hook("call.dtmf.received")
    assert hook.payload["digit"] == "5" and hook.payload["call_control_id"] == ccid
    await call.wait_for(lambda: bool(session.of("dtmf")))
    frame = session.of("dtmf")[0][1]
    assert frame["dtmf"] == {"digit": "5"} and frame["stream_id"] == call.stream_id
    assert frame["sequence_number"].isdigit()
    assert call.dtmf_sent == ["5"]
    await call.hangup()


async def test_streaming_start_stop_after_plain_answer(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    agent.answer = {}
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    assert call.answered and not call.stream_ids
    ccid = call.call_control_id
    bad = {"stream_url": "https://agent.test/media"}
    assert (await agent.command(ccid, "streaming_start", bad))[0] == 422
    pcma = {"stream_url": f"wss://{HOST}/media", "stream_bidirectional_codec": "PCMA"}
    assert (await agent.command(ccid, "streaming_start", pcma))[0] == 422
    start = {"stream_url": f"wss://{HOST}/media", "stream_bidirectional_mode": "rtp"}
    assert (await agent.command(ccid, "streaming_start", start))[0] == 200
    session = await streaming(agent, call)
    assert (await agent.command(ccid, "streaming_stop", {}))[0] == 200
    await call.wait_for(lambda: session.close_code is not None)
    assert session.close_code == 1000 and session.msgs[-1][1]["event"] == "stop"
    await agent.wait_hook("streaming.stopped")
    assert not call.ended
    nowhere = {"stream_url": "wss://unrouted.example/media"}
    assert (await agent.command(ccid, "streaming_start", nowhere))[0] == 200
    failed = await agent.wait_hook("streaming.failed")
    assert failed.payload["failure_reason"] == "connection_failed"
    assert "stream_connect_failed" in call.error_codes
    await call.hangup()


async def test_retries_with_attempt_counter(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    tx.webhook_retry_delays = (0.05, 0.05)
    failures = {"left": 2}

    def status(hook: Hook) -> int:
        if hook.event == "call.initiated" and failures["left"]:
            failures["left"] -= 1
            return 500
        return 200

    agent.status = status
    call = await tx.place_call(from_=CALLER, to=NUMBER)
    initiated = [h for h in agent.hooks if h.event == "call.initiated"]
    assert [h.env["meta"]["attempt"] for h in initiated] == [1, 2, 3]
    assert len({h.env["data"]["id"] for h in initiated}) == 1
    assert all(h.verified for h in initiated)
    assert [w.status for w in tx.webhooks if w.event_type == "call.initiated"] == [500, 500, 200]
    assert call.stream_open
    agent.status = lambda hook: 503
    await call.hangup()
    assert "webhook_failed" in call.error_codes


async def test_duplicate_and_shuffled_delivery(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    tx.duplicate_webhooks = True
    tx.shuffle_webhooks = True
    tx.rng.seed(7)
    agent.answer = None
    placing = asyncio.create_task(tx.place_call(from_=CALLER, to=NUMBER, hangup_after=0.0))
    hook = await agent.wait_hook("call.initiated")
    await agent.command(hook.payload["call_control_id"], "answer", {"client_state": STATE})
    call = await placing
    await call.wait_ended()
    ids = [h.env["data"]["id"] for h in agent.hooks]
    assert len(ids) == 6 and all(ids.count(i) == 2 for i in ids)
    assert sorted(set(agent.events())) == ["call.answered", "call.hangup", "call.initiated"]


async def test_reject_and_unanswered_inbound(env: tuple[FakeTelnyx, Agent]) -> None:
    tx, agent = env
    agent.answer = None
    tx.ring_timeout_s = 0.3
    call = await tx.place_call(from_=CALLER, to=NUMBER)  # nobody answers: the caller gives up
    await call.wait_ended()
    assert (call.hangup_cause, call.hangup_source, call.status) == (
        "originator_cancel",
        "caller",
        "canceled",
    )
    tx.ring_timeout_s = 5.0
    placing = asyncio.create_task(tx.place_call(from_=CALLER, to=NUMBER))
    hook = await agent.wait_hook("call.initiated", within=2)
    while hook.payload["call_control_id"] == call.call_control_id:
        await asyncio.sleep(0.01)
        hook = [h for h in agent.hooks if h.event == "call.initiated"][-1]
    ccid = hook.payload["call_control_id"]
    status, body = await agent.command(ccid, "reject", {})
    assert status == 422 and body["errors"][0]["source"] == {"pointer": "/cause"}
    assert (await agent.command(ccid, "speak", {"payload": "hi", "voice": "male"}))[0] == 422
    assert (await agent.command(ccid, "reject", {"cause": "USER_BUSY"}))[0] == 200
    rejected = await placing
    await rejected.wait_ended()
    assert rejected.hangup_cause == "user_busy" and rejected.status == "busy"
    assert not rejected.answered and "call.answered" not in agent.events()

"""The fake Twilio phone network, tested against a tiny voice-agent server over real sockets.

The official `twilio` SDK is the oracle for signatures (RequestValidator) and for the REST
shapes (the SDK's async client pointed at the fake).
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from getpatter.testing.phone.audio import ulaw_decode, ulaw_encode
from getpatter.testing.twilio import FakeCall, FakeTwilio

NUMBER = "+15550001000"
CALLER = "+15557654321"
STREAM_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
    '<Stream url="wss://agent.test/media?token=x" name="agent">'
    '<Parameter name="tenant" value="acme"/></Stream></Connect></Response>'
)


class Session:
    """One media socket as the app sees it."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.msgs: list[tuple[float, dict[str, Any]]] = []
        self.stream_sid = ""
        self.started = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None

    def events(self) -> list[str]:
        return [m["event"] for _, m in self.msgs]

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def send_audio(self, ulaw: bytes, chunk: int = 1000) -> None:
        for i in range(0, len(ulaw), chunk):
            payload = base64.b64encode(ulaw[i : i + chunk]).decode()
            await self.send(
                {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
            )

    async def mark(self, name: str) -> None:
        await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def received_at(
        self, event: str, pred: Callable[[dict[str, Any]], bool] = lambda m: True
    ) -> float:
        return next(t for t, m in self.msgs if m["event"] == event and pred(m))


class Agent:
    """A voice-agent server: each path answers TwiML from `responses`; /media is the socket."""

    def __init__(self, tw: FakeTwilio) -> None:
        self.validator = RequestValidator(tw.auth_token)
        self.responses: dict[str, str] = {"voice": STREAM_TWIML}
        self.status_codes: dict[str, int] = {}
        self.hooks: list[tuple[str, dict[str, str], bool]] = []  # (path, params, signature ok)
        self.sessions: list[Session] = []
        self.session_added = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.on_start: Callable[[Session], Awaitable[None]] | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    def public_url(self, request: web.Request) -> str:
        return f"{request.headers['X-Forwarded-Proto']}://{request.host}{request.path_qs}"

    async def hook(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "media":
            return await self.media(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        sig = request.headers.get("X-Twilio-Signature", "")
        ok = self.validator.validate(self.public_url(request), form, sig)
        self.hooks.append((name, form, ok))
        status = self.status_codes.get(name, 200)
        return web.Response(
            text=self.responses.get(name, "<Response/>"), status=status, content_type="text/xml"
        )

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = Session(ws, request)
        self.sessions.append(session)
        self.session_added.set()
        loop = asyncio.get_running_loop()
        async for msg in ws:
            m = json.loads(msg.data)
            session.msgs.append((loop.time(), m))
            if m["event"] == "start":
                session.stream_sid = m["streamSid"]
                session.started.set()
                if self.on_start is not None:
                    self.tasks.append(asyncio.create_task(self.on_start(session)))
        session.close_code = ws.close_code
        session.closed.set()
        return ws

    def hooks_named(self, name: str) -> list[dict[str, str]]:
        return [form for n, form, _ in self.hooks if n == name]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{name}", self.hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def env() -> AsyncIterator[tuple[FakeTwilio, Agent]]:
    tw = FakeTwilio()
    await tw.start()
    agent = Agent(tw)
    await agent.start()
    tw.route("agent.test", f"127.0.0.1:{agent.port}")
    tw.add_number(
        NUMBER, voice_url="https://agent.test/voice", status_callback="https://agent.test/status"
    )
    try:
        yield tw, agent
    finally:
        await tw.stop()
        await agent.stop()


async def started(agent: Agent, index: int = 0) -> Session:
    async with asyncio.timeout(5):
        while len(agent.sessions) <= index:
            agent.session_added.clear()
            await agent.session_added.wait()
        await agent.sessions[index].started.wait()
    return agent.sessions[index]


def rest(tw: FakeTwilio, password: str | None = None) -> aiohttp.ClientSession:
    secret = password if password is not None else tw.auth_token
    token = base64.b64encode(f"{tw.account_sid}:{secret}".encode()).decode()
    base = f"{tw.base_url}/2010-04-01/Accounts/{tw.account_sid}/"
    return aiohttp.ClientSession(base_url=base, headers={"Authorization": f"Basic {token}"})


def test_ulaw_codec_matches_audioop() -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert ulaw_encode(x) == audioop.lin2ulaw(x.tobytes(), 2)
    every = bytes(range(256))
    assert ulaw_decode(every).tobytes() == audioop.ulaw2lin(every, 2)


async def test_inbound_call_signed_webhook_and_stream_protocol(
    env: tuple[FakeTwilio, Agent],
) -> None:
    tw, agent = env
    call = await tw.place_call(from_=CALLER, to=NUMBER)
    session = await started(agent)
    assert call.status == "in-progress" and call.direction == "inbound"
    (voice,) = agent.hooks_named("voice")
    assert agent.hooks[0][2], "voice webhook signature must validate"
    assert (
        voice["CallSid"] == call.call_sid
        and voice["CallSid"].startswith("CA")
        and len(voice["CallSid"]) == 34
    )
    assert voice["AccountSid"] == tw.account_sid
    assert (voice["From"], voice["To"], voice["Direction"]) == (CALLER, NUMBER, "inbound")
    assert voice["ApiVersion"] == "2010-04-01" and voice["CallStatus"] == "ringing"

    # query string dropped; upgrade signed over the wss url without params
    req = session.request
    assert req.path_qs == "/media"
    assert agent.validator.validate("wss://agent.test/media", {}, req.headers["X-Twilio-Signature"])

    await call.wait_for(lambda: len(session.msgs) >= 6)
    connected, start, *media = [m for _, m in session.msgs]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["sequenceNumber"] == "1" and start["streamSid"].startswith("MZ")
    assert start["start"] == {
        "streamSid": start["streamSid"],
        "accountSid": tw.account_sid,
        "callSid": call.call_sid,
        "tracks": ["inbound"],
        "customParameters": {"tenant": "acme"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    assert call.custom_parameters == {"tenant": "acme"} and call.stream_sid == start["streamSid"]
    for i, m in enumerate(media[:4]):
        assert m["event"] == "media" and m["streamSid"] == start["streamSid"]
        assert m["sequenceNumber"] == str(i + 2)
        assert m["media"]["track"] == "inbound"
        assert m["media"]["chunk"] == str(i + 1) and m["media"]["timestamp"] == str(i * 20)
        assert base64.b64decode(m["media"]["payload"]) == b"\xff" * 160  # silence

    await call.send_dtmf("5")
    await call.wait_for(lambda: "dtmf" in session.events())
    dtmf = next(m for _, m in session.msgs if m["event"] == "dtmf")
    assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "5"}

    await call.hangup()
    await asyncio.wait_for(session.closed.wait(), 5)
    assert session.close_code == 1000
    last = session.msgs[-1][1]
    assert last["event"] == "stop" and last["stop"] == {
        "accountSid": tw.account_sid,
        "callSid": call.call_sid,
    }
    seqs = [int(m["sequenceNumber"]) for _, m in session.msgs[1:]]
    assert seqs == list(range(1, len(seqs) + 1))  # +1 across every message type
    assert all(isinstance(m.get("sequenceNumber", ""), str) for _, m in session.msgs)

    assert call.status == "completed"
    (status,) = agent.hooks_named("status")
    assert status["CallStatus"] == "completed" and status["CallDuration"] == "0"
    assert status["CallbackSource"] == "call-progress-events"
    assert all(ok for _, _, ok in agent.hooks)


async def test_caller_audio_streams_at_real_time(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    audio = bytes(range(256)) * 25  # 6400 bytes = 40 frames, then silence
    await tw.place_call(from_=CALLER, to=NUMBER, audio=audio, hangup_after=1.5)
    session = await started(agent)
    await asyncio.wait_for(session.closed.wait(), 5)
    media = [(t, m) for t, m in session.msgs if m["event"] == "media"]
    assert len(media) >= 60
    payload = b"".join(base64.b64decode(m["media"]["payload"]) for _, m in media)
    assert payload[:6400] == audio and set(payload[6400:]) == {0xFF}
    elapsed = media[50][0] - media[0][0]
    assert elapsed == pytest.approx(1.0, abs=0.1)  # 50 frames of 20 ms


async def test_app_audio_plays_at_real_time_and_marks_wait_for_it(
    env: tuple[FakeTwilio, Agent],
) -> None:
    tw, agent = env
    tone = ulaw_encode((3000 * np.sin(np.arange(12000) * 0.3)).astype(np.int16))  # 1.5 s
    sent_at: dict[str, float] = {}

    async def speak(s: Session) -> None:
        await s.mark("nothing-queued")  # echoed at once
        sent_at["a"] = asyncio.get_running_loop().time()
        await s.send_audio(tone[:8000], chunk=333)
        await s.mark("a")
        await s.send_audio(tone[8000:])
        await s.mark("b")

    agent.on_start = speak
    call = await tw.place_call(from_=CALLER, to=NUMBER)
    session = await started(agent)
    t_b = await call.wait_for_mark("b", timeout=5)
    t_a = await call.wait_for_mark("a")
    assert call.marks_echoed == ["nothing-queued", "a", "b"]
    assert t_a - sent_at["a"] == pytest.approx(1.0, abs=0.1)
    assert t_b - sent_at["a"] == pytest.approx(1.5, abs=0.1)
    assert bytes(call.played) == tone
    assert np.array_equal(call.heard_audio(), ulaw_decode(tone))
    await call.wait_for(lambda: session.events().count("mark") == 3)
    marks = [m for _, m in session.msgs if m["event"] == "mark"]
    assert [m["mark"]["name"] for m in marks] == ["nothing-queued", "a", "b"]
    assert session.received_at("mark", lambda m: m["mark"]["name"] == "a") >= sent_at["a"] + 0.95


async def test_clear_drops_queue_and_returns_pending_marks(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    cleared_at: list[float] = []

    async def speak_then_clear(s: Session) -> None:
        await s.send_audio(b"\x10" * 16000)  # 2 s
        await s.mark("long")
        await asyncio.sleep(0.3)
        cleared_at.append(asyncio.get_running_loop().time())
        await s.send({"event": "clear", "streamSid": s.stream_sid})

    agent.on_start = speak_then_clear
    call = await tw.place_call(from_=CALLER, to=NUMBER)
    t_mark = await call.wait_for_mark("long", timeout=3)
    assert t_mark - cleared_at[0] < 0.05
    assert call.clears == 1
    played = len(call.played)
    assert 1600 <= played <= 3200  # ~0.3 s of the 2 s
    await asyncio.sleep(0.2)
    assert len(call.played) == played  # nothing more plays after clear


async def test_protocol_errors_are_recorded(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    call = await tw.place_call(from_=CALLER, to=NUMBER)
    s = await started(agent)
    await s.ws.send_str("{not json")
    await s.send({"event": "media", "streamSid": "MZwrong", "media": {"payload": "/w=="}})
    await s.send({"event": "media", "streamSid": s.stream_sid, "media": {"payload": "!!!"}})
    await s.ws.send_bytes(b"\xff" * 160)
    await s.send_audio(b"\x20" * 160)
    await call.wait_for(lambda: len(call.errors) == 4 and len(call.played) == 160)
    assert call.error_codes == [31951, 31951, 31951, 31950]
    assert [ev for _, ev, _ in call.received] == ["invalid", "media", "media", "binary", "media"]


async def test_rest_auth_and_errors(env: tuple[FakeTwilio, Agent]) -> None:
    tw, _ = env
    async with rest(tw, password="wrong") as http:
        resp = await http.get("Calls.json")
        assert resp.status == 401
        body = await resp.json()
        assert body["code"] == 20003 and body["status"] == 401 and "more_info" in body
    async with rest(tw) as http:
        resp = await http.get("Calls/CA" + "0" * 32 + ".json")
        assert resp.status == 404 and (await resp.json())["code"] == 20404
        resp = await http.post("Calls.json", data={"To": NUMBER, "From": CALLER})
        assert resp.status == 400 and (await resp.json())["code"] == 21205
        both = {
            "To": NUMBER,
            "From": CALLER,
            "Url": "https://agent.test/voice",
            "Twiml": "<Response/>",
        }
        resp = await http.post("Calls.json", data=both)
        assert resp.status == 400
        resp = await http.post(
            "Calls.json", data=b"\x00garbage", headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400 and (await resp.json())["code"] == 21201
        resp = await http.delete("Calls.json")
        assert resp.status == 405 and (await resp.json())["status"] == 405


async def test_outbound_human_with_async_amd(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    callee = "+15551112222"
    tw.set_callee(callee, answer="human", answer_delay=0.1)
    form = [
        ("To", callee),
        ("From", NUMBER),
        ("Url", "https://agent.test/voice"),
        ("StatusCallback", "https://agent.test/status"),
        *[("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered", "completed")],
        ("MachineDetection", "DetectMessageEnd"),
        ("AsyncAmd", "true"),
        ("AsyncAmdStatusCallback", "https://agent.test/amd"),
    ]
    async with rest(tw) as http:
        resp = await http.post("Calls.json", data=form)
        assert resp.status == 201
        body = await resp.json()
    assert body["status"] == "queued" and body["direction"] == "outbound-api"
    assert body["sid"].startswith("CA") and body["api_version"] == "2010-04-01"
    call = tw.calls[body["sid"]]
    session = await started(agent)
    await call.wait_for(lambda: bool(agent.hooks_named("amd")))
    (amd,) = agent.hooks_named("amd")
    assert (
        amd["AnsweredBy"] == "human"
        and amd["CallSid"] == call.call_sid
        and "MachineDetectionDuration" in amd
    )
    voice = agent.hooks_named("voice")[0]
    assert voice["Direction"] == "outbound-api" and "AnsweredBy" not in voice  # async: not on Url

    async with rest(tw) as http:
        resp = await http.post(f"Calls/{call.call_sid}.json", data={"Status": "completed"})
        assert resp.status == 200 and (await resp.json())["status"] == "completed"
    await call.wait_ended()
    assert session.close_code == 1000 and session.events()[-1] == "stop"
    statuses = [h["CallStatus"] for h in agent.hooks_named("status")]
    assert statuses == ["initiated", "ringing", "in-progress", "completed"]
    assert [h["SequenceNumber"] for h in agent.hooks_named("status")] == ["0", "1", "2", "3"]
    assert all(ok for _, _, ok in agent.hooks)


async def test_outbound_machine_sync_amd_reports_on_url(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    tw.set_callee("+15553334444", answer="machine", machine_greeting_s=0.3)
    form = {
        "To": "+15553334444",
        "From": NUMBER,
        "Url": "https://agent.test/voice",
        "MachineDetection": "DetectMessageEnd",
    }
    async with rest(tw) as http:
        sid = (await (await http.post("Calls.json", data=form)).json())["sid"]
    await started(agent)
    voice = agent.hooks_named("voice")[0]
    assert (
        voice["AnsweredBy"] == "machine_end_beep" and int(voice["MachineDetectionDuration"]) >= 290
    )
    assert tw.calls[sid].answered_by == "machine_end_beep"


@pytest.mark.parametrize("answer", ["busy", "no-answer", "failed"])
async def test_outbound_unanswered(env: tuple[FakeTwilio, Agent], answer: Any) -> None:
    tw, agent = env
    tw.set_callee("+15559990000", answer=answer)
    form = {
        "To": "+15559990000",
        "From": NUMBER,
        "Twiml": STREAM_TWIML,
        "Timeout": "1",
        "StatusCallback": "https://agent.test/status",
    }
    async with rest(tw) as http:
        sid = (await (await http.post("Calls.json", data=form)).json())["sid"]
    call = tw.calls[sid]
    t0 = asyncio.get_running_loop().time()
    await call.wait_ended(5)
    took = asyncio.get_running_loop().time() - t0
    assert call.status == answer and not agent.sessions
    assert [h["CallStatus"] for h in agent.hooks_named("status")] == [answer]
    assert took == (
        pytest.approx(1.0, abs=0.2) if answer == "no-answer" else pytest.approx(0, abs=0.2)
    )


async def test_redirect_with_dial_is_a_transfer(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    call = await tw.place_call(from_=CALLER, to=NUMBER)
    session = await started(agent)
    async with rest(tw) as http:
        twiml = "<Response><Dial>+15550009999</Dial></Response>"
        resp = await http.post(f"Calls/{call.call_sid}.json", data={"Twiml": twiml})
        assert resp.status == 200
    await asyncio.wait_for(session.closed.wait(), 5)
    assert session.close_code == 1000 and session.events()[-1] == "stop"
    await call.wait_for(lambda: call.transfers == ["+15550009999"])
    assert call.status == "in-progress"  # bridged to the transfer target
    await call.hangup()
    assert call.status == "completed"


async def test_redirect_url_say_then_hangup(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    agent.responses["bye"] = "<Response><Say>Goodbye</Say><Hangup/></Response>"
    call = await tw.place_call(from_=CALLER, to=NUMBER)
    await started(agent)
    async with rest(tw) as http:
        await http.post(f"Calls/{call.call_sid}.json", data={"Url": "https://agent.test/bye?x=1"})
    await call.wait_ended()
    assert call.said == ["Goodbye"] and call.status == "completed"
    assert any(n == "bye" and ok for n, _, ok in agent.hooks)  # signed with the query string


@pytest.mark.parametrize(
    ("twiml", "status", "code"),
    [
        (
            '<Response><Connect><Stream url="ws://agent.test/media"/></Connect></Response>',
            200,
            31941,
        ),
        (STREAM_TWIML, 500, 11200),
        ("<Response><Conect/></Response>", 200, 12100),
    ],
)
async def test_bad_twiml_fails_the_call(
    env: tuple[FakeTwilio, Agent], twiml: str, status: int, code: int
) -> None:
    tw, agent = env
    agent.responses["voice"] = twiml
    agent.status_codes["voice"] = status
    call = await tw.place_call(from_=CALLER, to=NUMBER)
    await call.wait_ended()
    assert call.status == "failed" and call.error_codes == [code] and not agent.sessions


async def test_numbers_and_recordings_over_rest(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    async with rest(tw) as http:
        listing = await (
            await http.get("IncomingPhoneNumbers.json", params={"PhoneNumber": NUMBER})
        ).json()
        (num,) = listing["incoming_phone_numbers"]
        assert num["voice_url"] == "https://agent.test/voice" and num["sid"].startswith("PN")
        upd = await http.post(
            f"IncomingPhoneNumbers/{num['sid']}.json",
            data={"VoiceUrl": "https://agent.test/voice2"},
        )
        assert (await upd.json())["voice_url"] == "https://agent.test/voice2"
        agent.responses["voice2"] = STREAM_TWIML
        call = await tw.place_call(from_=CALLER, to=NUMBER)
        assert agent.hooks[0][0] == "voice2"
        form = {"RecordingStatusCallback": "https://agent.test/rec"}
        rec = await http.post(f"Calls/{call.call_sid}/Recordings.json", data=form)
        assert rec.status == 201
        body = await rec.json()
        assert body["sid"].startswith("RE") and body["status"] == "in-progress"
        await call.hangup()
        listing = await (await http.get(f"Calls/{call.call_sid}/Recordings.json")).json()
        assert [r["status"] for r in listing["recordings"]] == ["completed"]
        assert listing["page"] == 0 and listing["next_page_uri"] is None
    (cb,) = agent.hooks_named("rec")
    assert cb["RecordingSid"] == body["sid"] and cb["RecordingStatus"] == "completed"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's own aiohttp usage
async def test_official_sdk_against_the_fake(env: tuple[FakeTwilio, Agent]) -> None:
    """The real SDK parses the fake's REST answers (create, fetch, list, update)."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    tw, agent = env
    http = AsyncTwilioHttpClient()
    client = Client(tw.account_sid, tw.auth_token, http_client=http)
    client.api.base_url = tw.base_url
    try:
        created = await client.calls.create_async(
            to="+15551230000",
            from_=NUMBER,
            url="https://agent.test/voice",
            status_callback_event=["answered", "completed"],
        )
        assert created.status == "queued" and created.direction == "outbound-api"
        call: FakeCall = tw.calls[created.sid]
        await started(agent)
        fetched = await client.calls(created.sid).fetch_async()
        assert fetched.status == "in-progress"
        rec = await client.calls(created.sid).recordings.create_async()
        assert rec.sid.startswith("RE")
        listed = await client.calls(created.sid).recordings.list_async()
        assert [r.sid for r in listed] == [rec.sid]
        updated = await client.calls(created.sid).update_async(status="completed")
        assert updated.status == "completed" and call.ended
        numbers = await client.incoming_phone_numbers.list_async(phone_number=NUMBER)
        assert [n.phone_number for n in numbers] == [NUMBER]
    finally:
        await http.close()
    posted = next(r for r in tw.requests if r.method == "POST" and r.path.endswith("/Calls.json"))
    assert posted.form_multi["StatusCallbackEvent"] == ["answered", "completed"]


async def test_get_webhook_start_fork_and_wav_audio(
    env: tuple[FakeTwilio, Agent], tmp_path: Any
) -> None:
    """GET voice url (signed with the params in the query), a <Start><Stream> fork that only
    listens while the TwiML goes on, and caller audio from a 16 kHz WAV file."""
    tw, agent = env
    (num,) = tw.numbers.values()
    num.voice_method = "GET"
    agent.responses["voice"] = (
        '<Response><Start><Stream url="wss://agent.test/media"/></Start>'
        '<Say>Hello <break time="1s"/>there</Say><Pause length="0.3"/><Hangup/></Response>'
    )
    path = tmp_path / "caller.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((8000 * np.sin(np.arange(3200) * 0.2)).astype("<i2").tobytes())  # 0.2 s

    async def talk_over(s: Session) -> None:
        await s.send_audio(b"\x10" * 800)  # a fork does not play anything

    agent.on_start = talk_over
    call = await tw.place_call(from_=CALLER, to=NUMBER, audio=path)
    await call.wait_ended()
    assert call.status == "completed" and call.said == ["Hello there"]
    (voice,) = agent.hooks_named("voice")
    assert voice == {} and agent.hooks[0][2]  # GET: params in the signed query string
    assert tw.webhooks[0].method == "GET" and "CallSid=" in tw.webhooks[0].url
    session = agent.sessions[0]
    await asyncio.wait_for(session.closed.wait(), 5)
    assert session.close_code == 1000 and session.events()[-1] == "stop"
    assert call.played == bytearray()
    media = [
        base64.b64decode(m["media"]["payload"]) for _, m in session.msgs if m["event"] == "media"
    ]
    assert sum(frame != b"\xff" * 160 for frame in media) == 10  # 0.2 s resampled to 8 kHz


async def test_unrouted_host_and_bad_attribute(env: tuple[FakeTwilio, Agent]) -> None:
    tw, agent = env
    tw.add_number("+15550002000", voice_url="https://nowhere.example/voice")
    call = await tw.place_call(from_=CALLER, to="+15550002000")
    assert call.status == "failed" and call.error_codes == [11200]
    assert tw.webhooks[-1].status is None and "not routed" in (tw.webhooks[-1].error or "")
    agent.responses["voice"] = '<Response><Pause length="soon"/></Response>'
    call = await tw.place_call(from_=CALLER, to=NUMBER)
    await call.wait_ended()
    assert call.status == "failed" and call.error_codes == [12200]


async def test_outbound_from_must_be_ours(env: tuple[FakeTwilio, Agent]) -> None:
    tw, _ = env
    form = {"To": "+15551112222", "From": "+15550000000", "Url": "https://agent.test/voice"}
    async with rest(tw) as http:
        resp = await http.post("Calls.json", data=form)
        assert resp.status == 400 and (await resp.json())["code"] == 21210
        resp = await http.post("Calls.json", data={**form, "From": NUMBER, "To": "12345"})
        assert resp.status == 400 and (await resp.json())["code"] == 21211
    assert not tw.calls

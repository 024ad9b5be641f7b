"""The fake Plivo against Plivo's documentation, driven by a bare aiohttp app (not getpatter):
REST auth and error shapes, V3 signatures checked by Plivo's own SDK, `<Stream>` attributes
(keepCallAlive, contentType), and checkpoints / clearAudio on the audio stream."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from plivo.utils.signature_v3 import validate_v3_signature

from getpatter.testing.plivo import FakePlivo

NUMBER = "+15550001000"
CALLER = "+15557654321"
HOST = "app.example.test"


class App:
    """A bare Plivo app: answers with `xml` (its `{ws}` filled in), runs `on_socket`."""

    def __init__(self) -> None:
        self.xml = (
            '<Response><Stream bidirectional="true" keepCallAlive="true">{ws}</Stream></Response>'
        )
        self.forms: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.on_socket: Callable[[web.WebSocketResponse], Any] | None = None
        self.port = 0

    async def answer(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append((request.path_qs, form, dict(request.headers)))
        xml = self.xml.replace("{ws}", f"wss://{HOST}/ws")
        return web.Response(text=xml, content_type="application/xml")

    async def hook(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append((request.path_qs, form, dict(request.headers)))
        return web.Response(text="ok")

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.on_socket is not None:
            await self.on_socket(ws)
        async for _ in ws:
            pass
        return ws


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
async def plivo() -> AsyncIterator[tuple[FakePlivo, App]]:
    app = App()
    web_app = web.Application()
    web_app.router.add_post("/answer", app.answer)
    web_app.router.add_post("/hangup", app.hook)
    web_app.router.add_get("/ws", app.ws)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app.port = int(runner.addresses[0][1])
    async with FakePlivo() as pl:
        pl.route(HOST, f"127.0.0.1:{app.port}")
        pl.add_number(NUMBER, f"https://{HOST}/answer", f"https://{HOST}/hangup")
        yield pl, app
    await runner.cleanup()


async def test_rest_needs_basic_auth_and_answers_errors_as_plivo_does(
    plivo: tuple[FakePlivo, App],
) -> None:
    pl, _ = plivo
    base = f"{pl.base_url}/v1/Account/{pl.auth_id}"
    good = basic(pl.auth_id, pl.auth_token)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/Call/", json={}, headers=basic(pl.auth_id, "x")) as r:
            body = await r.json()
            assert r.status == 401 and set(body) == {"api_id", "error"}
        async with http.post(f"{base}/Call", json={}, headers=good) as r:
            assert r.status == 404  # Plivo's paths end with a slash
        async with http.post(
            f"{base}/Call/", json={"from": NUMBER[1:], "to": "1555"}, headers=good
        ) as r:
            assert r.status == 400 and "error" in await r.json()
        call = {"from": "15559999999", "to": "15550002222", "answer_url": "https://x.test/a"}
        async with http.post(f"{base}/Call/", json=call, headers=good) as r:
            assert r.status == 400  # `from` must be a number on the account
        async with http.delete(f"{base}/Call/no-such-call/", headers=good) as r:
            assert r.status == 404 and "error" in await r.json()
        call["from"] = NUMBER[1:]
        async with http.post(f"{base}/Call/", json=call, headers=good) as r:
            fired = await r.json()
            assert r.status == 201 and fired["message"] == "call fired" and fired["request_uuid"]


async def test_webhooks_carry_signatures_plivos_sdk_accepts(plivo: tuple[FakePlivo, App]) -> None:
    pl, app = plivo
    call = await pl.place_call(from_=CALLER, to=NUMBER)
    await call.wait_stream()
    await call.hangup()
    assert [path for path, _, _ in app.forms] == ["/answer", "/hangup"]
    for path, form, headers in app.forms:
        assert form["From"] == CALLER[1:] and form["To"] == NUMBER[1:]  # digits, no '+'
        assert validate_v3_signature(
            "POST",
            f"https://{HOST}{path}",
            headers["X-Plivo-Signature-V3-Nonce"],
            pl.auth_token,
            headers["X-Plivo-Signature-V3"],
            dict(form),
        )
    assert app.forms[1][1]["CallStatus"] == "completed"


async def test_a_stream_that_does_not_keep_the_call_alive_ends_it(
    plivo: tuple[FakePlivo, App],
) -> None:
    pl, app = plivo
    app.xml = '<Response><Stream bidirectional="true">{ws}</Stream></Response>'
    call = await pl.place_call(from_=CALLER, to=NUMBER)
    await call.wait_ended(5)
    assert call.status == "completed" and call.hangup_source == "Answer XML"


async def test_the_default_content_type_is_linear_pcm(plivo: tuple[FakePlivo, App]) -> None:
    pl, app = plivo
    got: list[dict[str, Any]] = []

    async def read(ws: web.WebSocketResponse) -> None:
        for _ in range(3):
            got.append(json.loads((await ws.receive()).data))

    app.on_socket = read
    call = await pl.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: len(got) == 3, 3)
    assert got[0]["event"] == "start" and got[0]["sequenceNumber"] == 1
    assert got[0]["start"]["mediaFormat"] == {"encoding": "audio/x-l16", "sampleRate": 8000}
    assert len(base64.b64decode(got[1]["media"]["payload"])) == 320  # 20 ms of 16-bit PCM
    assert int(got[2]["media"]["timestamp"]) - int(got[1]["media"]["timestamp"]) == 20
    await call.hangup()


async def test_checkpoints_wait_for_playout_and_clear_drops_them(
    plivo: tuple[FakePlivo, App],
) -> None:
    pl, app = plivo
    app.xml = app.xml.replace(
        "keepCallAlive", 'contentType="audio/x-mulaw;rate=8000" keepCallAlive'
    )
    events: list[tuple[float, dict[str, Any]]] = []

    async def talk(ws: web.WebSocketResponse) -> None:
        loop = asyncio.get_running_loop()
        start = json.loads((await ws.receive()).data)
        sid = start["start"]["streamId"]
        second = base64.b64encode(b"\x00" * 8000).decode()  # 1 s of loud μ-law
        media = {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": second}
        sent = loop.time()
        await ws.send_json({"event": "playAudio", "media": media})
        await ws.send_json({"event": "checkpoint", "streamId": sid, "name": "one"})
        while True:
            msg = json.loads((await ws.receive()).data)
            if msg["event"] != "media":
                events.append((loop.time() - sent, msg))
            if msg["event"] == "playedStream":
                break
        await ws.send_json({"event": "playAudio", "media": media})
        await ws.send_json({"event": "checkpoint", "streamId": sid, "name": "two"})
        await asyncio.sleep(0.2)
        await ws.send_json({"event": "clearAudio", "streamId": sid})
        while True:
            msg = json.loads((await ws.receive()).data)
            if msg["event"] != "media":
                events.append((loop.time() - sent, msg))
            if msg["event"] == "clearedAudio":
                break

    app.on_socket = talk
    call = await pl.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: any(m["event"] == "clearedAudio" for _, m in events), 5)
    await asyncio.sleep(1.0)  # a dropped checkpoint is never reported
    assert [m["event"] for _, m in events] == ["playedStream", "clearedAudio"]
    assert events[0][1]["name"] == "one" and events[0][0] >= 0.95  # after the audio played
    assert call.marks_echoed == ["one"] and call.clears == 1
    assert 1.1 * 8000 < len(call.played) < 1.4 * 8000  # the second second was cut short
    await call.hangup()

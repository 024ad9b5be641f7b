"""The dashboard's page and JSON API over HTTP: auth, live calls, the event stream, exports,
and that no secret ever leaves through it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import pytest

from getpatter import Patter, Twilio
from getpatter.core.pricing import load_pricing
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.providers import ScriptedSTT, ScriptedTTS
from getpatter.testing.twilio import FakeCall, FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech

Serve = Callable[..., Any]
TOKEN = "dash-token-0123456789"
ROUTES = [
    "/dashboard",
    "/api/calls",
    "/api/calls/active",
    "/api/calls/CA123",
    "/api/calls.csv",
    "/api/calls.json",
    "/api/events",
]


def base(s: Any) -> str:
    return f"http://127.0.0.1:{s.phone.port}"


async def get(url: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.get(url, allow_redirects=False, **kwargs) as r,
    ):
        return r.status, dict(r.headers), await r.text()


async def wait_until(pred: Callable[[], bool], limit: float = 10.0) -> None:
    for _ in range(int(limit / 0.05)):
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def a_call(
    net: FakeTwilio, s: Any, *, hang_up: bool = True, audio: np.ndarray | None = None
) -> FakeCall:
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    await call.wait_for(lambda: call.stream_open, 5)
    if hang_up:
        await asyncio.sleep(1.0)
        await call.hangup()
        await wait_until(lambda: bool(s.events.get("on_call_end")))
    return call


async def test_open_on_loopback_without_a_token(serve: Serve, net: FakeTwilio) -> None:
    s = await serve({"engine": ScriptedEngine(), "first_message": "Hello!"})
    status, headers, html = await get(base(s) + "/dashboard")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<svg" in html and "EventSource" in html
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"?https?:", html)  # no CDN
    csp = headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'nonce="{nonce.group(1)}"' in html and "__NONCE__" not in html
    assert "frame-ancestors 'none'" in csp and headers["Referrer-Policy"] == "no-referrer"
    call = await a_call(net, s)
    status, _, body = await get(base(s) + "/api/calls")
    data = json.loads(body)
    assert status == 200 and data["total"] == 1 and data["page"] == 1 and data["pages"] == 1
    [row] = data["calls"]
    assert row["call_id"] == call.call_sid and row["caller"] == CALLER
    assert row["end_reason"] == "hangup" and row["pricing_version"] == load_pricing().version
    status, _, body = await get(base(s) + f"/api/calls/{call.call_sid}")
    detail = json.loads(body)
    assert detail["active"] is False and detail["transcript"][0]["text"] == "Hello!"
    assert detail["metrics"]["cost"]["telephony"] > 0 and detail["events"]
    assert (await get(base(s) + "/api/calls/CA-none"))[0] == 404
    assert (await get(base(s) + "/api/calls?page_size=lots"))[0] == 400


async def test_without_a_token_only_this_machines_names_are_answered(serve: Serve) -> None:
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 sends
    `Host: evil.example:<port>`; it must read nothing."""
    s = await serve({"engine": ScriptedEngine()})
    port = s.phone.port
    for route in ROUTES:
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            status, _, body = await get(base(s) + route, headers={"Host": host})
            assert status == 421, (route, host, status)
            assert "dashboard_token" in body
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost", HOST):
        status, _, _ = await get(base(s) + "/api/calls", headers={"Host": host})
        assert status == 200, host
    status, _, _ = await get(base(s) + "/health", headers={"Host": "evil.example"})
    assert status == 200  # the dashboard's rule, not the carrier's routes


async def test_with_a_token_the_token_decides_whatever_the_host(serve: Serve) -> None:
    s = await serve({"engine": ScriptedEngine()}, dashboard_token=TOKEN)
    headers = {"Host": "dashboard.example.org", "Authorization": f"Bearer {TOKEN}"}
    assert (await get(base(s) + "/api/calls", headers=headers))[0] == 200
    assert (await get(base(s) + "/api/calls", headers={"Host": "x.example"}))[0] == 401


async def test_every_route_needs_the_token(serve: Serve, net: FakeTwilio) -> None:
    s = await serve({"engine": ScriptedEngine()}, dashboard_token=TOKEN)
    for route in ROUTES:
        status, _, body = await get(base(s) + route)
        assert status == 401, route
        assert TOKEN not in body
        status, _, _ = await get(base(s) + route, headers={"Authorization": "Bearer wrong"})
        assert status == 401, route
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for route in ROUTES:
        if route in ("/api/calls/CA123", "/api/events"):
            continue
        status, _, _ = await get(base(s) + route, headers=bearer)
        assert status == 200, route
    assert (await get(base(s) + "/api/calls/CA123", headers=bearer))[0] == 404
    # a token in the query string is refused by the JSON routes (it would end up in logs)
    assert (await get(base(s) + f"/api/calls?token={TOKEN}"))[0] == 401


async def test_query_token_sets_an_httponly_cookie_for_the_page_and_events(
    serve: Serve, net: FakeTwilio
) -> None:
    s = await serve({"engine": ScriptedEngine()}, dashboard_token=TOKEN)
    assert (await get(base(s) + "/dashboard?token=nope"))[0] == 401
    status, headers, _ = await get(base(s) + f"/dashboard?token={TOKEN}")
    assert status == 303 and headers["Location"] == "/dashboard"  # the token leaves the URL
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    for route in ("/dashboard", "/api/calls", "/api/calls.csv"):
        assert (await get(base(s) + route, headers={"Cookie": value}))[0] == 200, route
    assert (await get(base(s) + "/api/calls", headers={"Cookie": "getpatter_dashboard=x"}))[
        0
    ] == 401
    async with (
        aiohttp.ClientSession() as http,
        http.get(base(s) + f"/api/events?token={TOKEN}") as r,
    ):
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert "HttpOnly" in r.headers["Set-Cookie"]
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
        assert first.startswith(b"retry:")


async def test_a_token_is_generated_and_logged_beyond_loopback(
    net: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    phone = Patter(
        carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=False,
    )
    with caplog.at_level(logging.WARNING, logger="getpatter.core.server"):
        task = asyncio.create_task(
            phone.serve(phone.agent(engine=ScriptedEngine()), port=0, host="0.0.0.0")
        )
        try:
            await asyncio.wait_for(phone.ready, 5)
            lines = [r.getMessage() for r in caplog.records if "dashboard token" in r.getMessage()]
            assert len(lines) == 1
            token = re.search(r"token=(\S+)", lines[0])
            assert token is not None
            url = f"http://127.0.0.1:{phone.port}/api/calls"
            assert (await get(url))[0] == 401
            bearer = {"Authorization": f"Bearer {token.group(1)}"}
            assert (await get(url, headers=bearer))[0] == 200
        finally:
            await phone.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


async def test_dashboard_off_serves_nothing(serve: Serve, net: FakeTwilio) -> None:
    s = await serve({"engine": ScriptedEngine()}, dashboard=False)
    for route in ROUTES:
        assert (await get(base(s) + route))[0] == 404, route
    assert (await get(base(s) + "/health"))[0] == 200


async def test_live_calls_and_the_event_stream(serve: Serve, net: FakeTwilio) -> None:
    s = await serve({"engine": ScriptedEngine(replies=["Sure."]), "first_message": "Hello!"})
    events: list[tuple[str, Any]] = []

    async def listen() -> None:
        async with aiohttp.ClientSession() as http, http.get(base(s) + "/api/events") as r:
            kind = ""
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))

    listener = asyncio.create_task(listen())
    try:
        await wait_until(lambda: any(k == "active" for k, _ in events))
        assert next(d for k, d in events if k == "active") == {"calls": []}
        call = await a_call(net, s, hang_up=False)
        await wait_until(
            lambda: any(k == "active" and d["calls"] for k, d in events)  # the call, live
        )
        live = next(d["calls"][0] for k, d in events if k == "active" and d["calls"])
        assert live["call_id"] == call.call_sid and live["caller"] == CALLER
        assert live["state"] in ("pending", "live") and "cost_total" in live
        _, _, body = await get(base(s) + "/api/calls/active")
        assert json.loads(body)["calls"][0]["call_id"] == call.call_sid
        _, _, body = await get(base(s) + f"/api/calls/{call.call_sid}")
        assert json.loads(body)["active"] is True
        calls_before = sum(1 for k, _ in events if k == "calls")
        await call.hangup()
        await wait_until(lambda: sum(1 for k, _ in events if k == "calls") > calls_before)
        await wait_until(lambda: ("active", {"calls": []}) in events[-3:])  # gone from live
    finally:
        await s.phone.disconnect()  # the stream ends with the server, promptly
        await asyncio.wait_for(listener, 5)


async def test_exports_and_no_secret_ever_leaves(serve: Serve, net: FakeTwilio) -> None:
    leak = net.auth_token  # a carrier credential the agent is (wrongly) made to say

    s = await serve(
        {"stt": ScriptedSTT(["hello"]), "tts": ScriptedTTS(), "first_message": "Hi."},
        on_message=lambda msg: f"The key is {leak}.",
    )
    call = await net.place_call(
        from_=CALLER, to=NUMBER, audio=np.concatenate([speech(lead=1.0, tail=2.5)])
    )
    await wait_until(lambda: len(s.events.get("on_transcript", [])) >= 3)
    status, _, live = await get(base(s) + f"/api/calls/{call.call_sid}")
    assert status == 200 and "The key is ***." in live and leak not in live
    await call.hangup()
    await wait_until(lambda: bool(s.events.get("on_call_end")))
    assert leak in json.dumps(s.events["on_call_end"][0])  # the user's own callback sees it all
    bodies = []
    for route in ("/api/calls", f"/api/calls/{call.call_sid}", "/api/calls.json", "/dashboard"):
        status, _, body = await get(base(s) + route)
        assert status == 200
        bodies.append(body)
    status, headers, csv_text = await get(base(s) + "/api/calls.csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert "attachment" in headers["Content-Disposition"]
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("call_id,caller,callee") and len(lines) == 2
    assert "'+15557654321" in lines[1]  # quoted so a spreadsheet won't run it as a formula
    exported = json.loads(bodies[2])["calls"]
    assert exported[0]["transcript"][2]["text"] == "The key is ***."
    for body in [*bodies, csv_text]:
        assert leak not in body and s.phone.config.twilio_token not in body
    status, _, body = await get(base(s) + "/api/calls.csv?q=nothing-like-this")
    assert body.strip().count("\n") == 0


async def test_phone_numbers_masked_when_asked(net: FakeTwilio) -> None:
    phone = Patter(
        carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=False,
        mask_phone_numbers=True,
    )
    task = asyncio.create_task(
        phone.serve(phone.agent(engine=ScriptedEngine()), port=0, host="127.0.0.1")
    )
    try:
        await asyncio.wait_for(phone.ready, 5)
        net.route(HOST, f"127.0.0.1:{phone.port}")
        call = await net.place_call(from_=CALLER, to=NUMBER)
        await call.wait_for(lambda: call.stream_open, 5)
        url = f"http://127.0.0.1:{phone.port}"
        _, _, active = await get(url + "/api/calls/active")
        assert CALLER not in active and "+1******4321" in active
        await call.hangup()
        await asyncio.sleep(0.3)
        _, _, listed = await get(url + "/api/calls")
        assert CALLER not in listed and NUMBER not in listed and "+1******4321" in listed
    finally:
        await phone.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)

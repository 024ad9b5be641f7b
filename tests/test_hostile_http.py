"""What strangers on the network can make the HTTP side of the server do: compressed bodies,
idle and slow connections, connection floods. Over raw sockets against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from app_process import running_app

from getpatter.agent import Agent
from getpatter.config import LocalConfig
from getpatter.core.connections import AcceptErrorLog, connection_limit
from getpatter.core.server import EmbeddedServer
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech

GZIP_BOMB = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MB of zeros, ~64 KB


@pytest.fixture
async def net() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as tw:
        tw.add_number(NUMBER, voice_url=f"https://{HOST}/webhooks/twilio/voice")
        yield tw


@contextlib.asynccontextmanager
async def served(net: FakeTwilio, **attrs: Any) -> AsyncIterator[EmbeddedServer]:
    """An EmbeddedServer for the fake network, with some of its limits changed."""
    config = LocalConfig(
        twilio_sid=net.account_sid,
        twilio_token=net.auth_token,
        twilio_base_url=net.base_url,
        phone_number=NUMBER,
        webhook_url=HOST,
    )
    server = EmbeddedServer(config, Agent(engine=ScriptedEngine(), first_message="Hello there."))
    server.handle_signals = False
    for name, value in attrs.items():
        setattr(server, name, value)
    task = asyncio.create_task(server.start(0))
    await asyncio.wait_for(server.listening, 5)
    net.route(HOST, f"127.0.0.1:{server.port}")
    try:
        yield server
    finally:
        await server.stop()
        await asyncio.wait_for(task, 5)


async def raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Whatever the server sends until it closes the connection (fails if it does not)."""
    return await asyncio.wait_for(reader.read(), within)


def post_head(path: str, length: int, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {length}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- compressed bodies ------------------------------------------------------------------------


async def test_a_compressed_body_is_refused_before_it_is_read(net: FakeTwilio) -> None:
    async with served(net) as server:
        for path in ("/webhooks/twilio/voice", "/health", "/no/such/route"):
            reader, writer = await raw(server.port or 0)
            head = post_head(
                path,
                len(GZIP_BOMB),
                Content_Type="application/x-www-form-urlencoded",
                Content_Encoding="gzip",
            )
            writer.write(head + GZIP_BOMB[:1024])  # most of the body is never sent
            answer = await closed_by_server(reader, 5)
            assert answer.startswith(b"HTTP/1.1 415"), (path, answer[:80])
            writer.close()
        # and nothing else changed: a plain call still works
        call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=0.3))
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, 8)
        await call.hangup()


async def test_identity_encoding_is_fine(net: FakeTwilio) -> None:
    async with served(net) as server:
        reader, writer = await raw(server.port or 0)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Encoding: identity\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()


# --- idle and slow connections ----------------------------------------------------------------


async def test_idle_and_slowloris_connections_are_closed(net: FakeTwilio) -> None:
    async with served(net, header_timeout=0.5) as server:
        idle_reader, idle = await raw(server.port or 0)
        slow_reader, slow = await raw(server.port or 0)
        slow.write(b"POST /webhooks/twilio/voice HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:  # a header byte every 100 ms, never finishing
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    slow.write(b"X")
                    await slow.drain()
                    await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        try:
            assert await closed_by_server(idle_reader, 5) == b""
            await closed_by_server(slow_reader, 5)
        finally:
            trickling.cancel()
            idle.close()
            slow.close()
        assert server._guard is not None and server._guard.timed_out >= 2


async def test_a_slow_body_gets_408(net: FakeTwilio) -> None:
    async with served(net, request_timeout=0.5) as server:
        reader, writer = await raw(server.port or 0)
        form = "application/x-www-form-urlencoded"
        writer.write(post_head("/webhooks/twilio/voice", 1000, Content_Type=form) + b"CallSid=CA")
        answer = await closed_by_server(reader, 5)
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()


# --- floods -----------------------------------------------------------------------------------


async def test_over_the_limit_idle_connections_give_way_to_calls(net: FakeTwilio) -> None:
    async with served(net, max_connections=20) as server:
        assert server._guard is not None
        idle = [await raw(server.port or 0) for _ in range(60)]
        await asyncio.sleep(0.2)
        assert len(server._guard) <= 20 + server._guard.reserve
        call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=0.3))
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, 8)  # answered, and heard
        assert not call.errors, call.errors
        assert server._guard.evicted >= 40
        await call.hangup()
        for _, writer in idle:
            writer.close()


@pytest.mark.parametrize("hard", [200, 300])
async def test_the_fd_limit_is_raised_and_idle_sockets_cannot_exhaust_it(
    net: FakeTwilio, tmp_path: Path, hard: int
) -> None:
    """A process that may open 200 files (300 once raised): 400 idle sockets, then a call."""
    async with running_app(net, tmp_path / "history", fd_limits=(200, hard)) as app:
        assert app.fd_limit == hard  # raised to the hard limit at start
        idle = []
        for _ in range(400):
            with contextlib.suppress(OSError):
                idle.append(await raw(app.port))
        call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=0.3))
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, 10)
        assert not call.errors, call.errors
        await call.hangup()
        for _, writer in idle:
            writer.close()
        await call.wait_ended(5)
    exhausted = [line for line in app.log if "out of system resource" in line]
    assert not exhausted, exhausted[:3]
    assert len(app.log) < 50, app.log[:50]


async def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    limiter = AcceptErrorLog(every=60)
    limiter.install(loop)
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(500):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    }
                )
    finally:
        limiter.uninstall()
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(lines) == 1 and "Too many open files" in lines[0].getMessage()
    assert loop.get_exception_handler() is None


def test_connection_limit_leaves_room_for_each_calls_other_sockets() -> None:
    assert connection_limit(1024) == (1024 - 256 - 64) // 2
    assert connection_limit(100) == 32
    assert connection_limit(10**7) == 10_000

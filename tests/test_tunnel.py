"""Tunnels: a stand-in cloudflared on PATH, and pointing each carrier's number at the tunnel."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from getpatter import PatterConfigError
from getpatter.agent import Agent
from getpatter.config import LocalConfig
from getpatter.core.server import EmbeddedServer
from getpatter.testing.engines import ScriptedEngine
from getpatter.tunnel import CloudflareTunnel, Static, as_tunnel, check_public_host

from carrier_nets import open_network
from helpers import NUMBER

STANDIN = Path(__file__).parent / "fixtures" / "standin"


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("PATH", f"{STANDIN}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "cloudflared.log"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    return log


async def test_hostname_is_read_from_cloudflared(standin: Path) -> None:
    tunnel = CloudflareTunnel()
    host = await tunnel.start(8123)
    try:
        assert host.endswith(".trycloudflare.com") and "quick-tunnel" in host
        args = standin.read_text()
        assert "tunnel" in args and "--url http://127.0.0.1:8123" in args
    finally:
        await tunnel.stop()
    assert tunnel._process is None


async def test_tunnel_restarts_when_cloudflared_dies(standin: Path) -> None:
    changes: list[str] = []

    async def on_change(host: str) -> None:
        changes.append(host)

    tunnel = CloudflareTunnel()
    first = await tunnel.start(8124, on_change)
    try:
        assert tunnel._process is not None
        os.kill(tunnel._process.pid, signal.SIGKILL)
        for _ in range(200):
            if changes:
                break
            await asyncio.sleep(0.02)
        assert changes and changes[0] != first and tunnel.hostname == changes[0]
        assert tunnel.restarts == 1
        assert len(standin.read_text().splitlines()) == 2
    finally:
        await tunnel.stop()
    pids = [int(line.rsplit("pid=", 1)[1]) for line in standin.read_text().splitlines()]
    await asyncio.sleep(0.1)
    for pid in pids:  # every cloudflared we started is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_missing_cloudflared_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PatterConfigError, match="cloudflared is not on PATH"):
        await CloudflareTunnel().start(8000)


def test_tunnel_values_and_public_hosts() -> None:
    assert isinstance(as_tunnel(True), CloudflareTunnel)
    assert as_tunnel(False) is None and as_tunnel(None) is None
    assert as_tunnel(Static("abc.ngrok.io")).hostname == "abc.ngrok.io"  # type: ignore[union-attr]
    with pytest.raises(PatterConfigError):
        as_tunnel("yes")
    assert check_public_host("abc.trycloudflare.com") == "abc.trycloudflare.com"
    for bad in ("localhost", "127.0.0.1:8000", "10.1.2.3", "192.168.1.5", "my-box.local"):
        with pytest.raises(PatterConfigError, match="reach"):
            check_public_host(bad)


@pytest.mark.parametrize("kind", ["twilio", "telnyx", "plivo"])
async def test_carrier_is_pointed_at_the_tunnel_and_restored(kind: str) -> None:
    async with open_network(kind) as network:
        fake = network.fake
        carrier = network.carrier()
        config = LocalConfig.from_carrier(carrier, phone_number=NUMBER, webhook_url="")
        server = EmbeddedServer(config, Agent(engine=ScriptedEngine()))

        def current() -> str:
            if kind == "twilio":
                number = fake.number(NUMBER)
                return str(number.voice_url)
            if kind == "plivo":
                return str(fake.application(NUMBER).answer_url)
            return str(fake.webhook_url)

        before = current()
        restore = await server.carrier.point_at("abc.trycloudflare.com")
        path = "answer" if kind == "plivo" else "voice"
        assert current() == f"https://abc.trycloudflare.com/webhooks/{kind}/{path}"
        if kind == "twilio":
            status = fake.number(NUMBER).status_callback
            assert status == "https://abc.trycloudflare.com/webhooks/twilio/status"
        if kind == "plivo":
            hangup = fake.application(NUMBER).hangup_url
            assert hangup == "https://abc.trycloudflare.com/webhooks/plivo/hangup"
        await restore()
        assert current() == before
        await server.carrier.aclose()


@pytest.mark.parametrize("kind", ["twilio", "telnyx"])
async def test_serve_with_tunnel_true_end_to_end(standin: Path, kind: str) -> None:
    """serve(tunnel=True): the stand-in tunnel comes up, the number is pointed at it, a call
    placed through it works, and the number is restored on exit."""
    from getpatter import Patter

    async with open_network(kind) as network:
        fake = network.fake
        if kind == "telnyx":
            fake.add_number(NUMBER)  # announced at the application's webhook, not its own
        before = fake.number(NUMBER).voice_url if kind == "twilio" else fake.webhook_url
        phone = Patter(carrier=network.carrier(), phone_number=NUMBER, persist=False)
        engine = ScriptedEngine()
        agent = phone.agent(engine=engine, first_message="Hello through the tunnel")
        task = asyncio.create_task(phone.serve(agent, port=0, host="127.0.0.1", tunnel=True))
        host = await asyncio.wait_for(phone.tunnel_ready, 10)
        assert host.endswith(".trycloudflare.com")
        assert await asyncio.wait_for(phone.ready, 10) == host
        now = fake.number(NUMBER).voice_url if kind == "twilio" else fake.webhook_url
        assert now == f"https://{host}/webhooks/{kind}/voice"
        fake.route(host, f"127.0.0.1:{phone.port}")  # the tunnel's other end
        assert phone.server is not None
        carrier = phone.server.carrier
        call = await fake.place_call(from_="+15557654321", to=NUMBER)
        await call.wait_for(lambda: len(call.played) > 1600, 5)  # signed, streamed, spoken
        await call.hangup()
        await phone.disconnect()
        await asyncio.wait_for(task, 10)
        after = fake.number(NUMBER).voice_url if kind == "twilio" else fake.webhook_url
        assert after == before
        assert carrier.rest.closed  # the restore's own request left no session open
    pids = [int(line.rsplit("pid=", 1)[1]) for line in standin.read_text().splitlines()]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_tunnel_and_webhook_url_are_exclusive() -> None:
    from getpatter import Patter, Twilio

    carrier = Twilio("AC" + "0" * 32, "token")
    with pytest.raises(PatterConfigError, match="not both"):
        Patter(carrier=carrier, phone_number=NUMBER, webhook_url="abc.ngrok.io", tunnel=True)
    phone = Patter(carrier=carrier, phone_number=NUMBER, webhook_url="abc.ngrok.io")
    agent = phone.agent(engine=ScriptedEngine())
    with pytest.raises(PatterConfigError, match="mutually exclusive"):
        await phone.serve(agent, port=0, tunnel=True)
    with pytest.raises(PatterConfigError, match="mutually exclusive"):
        await phone.ready

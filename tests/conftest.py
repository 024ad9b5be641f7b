"""Shared fixtures: a fake Twilio network and a Patter served against it over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from engine_kits import ENGINES, Kit, open_kit

from getpatter import Patter, Twilio
from getpatter.agent import Agent
from getpatter.testing.twilio import FakeTwilio

from carrier_nets import Network, open_network, serve_on, stop
from carrier_nets import Served as AnyServed
from helpers import HOST, NUMBER


@dataclass
class Served:
    phone: Patter
    net: FakeTwilio
    task: asyncio.Task[None]
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def callbacks(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        def make(kind: str) -> Callable[[dict[str, Any]], Any]:
            async def cb(event: dict[str, Any]) -> None:
                self.events.setdefault(kind, []).append(event)

            return cb

        return {k: make(k) for k in ("on_call_start", "on_call_end", "on_transcript")}


@pytest.fixture(autouse=True)
def _hermetic_history(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Call history of apps built without persist= goes to a temp dir, not ~/.getpatter; a
    developer's own OPENAI_API_KEY does not turn provider-less test agents into realtime ones."""
    monkeypatch.setenv("PATTER_LOG_DIR", str(tmp_path_factory.mktemp("history")))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
async def net() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as tw:
        tw.add_number(NUMBER, voice_url=f"https://{HOST}/webhooks/twilio/voice")
        yield tw


@pytest.fixture
async def serve(net: FakeTwilio) -> AsyncIterator[Callable[..., Any]]:
    served: list[Served] = []

    async def start(agent_kwargs: dict[str, Any], **serve_kwargs: Any) -> Served:
        phone = Patter(
            carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
            phone_number=NUMBER,
            webhook_url=HOST,
            persist=False,
        )
        agent: Agent = phone.agent(**agent_kwargs)
        s = Served(phone, net, asyncio.create_task(asyncio.sleep(0)))
        kwargs = {**s.callbacks(), **serve_kwargs}
        s.task = asyncio.create_task(phone.serve(agent, port=0, host="127.0.0.1", **kwargs))
        assert await asyncio.wait_for(phone.ready, 5) == HOST
        net.route(HOST, f"127.0.0.1:{phone.port}")
        served.append(s)
        return s

    yield start
    for s in served:
        await s.phone.disconnect()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(s.task, 5)


@pytest.fixture(params=["twilio", "telnyx", "plivo"])
async def network(request: pytest.FixtureRequest) -> AsyncIterator[Network]:
    """The same call tests on every carrier: a fake network of each kind."""
    async with open_network(request.param) as net:
        yield net


@pytest.fixture
async def serve_any(network: Network) -> AsyncIterator[Callable[..., Any]]:
    served: list[AnyServed] = []

    async def start(agent_kwargs: dict[str, Any], **serve_kwargs: Any) -> AnyServed:
        s = await serve_on(network, agent_kwargs, **serve_kwargs)
        served.append(s)
        return s

    yield start
    for s in served:
        await stop(s)


@pytest.fixture(params=ENGINES)
async def kit(request: pytest.FixtureRequest) -> AsyncIterator[Kit]:
    """The same call tests on every engine: OpenAI Realtime, Gemini Live, the pipeline."""
    async with open_kit(request.param) as k:
        yield k

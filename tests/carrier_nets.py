"""One view of either fake carrier network, so call tests run unchanged on Twilio and Telnyx."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from getpatter import Patter, Telnyx, Twilio
from getpatter.testing.telnyx import FakeTelnyx
from getpatter.testing.twilio import FakeTwilio

from helpers import HOST, NUMBER


@dataclass
class Network:
    kind: str  # "twilio" | "telnyx"
    fake: Any  # FakeTwilio | FakeTelnyx

    def carrier(self) -> Twilio | Telnyx:
        f = self.fake
        if self.kind == "twilio":
            return Twilio(f.account_sid, f.auth_token, base_url=f.base_url)
        return Telnyx(f.api_key, f.connection_id, f.public_key, base_url=f.base_url)

    @staticmethod
    def voice_url(kind: str) -> str:
        return f"https://{HOST}/webhooks/{kind}/voice"

    def call_id(self, call: Any) -> str:
        return str(call.call_sid if self.kind == "twilio" else call.call_control_id)

    def recorded(self, call: Any) -> bool:
        if self.kind == "twilio":
            return any(r.call_sid == call.call_sid for r in self.fake.recordings.values())
        return any(action == "record_start" for _, action, _ in call.commands)


@contextlib.asynccontextmanager
async def open_network(kind: str) -> AsyncIterator[Network]:
    fake: Any = FakeTwilio() if kind == "twilio" else FakeTelnyx()
    async with fake:
        fake.add_number(NUMBER, Network.voice_url(kind))
        yield Network(kind, fake)


@dataclass
class Served:
    phone: Patter
    network: Network
    task: asyncio.Task[None]
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def callbacks(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        def make(kind: str) -> Callable[[dict[str, Any]], Any]:
            async def cb(event: dict[str, Any]) -> None:
                self.events.setdefault(kind, []).append(event)

            return cb

        return {k: make(k) for k in ("on_call_start", "on_call_end", "on_transcript")}

    async def ended(self, n: int = 1, limit: float = 5.0) -> list[dict[str, Any]]:
        for _ in range(int(limit / 0.02)):
            if len(self.events.get("on_call_end", [])) >= n:
                break
            await asyncio.sleep(0.02)
        return self.events.get("on_call_end", [])


async def serve_on(network: Network, agent_kwargs: dict[str, Any], **serve_kwargs: Any) -> Served:
    phone = Patter(carrier=network.carrier(), phone_number=NUMBER, webhook_url=HOST, persist=False)
    agent = phone.agent(**agent_kwargs)
    s = Served(phone, network, asyncio.create_task(asyncio.sleep(0)))
    kwargs = {**s.callbacks(), **serve_kwargs}
    s.task = asyncio.create_task(phone.serve(agent, port=0, host="127.0.0.1", **kwargs))
    assert await asyncio.wait_for(phone.ready, 5) == HOST
    network.fake.route(HOST, f"127.0.0.1:{phone.port}")
    return s


async def stop(s: Served) -> None:
    await s.phone.disconnect()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(s.task, 5)

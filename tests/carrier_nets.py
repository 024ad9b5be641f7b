"""One view of every fake carrier network, so call tests run unchanged on Twilio, Telnyx, Plivo."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from getpatter import Patter, Plivo, Telnyx, Twilio
from getpatter.testing.plivo import FakePlivo
from getpatter.testing.telnyx import FakeTelnyx
from getpatter.testing.twilio import FakeTwilio

from helpers import HOST, NUMBER

# What the app sends on the media socket, in each carrier's words.
_APP_EVENTS = {"plivo": {"media": "playAudio", "clear": "clearAudio", "mark": "checkpoint"}}


@dataclass
class Network:
    kind: str  # "twilio" | "telnyx" | "plivo"
    fake: Any  # FakeTwilio | FakeTelnyx | FakePlivo

    def carrier(self) -> Twilio | Telnyx | Plivo:
        f = self.fake
        if self.kind == "twilio":
            return Twilio(f.account_sid, f.auth_token, base_url=f.base_url)
        if self.kind == "plivo":
            return Plivo(f.auth_id, f.auth_token, base_url=f.base_url)
        return Telnyx(f.api_key, f.connection_id, f.public_key, base_url=f.base_url)

    @staticmethod
    def voice_url(kind: str) -> str:
        path = "answer" if kind == "plivo" else "voice"
        return f"https://{HOST}/webhooks/{kind}/{path}"

    def call_id(self, call: Any) -> str:
        if self.kind == "plivo":
            return str(call.call_uuid)
        return str(call.call_sid if self.kind == "twilio" else call.call_control_id)

    def fake_call(self, call_id: str) -> Any:
        """The fake's call by the id the app has for it (a Plivo call not answered yet is
        known by its request_uuid)."""
        calls = self.fake.calls
        if self.kind == "plivo" and call_id not in calls:
            return self.fake.by_request[call_id]
        return calls[call_id]

    def recorded(self, call: Any) -> bool:
        if self.kind == "twilio":
            return any(r.call_sid == call.call_sid for r in self.fake.recordings.values())
        if self.kind == "plivo":
            return any(r.call_uuid == call.call_uuid for r in self.fake.recordings.values())
        return any(action == "record_start" for _, action, _ in call.commands)

    def app_sent(self, call: Any, what: str) -> list[float]:
        """When the app sent `what` ("media", "clear", "mark") on the call's media socket."""
        event = _APP_EVENTS.get(self.kind, {}).get(what, what)
        return [t for t, name, _ in call.received if name == event]


@contextlib.asynccontextmanager
async def open_network(kind: str) -> AsyncIterator[Network]:
    fakes = {"twilio": FakeTwilio, "telnyx": FakeTelnyx, "plivo": FakePlivo}
    fake: Any = fakes[kind]()
    async with fake:
        fake.add_number(NUMBER, Network.voice_url(kind))
        if kind == "plivo":
            fake.application(NUMBER).hangup_url = f"https://{HOST}/webhooks/plivo/hangup"
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

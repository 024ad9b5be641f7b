"""Telnyx webhook authentication: Ed25519 over `timestamp|body`, freshness, replays, refusals.

Signed here with a key generated in the test (protocols §2.4), not with the fake network, so
the verifier is checked against the algorithm itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from nacl.signing import SigningKey

from getpatter.agent import Agent
from getpatter.carriers.telnyx.wire import ReplayCache, WebhookVerifier
from getpatter.config import LocalConfig
from getpatter.core.server import EmbeddedServer
from getpatter.errors import SignatureError
from getpatter.testing.engines import ScriptedEngine

from helpers import CALLER, HOST, NUMBER

API_KEY = "KEYTEST0000_secret-value"
CONNECTION_ID = "1234567890123456789"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def envelope(event_type: str = "call.bridged", **payload: Any) -> dict[str, Any]:
    return {
        "data": {
            "record_type": "event",
            "event_type": event_type,
            "id": str(uuid.uuid4()),
            "occurred_at": "2025-11-23T03:30:00.076316Z",
            "payload": {"call_control_id": "v3:test-" + uuid.uuid4().hex, **payload},
        },
        "meta": {"attempt": 1, "delivered_to": f"https://{HOST}/webhooks/telnyx/voice"},
    }


def signed(key: SigningKey, body: bytes, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sig = key.sign(f"{ts}|".encode() + body).signature
    return {
        "telnyx-signature-ed25519": b64(sig),
        "telnyx-timestamp": str(ts),
        "Content-Type": "application/json",
    }


@dataclass
class CapturedApi:
    """A stand-in for api.telnyx.com that records the commands it receives."""

    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body, dict(request.headers)))
        if request.path == "/v2/calls":
            return web.json_response({"data": {"call_control_id": "v3:dialled"}})
        return web.json_response({"data": {"result": "ok"}})


@pytest.fixture
async def api() -> AsyncIterator[CapturedApi]:
    captured = CapturedApi()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", captured.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    captured.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v2"
    yield captured
    await runner.cleanup()


Start = Callable[..., Awaitable[tuple[EmbeddedServer, str]]]


@pytest.fixture
async def start(api: CapturedApi) -> AsyncIterator[Start]:
    servers: list[tuple[EmbeddedServer, asyncio.Task[None]]] = []

    async def run(public_key: str, *, require_signature: bool = True) -> tuple[EmbeddedServer, str]:
        config = LocalConfig(
            telephony_provider="telnyx",
            telnyx_key=API_KEY,
            telnyx_connection_id=CONNECTION_ID,
            telnyx_public_key=public_key,
            telnyx_base_url=api.base_url,
            phone_number=NUMBER,
            webhook_url=HOST,
            require_signature=require_signature,
        )
        server = EmbeddedServer(config, Agent(engine=ScriptedEngine()))
        task = asyncio.create_task(server.start(0))
        await asyncio.wait_for(server.listening, 5)
        servers.append((server, task))
        return server, f"http://127.0.0.1:{server.port}/webhooks/telnyx/voice"

    yield run
    for server, task in servers:
        await server.stop()
        await asyncio.wait_for(task, 5)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def public(key: SigningKey) -> str:
    return b64(key.verify_key.encode())


async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status


async def test_good_signature_is_accepted(start: Start, key: SigningKey) -> None:
    _, url = await start(public(key))
    body = json.dumps(envelope()).encode()
    assert await post(url, body, signed(key, body)) == 200


async def test_forgeries_are_refused(start: Start, key: SigningKey) -> None:
    _, url = await start(public(key))
    body = json.dumps(envelope()).encode()
    other = SigningKey.generate()
    assert await post(url, body, signed(other, body)) == 403  # wrong key
    tampered = body.replace(b"call.bridged", b"call.hangup!")
    assert await post(url, tampered, signed(key, body)) == 403  # body changed after signing
    headers = signed(key, body)
    headers["telnyx-timestamp"] = str(int(headers["telnyx-timestamp"]) + 1)
    assert await post(url, body, headers) == 403  # timestamp is covered by the signature
    headers = signed(key, body)
    headers["telnyx-signature-ed25519"] = "!!not base64!!"
    assert await post(url, body, headers) == 403
    headers = signed(key, body)
    headers["telnyx-signature-ed25519"] = b64(b"\x00" * 10)
    assert await post(url, body, headers) == 403  # not 64 bytes


@pytest.mark.parametrize("header", ["telnyx-signature-ed25519", "telnyx-timestamp"])
async def test_missing_headers_are_refused(start: Start, key: SigningKey, header: str) -> None:
    _, url = await start(public(key))
    body = json.dumps(envelope()).encode()
    headers = signed(key, body)
    del headers[header]
    assert await post(url, body, headers) == 403
    assert await post(url, body, {"Content-Type": "application/json"}) == 403


@pytest.mark.parametrize("skew", [-301, 301, -3600])
async def test_stale_or_future_timestamps_are_refused(
    start: Start, key: SigningKey, skew: int
) -> None:
    _, url = await start(public(key))
    body = json.dumps(envelope()).encode()
    assert await post(url, body, signed(key, body, int(time.time()) + skew)) == 403


async def test_slightly_skewed_clocks_are_accepted(start: Start, key: SigningKey) -> None:
    _, url = await start(public(key))
    for skew in (-250, 250):
        body = json.dumps(envelope()).encode()
        assert await post(url, body, signed(key, body, int(time.time()) + skew)) == 200


async def test_a_replayed_request_is_refused(start: Start, key: SigningKey) -> None:
    _, url = await start(public(key))
    body = json.dumps(envelope()).encode()
    headers = signed(key, body)
    assert await post(url, body, headers) == 200
    assert await post(url, body, headers) == 403
    # A genuine redelivery is signed afresh (new timestamp) and is accepted.
    assert await post(url, body, signed(key, body, int(time.time()) - 1)) == 200


async def test_no_public_key_with_require_signature_is_503(start: Start, key: SigningKey) -> None:
    _, url = await start("")
    body = json.dumps(envelope()).encode()
    assert await post(url, body, signed(key, body)) == 503
    assert await post(url, body, {}) == 503


async def test_no_public_key_without_require_signature_is_accepted(start: Start) -> None:
    _, url = await start("", require_signature=False)
    body = json.dumps(envelope()).encode()
    assert await post(url, body, {"Content-Type": "application/json"}) == 200


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2, 3]", b'{"data": "x"}', b'{"data": {"event_type": "call.x"}}', b"\xff"],
)
async def test_malformed_json_is_400(start: Start, key: SigningKey, body: bytes) -> None:
    _, url = await start(public(key))
    assert await post(url, body, signed(key, body)) == 400


async def test_signed_inbound_call_is_answered_with_a_token_stream(
    start: Start, key: SigningKey, api: CapturedApi
) -> None:
    server, url = await start(public(key))
    event = envelope("call.initiated", direction="incoming", state="parked", to=NUMBER)
    event["data"]["payload"]["from"] = CALLER
    ccid = event["data"]["payload"]["call_control_id"]
    body = json.dumps(event).encode()
    assert await post(url, body, signed(key, body)) == 200
    # Telnyx redelivers the same event (new signature, same data.id): no second session.
    assert await post(url, body, signed(key, body, int(time.time()) - 2)) == 200
    for _ in range(100):
        if api.requests:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert len(api.requests) == 1
    path, answer, headers = api.requests[0]
    assert path == f"/v2/calls/{ccid}/actions/answer"
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    session = server.find_call(ccid)
    assert session is not None and session.direction == "inbound"
    assert (session.caller, session.callee) == (CALLER, NUMBER)
    assert session.key.startswith("in-") and session.call_id == ccid
    assert answer["stream_url"] == f"wss://{HOST}/ws/telnyx/stream/{session.key}"
    assert answer["stream_track"] == "inbound_track"
    assert answer["stream_bidirectional_mode"] == "rtp"
    assert answer["stream_bidirectional_codec"] == "PCMU"
    token = answer["stream_auth_token"]
    assert token and answer["custom_parameters"] == [{"name": "token", "value": token}]
    assert base64.b64decode(answer["client_state"]).decode() == session.key


# --- the verifier on its own ----------------------------------------------------------------


def test_verifier_checks_the_exact_bytes(key: SigningKey) -> None:
    verifier = WebhookVerifier(public(key))
    body = b'{"data": {"x": "\xc3\xa9"}}'
    now = 1_700_000_000
    headers = signed(key, body, now)
    sig, ts = headers["telnyx-signature-ed25519"], headers["telnyx-timestamp"]
    verifier.verify(body, sig, ts, now=now + 299)
    with pytest.raises(SignatureError, match="replayed"):
        verifier.verify(body, sig, ts, now=now + 299)
    with pytest.raises(SignatureError, match="stale"):
        WebhookVerifier(public(key)).verify(body, sig, ts, now=now + 301)
    with pytest.raises(SignatureError, match="bad webhook signature"):
        WebhookVerifier(public(key)).verify(body + b" ", sig, ts, now=now)
    assert "secret" not in repr(verifier) and public(key) not in repr(verifier)


def test_replay_cache_is_bounded_and_expires() -> None:
    cache = ReplayCache(window=300, max_entries=100)
    now = 1_700_000_000.0
    for i in range(1000):
        assert cache.check_and_add(int(now), f"sig-{i}", now)
    assert len(cache) == 100
    assert not cache.check_and_add(int(now), "sig-999", now)  # recent: still remembered
    assert cache.check_and_add(int(now) + 400, "new", now + 400)  # the old ones expired
    assert len(cache) == 1

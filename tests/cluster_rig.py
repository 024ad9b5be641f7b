"""Three getpatter nodes behind real nginx, sharing a real PostgreSQL, called through a fake
phone network (Twilio's or Telnyx's): what the cluster tests run against.

The nodes are child processes (`getpatter serve tests/cluster_app.py:app`, as `getpatter
serve --workers` starts them), so signals and `kill -9` are real. nginx's config is the
one `getpatter nginx-config` writes, on a plain port (the fake network stands in for the TLS
terminating front: it sends https://calls.cluster.test/... to nginx with that Host). Which
carrier the nodes speak follows the fake the rig is given (CLUSTER_TEST_CARRIER to the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from getpatter.nginx import Node, nginx_config
from getpatter.testing import telnyx, twilio
from getpatter.testing.services import LocalNginx, LocalPostgres, free_port
from getpatter.workers import node_command

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "tests" / "cluster_app.py") + ":app"
HOST = "calls.cluster.test"  # the shared public host (cluster_app.HOST)
NUMBER = "+15550001234"
CALLER = "+15557654321"
TOKEN = "cluster-dashboard-token"  # cluster_app.TOKEN
HEARTBEAT, HEARTBEAT_TIMEOUT = 0.3, 2.0
DRAIN_TIMEOUT = 15.0


@dataclass
class NodeProc:
    name: str
    port: int
    dial_port: int
    max_calls: int | None
    proc: asyncio.subprocess.Process | None = None
    log: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Rig:
    def __init__(
        self, pg: LocalPostgres, nginx: LocalNginx, net: twilio.FakeTwilio | telnyx.FakeTelnyx
    ) -> None:
        self.pg = pg
        self.nginx = nginx
        self.net = net
        self.port = free_port()
        self.nodes = {
            name: NodeProc(name, free_port(), free_port(), cap)
            for name, cap in (("a", 1), ("b", 2), ("c", 2))
        }
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})

    def config(self) -> str:
        return nginx_config(
            [Node(n.name, f"127.0.0.1:{n.port}") for n in self.nodes.values()],
            server_name=HOST,
            listen=str(self.port),
            runtime_dir=str(self.nginx.root),
            worker_processes="1",
        )

    async def start(self) -> None:
        await asyncio.gather(*(self.start_node(n) for n in self.nodes))
        self.nginx.start(self.config(), self.port)
        self.net.route(HOST, f"127.0.0.1:{self.port}")

    def env(self, node: NodeProc) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "GETPATTER_NODE": node.name,
            "GETPATTER_DATABASE_URL": self.pg.url,
            "GETPATTER_HEARTBEAT": str(HEARTBEAT),
            "GETPATTER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "GETPATTER_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
            "CLUSTER_TEST_DIAL_PORT": str(node.dial_port),
        }
        net = self.net
        if isinstance(net, telnyx.FakeTelnyx):
            env.update(
                CLUSTER_TEST_CARRIER="telnyx",
                TELNYX_API_KEY=net.api_key,
                TELNYX_CONNECTION_ID=net.connection_id,
                TELNYX_PUBLIC_KEY=net.public_key,
                TELNYX_BASE_URL=net.base_url,
            )
        else:
            env.update(
                CLUSTER_TEST_CARRIER="twilio",
                TWILIO_ACCOUNT_SID=net.account_sid,
                TWILIO_AUTH_TOKEN=net.auth_token,
                TWILIO_BASE_URL=net.base_url,
            )
        if node.max_calls is not None:
            env["GETPATTER_MAX_CALLS"] = str(node.max_calls)
        return env

    async def start_node(self, name: str) -> NodeProc:
        node = self.nodes[name]
        node.log.clear()
        cmd = node_command(APP, node.port, "127.0.0.1", ["--log-level", "warning"])
        node.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(node),
            cwd=str(ROOT),
        )
        proc = node.proc

        async def drain() -> None:  # a full pipe would block the node's logging
            assert proc.stderr is not None
            async for raw in proc.stderr:
                node.log.append(raw.decode(errors="replace").rstrip("\n"))

        node.reader = asyncio.create_task(drain())
        if not await self.healthy(node):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise AssertionError(f"node {name} did not start:\n" + "\n".join(node.log))
        return node

    async def healthy(self, node: NodeProc, within: float = 30.0) -> bool:
        """Until the node answers /health (False if it exits or takes too long)."""
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline and node.running:
            try:
                async with self.http.get(node.base + "/health") as resp:
                    if resp.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        return False

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[name]
        if node.running:
            assert node.proc is not None
            node.proc.send_signal(sig)

    async def wait_exit(self, name: str, within: float) -> int:
        node = self.nodes[name]
        assert node.proc is not None
        code = await asyncio.wait_for(node.proc.wait(), within)
        if node.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.reader, 5)
        return code

    async def settle(self) -> None:
        """Every node running and no call live (what each test leaves behind)."""
        for call in list(self.net.calls.values()):
            if not call.ended:
                await call.hangup()
        for name, node in self.nodes.items():
            if not node.running:
                await self.start_node(name)
        deadline = asyncio.get_running_loop().time() + 10
        while await self.rows("SELECT key FROM live_calls"):
            assert asyncio.get_running_loop().time() < deadline, "calls still live after the test"
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        for node in self.nodes.values():
            if node.running:
                assert node.proc is not None
                node.proc.kill()
                await node.proc.wait()
        await self.http.close()
        self.nginx.close()

    # --- asking things -------------------------------------------------------------------

    async def get(self, node: str, path: str) -> tuple[int, Any]:
        async with self.http.get(self.nodes[node].base + path) as resp:
            return resp.status, await resp.json(content_type=None)

    async def post(self, node: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.post(self.nodes[node].base + path, json=body or {}) as resp:
            return resp.status, await resp.json(content_type=None)

    async def dial(self, node: str, to: str) -> str:
        url = f"http://127.0.0.1:{self.nodes[node].dial_port}/dial"
        async with self.http.post(url, json={"to": to}) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["call_id"])

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        import asyncpg

        con = await asyncpg.connect(self.pg.url)
        try:
            return [dict(r) for r in await con.fetch(sql, *args)]
        finally:
            await con.close()

    async def call_row(self, call_id: str) -> dict[str, Any] | None:
        rows = await self.rows("SELECT * FROM calls WHERE call_id = $1", call_id)
        return rows[0] if rows else None

    async def wait_gone(self, key: str, within: float = 10.0) -> None:
        """Until the call `key` is no longer among the live calls (its node has room again)."""
        deadline = asyncio.get_running_loop().time() + within
        while await self.rows("SELECT 1 FROM live_calls WHERE key = $1", key):
            assert asyncio.get_running_loop().time() < deadline, f"{key} still live"
            await asyncio.sleep(0.05)

    async def wait_row(self, call_id: str, within: float = 10.0, **want: Any) -> dict[str, Any]:
        """The call's history row once it has every `want`ed value."""
        deadline = asyncio.get_running_loop().time() + within
        row = None
        while asyncio.get_running_loop().time() < deadline:
            row = await self.call_row(call_id)
            if row is not None and all(row.get(k) == v for k, v in want.items()):
                return row
            await asyncio.sleep(0.1)
        raise AssertionError(f"call {call_id}: row {row} never had {want}")


@contextlib.asynccontextmanager
async def open_rig(kind: str) -> AsyncIterator[Rig]:
    """PostgreSQL, the fake `kind` network ("twilio" | "telnyx") with NUMBER's webhook on the
    shared host, nginx and the three nodes: up on entry, gone on exit."""
    pg = LocalPostgres()
    await asyncio.to_thread(pg.start)
    try:
        net: twilio.FakeTwilio | telnyx.FakeTelnyx
        if kind == "telnyx":
            net = telnyx.FakeTelnyx()
        else:
            net = twilio.FakeTwilio()
        async with net:
            if isinstance(net, telnyx.FakeTelnyx):
                net.add_number(NUMBER, webhook_url=f"https://{HOST}/webhooks/telnyx/voice")
            else:
                net.add_number(NUMBER, voice_url=f"https://{HOST}/webhooks/twilio/voice")
            rig = Rig(pg, LocalNginx(), net)
            try:
                await rig.start()
                yield rig
            finally:
                await rig.close()
    finally:
        await asyncio.to_thread(pg.close)


def node_of(call: twilio.FakeCall | telnyx.FakeCall) -> str:
    """The node a call's media went to: the prefix of the stream URL in its TwiML (Twilio)
    or of the `stream_url` it was told to dial (Telnyx)."""
    texts = call.stream_urls if isinstance(call, telnyx.FakeCall) else call.twiml
    for doc in texts:
        marker = f"wss://{HOST}/n/"
        if marker in doc:
            return str(doc.split(marker, 1)[1].split("/", 1)[0])
    raise AssertionError(f"no node stream URL in {texts}")


Call = twilio.FakeCall | telnyx.FakeCall


async def rolling_restart(rig: Rig, place: Callable[[Rig], Awaitable[Call]]) -> list[Call]:
    """SIGTERM each node in turn with calls live: its /health says draining, a new call goes
    to another node, its own calls go on until their callers hang up (their closing webhooks
    still reach it), then it exits cleanly and is started again. Returns every call placed,
    each hung up by its caller."""
    live = [await place(rig) for _ in range(3)]
    for name in ("a", "b", "c"):
        await rig.kill(name, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + 5
        while (await rig.get(name, "/health"))[0] != 503:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert (await rig.get(name, "/health"))[1]["status"] == "draining"
        newcomer = await place(rig)  # a new call goes to another node
        assert node_of(newcomer) != name
        live.append(newcomer)
        mine = [c for c in live if not c.ended and node_of(c) == name]
        await asyncio.sleep(0.5)
        assert mine and not any(c.ended for c in mine)  # draining: its calls go on
        for call in mine:
            await call.hangup()
        assert await rig.wait_exit(name, DRAIN_TIMEOUT) == 0
        await rig.start_node(name)
    for call in live:
        if not call.ended:
            await call.hangup()
    return live

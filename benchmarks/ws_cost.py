"""What one model WebSocket costs by itself: RSS per open connection and CPU per message sent,
through the `openai` SDK's realtime connection (what `OpenAIRealtime` uses) and through a bare
aiohttp client WebSocket, against a local aiohttp server in another process.

Run: .venv/bin/python benchmarks/ws_cost.py              (~15 s)
     .venv/bin/python benchmarks/ws_cost.py --conns 400 --messages 40000

It puts `load.py`'s realtime / echo RSS ratio in proportion: a realtime call holds one such
connection on top of everything an echo call holds, so the connection's own RSS, divided by
the echo call's RSS per call, is a floor under (ratio - 1) that no bridge code can go below.
Figures printed:
  RSS       (VmRSS after opening --conns connections - before) / --conns, in KiB, and what
            tracemalloc saw allocated by Python over the same step (the rest is the C
            allocator's own overhead and fragmentation);
  send      process CPU per `input_audio_buffer.append` of 60 ms of μ-law (the message the
            realtime bridge sends most), in µs, one connection, awaited one after another.
The server runs in its own process; its CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import multiprocessing as mp
import os
import platform
import sys
import time
import tracemalloc
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

KEY = "sk-bench-ws-cost"
APPEND = (
    '{"type":"input_audio_buffer.append","audio":"'
    + base64.b64encode(os.urandom(480)).decode("ascii")
    + '"}'
)


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _server(conn: Connection) -> None:
    """A sink: accepts /v1/realtime upgrades and reads whatever comes."""
    from aiohttp import web

    async def realtime(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/realtime", realtime)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


class Client:
    """Opens connections of one kind and sends on them."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind = kind
        self.port = port
        self.sdk: Any = None
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp
        from openai import AsyncOpenAI

        base = f"127.0.0.1:{self.port}/v1"
        self.sdk = AsyncOpenAI(
            api_key=KEY, base_url=f"http://{base}", websocket_base_url=f"ws://{base}"
        )
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def open(self) -> tuple[Any, Any]:
        """(connection, its send coroutine function)."""
        if self.kind == "sdk":
            conn = await self.sdk.realtime.connect(model="gpt-realtime").enter()
            return conn, conn.send_raw
        ws = await self.session.ws_connect(
            f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime",
            headers={"Authorization": f"Bearer {KEY}"},
        )
        return ws, ws.send_str

    async def close(self, conns: list[Any]) -> None:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        await self.session.close()
        await self.sdk.close()


async def measure(kind: str, port: int, n_conns: int, n_messages: int) -> dict[str, float]:
    client = Client(kind, port)
    await client.start()
    # warm-up: first-use imports and allocations are not the connection's
    warm = [await client.open() for _ in range(5)]
    for _, send in warm:
        for _ in range(50):
            await send(APPEND)
    gc.collect()
    await asyncio.sleep(0.3)
    before = rss_kib()
    tracemalloc.start()
    opened = [await client.open() for _ in range(n_conns)]
    for _, send in opened:
        await send(APPEND)
    await asyncio.sleep(0.5)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    after = rss_kib()

    _, send = warm[0]
    cpu = time.process_time()
    for _ in range(n_messages):
        await send(APPEND)
    per_send = (time.process_time() - cpu) / n_messages
    await client.close([c for c, _ in warm + opened])
    return {
        "rss_kib": (after - before) / n_conns,
        "traced_kib": traced / 1024 / n_conns,
        "send_us": per_send * 1e6,
    }


def run_kind(kind: str, port: int, n_conns: int, n_messages: int, out: Connection) -> None:
    out.send(asyncio.run(measure(kind, port, n_conns, n_messages)))


def measure_socket(ctx: Any, conns: int, messages: int) -> dict[str, Any]:
    """One SDK realtime socket's RSS and CPU per send (for load.py's report)."""
    mine, theirs = ctx.Pipe()
    server = ctx.Process(target=_server, args=(theirs,), daemon=True)
    server.start()
    try:
        port = mine.recv()
        here, there = ctx.Pipe()
        proc = ctx.Process(target=run_kind, args=("sdk", port, conns, messages, there))
        proc.start()
        result: dict[str, Any] = here.recv()
        proc.join(30)
    finally:
        server.terminate()
    return {**result, "conns": conns, "messages": messages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int, default=200, help="connections opened for the RSS step")
    p.add_argument("--messages", type=int, default=20000, help="messages sent for the CPU step")
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    server = ctx.Process(target=_server, args=(theirs,), daemon=True)
    server.start()
    port = mine.recv()
    results = {}
    try:
        for kind in ("sdk", "aiohttp"):  # each in a fresh process: no shared heap
            here, there = ctx.Pipe()
            proc = ctx.Process(target=run_kind, args=(kind, port, args.conns, args.messages, there))
            proc.start()
            results[kind] = here.recv()
            proc.join(30)
    finally:
        server.terminate()
    names = {"sdk": "openai SDK realtime connection", "aiohttp": "bare aiohttp WebSocket"}
    print(f"one model WebSocket, {args.conns} open, {args.messages} appends of 60 ms sent")
    print("  client                            RSS KiB/conn  (Python-traced)   CPU µs/send")
    for kind, r in results.items():
        print(
            f"  {names[kind]:<33} {r['rss_kib']:11.1f}  ({r['traced_kib']:12.1f})"
            f"   {r['send_us']:11.1f}"
        )
    sdk, bare = results["sdk"], results["aiohttp"]
    print(
        f"  SDK / bare: RSS {sdk['rss_kib'] / bare['rss_kib']:.2f}x, "
        f"CPU per send {sdk['send_us'] / bare['send_us']:.2f}x"
    )
    import aiohttp
    import openai
    import websockets

    print(
        f"machine   {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, openai {openai.__version__}, "
        f"websockets {websockets.__version__}, aiohttp {aiohttp.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

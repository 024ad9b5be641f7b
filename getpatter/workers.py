"""Many nodes on one machine: `getpatter serve APP --workers N`.

One Python process holds its calls on one core, so a machine with N cores runs N nodes: this
starts N copies of APP as child processes, node `w1` on `--port`, `w2` on the next port, ...
each with its node name and drain timeout in its environment (see core/node.py), prints the
nginx upstream block for them (the whole config: `getpatter nginx-config --workers N`), and
stays in front: SIGTERM or Ctrl-C is passed to every node, which drains (live calls finish
up to the drain timeout) and exits; it returns once all have.

For a rolling restart across machines, or to restart one node at a time here, run the nodes
under a process manager instead (README, "Scaling out": one systemd unit per node).

`python -m getpatter.workers APP --port P` runs one node (what each child is).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from getpatter.core.node import ENV_DRAIN, ENV_NAME
from getpatter.nginx import upstream_block, workers

log = logging.getLogger("getpatter.workers")

DEFAULT_DRAIN = 30.0  # seconds, a node's drain timeout unless APP or the environment set one


def run_workers(
    app: str,
    count: int,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    drain_timeout: float | None = None,
    log_level: str = "info",
) -> int:
    """Start `count` nodes of `app`, print their nginx upstream block, wait for them all;
    returns the worst exit status among them."""
    if count < 1:
        raise ValueError("--workers needs at least 1")
    nodes = workers(count, port, host)
    print(upstream_block(nodes), flush=True)
    env = dict(os.environ)
    env.setdefault(ENV_DRAIN, str(DEFAULT_DRAIN if drain_timeout is None else drain_timeout))
    children: list[subprocess.Popen[bytes]] = []
    for node in nodes:
        child_port = int(node.address.rsplit(":", 1)[1])
        cmd = [
            sys.executable,
            "-m",
            "getpatter.workers",
            app,
            "--port",
            str(child_port),
            "--host",
            host,
            "--log-level",
            log_level,
        ]
        children.append(subprocess.Popen(cmd, env={**env, ENV_NAME: node.name}))
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second signal: stop at once
            for child in children:
                if child.poll() is None:
                    child.kill()
            return
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(c.poll() is None for c in children):
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [c.returncode for c in children]
    return max(codes, key=abs) if codes else 0


def serve_node(app: str, port: int, host: str) -> int:
    """One node: APP's `phone.serve(agent, **serve_kwargs)` on `port`; SIGTERM (or Ctrl-C)
    drains it (see `EmbeddedServer.stop`)."""
    from getpatter.testing.simulator import load_app

    phone, agent, kwargs = load_app(app)
    kwargs = {**kwargs, "port": port, "host": host}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(phone.serve(agent, **kwargs))
        stops: list[asyncio.Task[None]] = []

        def stop(name: str) -> None:
            if stops:
                task.cancel()  # the second signal: now
                return
            log.warning("%s: stopping (live calls drain first)", name)
            stops.append(asyncio.ensure_future(phone.disconnect()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig.name)
        ready = asyncio.ensure_future(phone.ready)
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            print(f"node {os.environ.get(ENV_NAME, '')} listening on {phone.port}", flush=True)
        try:
            await task
        finally:
            if stops:
                await asyncio.gather(*stops, return_exceptions=True)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m getpatter.workers", description=__doc__)
    parser.add_argument("app", metavar="APP", help="file.py:attr or module:attr")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=0, help="start this many nodes")
    parser.add_argument("--drain-timeout", type=float, default=None, metavar="S")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    name = os.environ.get(ENV_NAME, "main")
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    if args.workers:
        return run_workers(
            args.app,
            args.workers,
            port=args.port,
            host=args.host,
            drain_timeout=args.drain_timeout,
            log_level=args.log_level,
        )
    return serve_node(args.app, args.port, args.host)


if __name__ == "__main__":
    sys.exit(main())

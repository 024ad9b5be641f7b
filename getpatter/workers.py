"""Many nodes on one machine: `getpatter serve APP --workers N`.

One Python process holds its calls on one core, so a machine with N cores runs N nodes: this
starts N copies of APP as child processes (`getpatter serve APP`), node `w1` on `--port`,
`w2` on the next port, ... each with its node name and drain timeout in its environment (see
core/node.py), prints the nginx upstream block for them (the whole config: `getpatter
nginx-config --workers N`), and stays in front: SIGTERM or Ctrl-C is passed to every node,
which drains (live calls finish, up to the drain timeout) and exits; it returns once all have.

To restart one node at a time (a rolling deploy), run the nodes under a process manager
instead (README, "Scaling out": one systemd unit per node).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from getpatter.core.node import ENV_DRAIN, ENV_NAME
from getpatter.nginx import upstream_block, workers

DEFAULT_DRAIN = 30.0  # seconds, a node's drain timeout unless APP or the environment set one


def node_command(app: str, port: int, host: str, serve_args: Sequence[str] = ()) -> list[str]:
    """How one node is started: `getpatter serve APP` on its own port."""
    cmd = [sys.executable, "-m", "getpatter.cli", "serve", app, "--port", str(port)]
    return [*cmd, "--host", host, *serve_args]


def run_workers(
    app: str,
    count: int,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    drain_timeout: float | None = None,
    serve_args: Sequence[str] = (),
) -> int:
    """Start `count` nodes of `app`, print their nginx upstream block, wait for them all;
    returns the worst exit status among them."""
    if count < 1:
        raise ValueError("--workers needs at least 1")
    nodes = workers(count, port, host)
    print(upstream_block(nodes), flush=True)
    env = dict(os.environ)
    if drain_timeout is not None:
        env[ENV_DRAIN] = str(drain_timeout)
    else:
        env.setdefault(ENV_DRAIN, str(DEFAULT_DRAIN))
    children = [
        subprocess.Popen(
            node_command(app, int(node.address.rsplit(":", 1)[1]), host, serve_args),
            env={**env, ENV_NAME: node.name},
            start_new_session=True,  # a terminal's Ctrl-C reaches us only: one signal each
        )
        for node in nodes
    ]
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

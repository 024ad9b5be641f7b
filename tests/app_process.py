"""A getpatter app as a real child process (`python app.py`), served against a fake Twilio
network of the test process: for what only a process shows (signals, kill -9, fd limits)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from getpatter.testing.twilio import FakeTwilio

from helpers import HOST, NUMBER

APP = """
import asyncio, logging, resource, sys
{limits}
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
from getpatter import Patter, Twilio
from getpatter.testing.engines import ScriptedEngine

async def main() -> None:
    phone = Patter(
        carrier=Twilio({sid!r}, {token!r}, base_url={base_url!r}),
        phone_number={number!r},
        webhook_url={host!r},
        persist={persist!r},
    )
    agent = phone.agent(engine=ScriptedEngine(), first_message="Hello there.")
    serving = asyncio.create_task(phone.serve(agent, port=0, host="127.0.0.1", dashboard=False))
    await phone.ready
    print(phone.port, resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
    await serving
    print("served", flush=True)

asyncio.run(main())
"""


class App:
    def __init__(
        self, proc: asyncio.subprocess.Process, port: int, fds: int, persist: Path, log: list[str]
    ) -> None:
        self.proc = proc
        self.port = port
        self.fd_limit = fds  # the soft RLIMIT_NOFILE once serving
        self.persist = persist
        self.log = log  # the app's log lines so far (stderr, read as it comes)

    def rows(self) -> list[dict[str, Any]]:
        """The call history the app left on disk, read with plain sqlite3."""
        db = sqlite3.connect(self.persist / "calls.db")
        db.row_factory = sqlite3.Row
        try:
            calls = [dict(r) for r in db.execute("SELECT * FROM calls")]
            for call in calls:
                call["transcript"] = [
                    (r["role"], r["text"])
                    for r in db.execute(
                        "SELECT role, text FROM transcript WHERE call_id = ? ORDER BY seq",
                        (call["call_id"],),
                    )
                ]
            return calls
        finally:
            db.close()


@contextlib.asynccontextmanager
async def running_app(
    net: FakeTwilio, persist: Path, *, fd_limits: tuple[int, int] | None = None
) -> AsyncIterator[App]:
    """`python app.py` serving on 127.0.0.1, routed from the fake network; `fd_limits` =
    (soft, hard) RLIMIT_NOFILE the app starts with."""
    limits = ""
    if fd_limits is not None:
        limits = f"resource.setrlimit(resource.RLIMIT_NOFILE, {fd_limits!r})"
    app = persist.parent / "app.py"
    app.write_text(
        textwrap.dedent(
            APP.format(
                limits=limits,
                sid=net.account_sid,
                token=net.auth_token,
                base_url=net.base_url,
                number=NUMBER,
                host=HOST,
                persist=str(persist),
            )
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(app),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    log: list[str] = []

    async def drain() -> None:  # a full pipe would block the app's logging
        assert proc.stderr is not None
        async for raw in proc.stderr:
            log.append(raw.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(drain())
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            proc.kill()
            await proc.wait()
            await asyncio.wait_for(reader, 5)
            raise AssertionError(f"the app did not start: {line!r}\n" + "\n".join(log))
        port, fds = int(fields[0]), int(fields[1])
        net.route(HOST, f"127.0.0.1:{port}")
        yield App(proc, port, fds, persist, log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(reader, 5)

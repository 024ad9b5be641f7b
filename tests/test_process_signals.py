"""The server as a real process: what SIGTERM and `kill -9` leave behind.

A tiny app file is run with `python app.py` against the fake Twilio network of this test
process, a call is placed, and the process is signalled. The history it leaves on disk is
read with sqlite3 directly: what a user would find after a `docker stop` or a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

APP = """
import asyncio, sys
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
    print(phone.port, flush=True)
    await serving
    print("served", flush=True)

asyncio.run(main())
"""


class App:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, persist: Path) -> None:
        self.proc = proc
        self.port = port
        self.persist = persist

    def rows(self) -> list[dict[str, Any]]:
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
async def running_app(net: FakeTwilio, persist: Path) -> AsyncIterator[App]:
    app = persist.parent / "app.py"
    app.write_text(
        textwrap.dedent(
            APP.format(
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
        sys.executable, str(app), stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip().isdigit(), f"the app did not start: {line!r}"
        port = int(line)
        net.route(HOST, f"127.0.0.1:{port}")
        yield App(proc, port, persist)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def net() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as tw:
        tw.add_number(NUMBER, voice_url=f"https://{HOST}/webhooks/twilio/voice")
        yield tw


async def live_call(net: FakeTwilio) -> Any:
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=0.3, tail=20))
    await call.wait_stream(10)
    await call.wait_for(lambda: len(call.marks_echoed) >= 2, 10)  # the greeting is heard
    return call


async def test_sigterm_hangs_up_live_calls_and_writes_their_records(
    net: FakeTwilio, tmp_path: Path
) -> None:
    async with running_app(net, tmp_path / "history") as app:
        call = await live_call(net)
        app.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(app.proc.wait(), 10)
        assert app.proc.returncode == 0  # serve() returned: a clean stop, not a kill
        assert app.proc.stdout is not None
        assert b"served" in await app.proc.stdout.read()
    await call.wait_ended(5)
    # hung up through the carrier's REST API, not by dropping the socket
    hangups = [
        r
        for r in net.requests
        if r.method == "POST" and call.call_sid in r.path and r.form.get("Status") == "completed"
    ]
    assert hangups, [(r.method, r.path, r.form) for r in net.requests]
    (row,) = app.rows()
    assert row["call_id"] == call.call_sid
    assert row["end_reason"] == "server_stopped"
    assert ("assistant", "Hello there.") in row["transcript"]
    assert json.loads(row["metrics"])  # the whole record, not a stub

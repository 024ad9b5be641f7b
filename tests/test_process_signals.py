"""The server as a real process: what SIGTERM and `kill -9` leave behind.

A tiny app file is run with `python app.py` (see app_process.py) against the fake Twilio
network of this test process, a call is placed, and the process is signalled. The history it
leaves on disk is read with sqlite3 directly: what a user would find after a `docker stop` or
a crash.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from app_process import running_app

from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


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


async def test_kill_9_leaves_the_call_interrupted_with_what_was_said(
    net: FakeTwilio, tmp_path: Path
) -> None:
    persist = tmp_path / "history"
    async with running_app(net, persist) as app:
        call = await live_call(net)
        rows: list[dict[str, Any]] = []
        for _ in range(50):  # the transcript is journaled within about a second
            rows = app.rows()
            if rows and rows[0]["transcript"]:
                break
            await asyncio.sleep(0.1)
        assert [r["state"] for r in rows] == ["active"]  # there from the first webhook
        assert ("assistant", "Hello there.") in rows[0]["transcript"]
        app.proc.kill()  # SIGKILL: nothing of ours runs any more
        await app.proc.wait()
    await call.wait_ended(5)
    async with running_app(net, persist) as app:
        (row,) = app.rows()
        assert row["call_id"] == call.call_sid
        assert (row["state"], row["end_reason"]) == ("interrupted", "interrupted")
        assert ("assistant", "Hello there.") in row["transcript"]
        assert row["started_at"] and row["answered"] == 1
        assert any("marked interrupted" in line for line in app.log), app.log

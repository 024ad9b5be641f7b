"""Call history in SQLite: what is written, how it is found, that it survives a restart and a
stop mid-call, that secrets never land on disk, and the schema's versioning."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from getpatter import Patter, Twilio
from getpatter.core.store import DB_NAME, MemoryStore, Scrubber, mask_phone, open_store
from getpatter.core.store_sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, migrate
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.providers import ScriptedSTT, ScriptedTTS
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech


def record(call_id: str, started: float, text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "caller": CALLER,
        "callee": NUMBER,
        "direction": "inbound",
        "created_at": started - 1,
        "started_at": started,
        "ended_at": started + 30,
        "duration": 30.0,
        "end_reason": "hangup",
        "answered": True,
        "transcript": [
            {"role": "user", "text": text},
            {"role": "assistant", "text": "Hi!", "interrupted": True},
        ],
        "events": [{"t": started, "kind": "media_started", "stream_id": "MZ1"}],
        "metrics": {
            "turn_count": 1,
            "latency": {"p50_ms": 700.0, "p95_ms": 900.0, "max_ms": 950.0},
            "cost": {"total": 0.0123, "currency": "USD"},
            "pricing_version": "2025-09-01",
            "turns": [
                {
                    "turn_index": 0,
                    "engine": "pipeline",
                    "user_text": text,
                    "agent_text": "Hi!",
                    "interrupted": True,
                    "latency": {"total_ms": 700.0, "bargein_ms": 120.0},
                    "cost": {"total": 0.001},
                }
            ],
        },
        **extra,
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = await SQLiteStore(tmp_path / DB_NAME).open()
    yield s
    await s.close()


async def test_a_record_round_trips(store: SQLiteStore, tmp_path: Path) -> None:
    original = record("CA1", 1000.0, recording_url="https://x/y")
    await store.write(original)
    assert await store.get("CA1") == {**original, "state": "ended"}
    assert await store.get("CA-nope") is None
    assert stat.S_IMODE(os.stat(tmp_path / DB_NAME).st_mode) == 0o600
    # the tables are there for plain SQL too
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert db.execute("SELECT total_ms, bargein_ms, interrupted FROM turns").fetchall() == [
        (700.0, 120.0, 1)
    ]
    assert db.execute("SELECT role, text FROM transcript ORDER BY seq").fetchall() == [
        ("user", "hello there"),
        ("assistant", "Hi!"),
    ]
    assert db.execute("SELECT kind FROM events").fetchall() == [("media_started",)]
    db.close()
    await store.write({**original, "end_reason": "transferred"})  # a rewrite replaces it
    rows, total = await store.search()
    assert total == 1 and rows[0]["end_reason"] == "transferred"


async def test_search_and_paging(store: SQLiteStore) -> None:
    for i in range(25):
        text = "I want pizza" if i % 5 == 0 else "opening hours please"
        await store.write(record(f"CA{i:02}", 1000.0 + i, text))
    rows, total = await store.search(page=1, page_size=10)
    assert total == 25 and [r["call_id"] for r in rows[:2]] == ["CA24", "CA23"]  # newest first
    rows, _ = await store.search(page=3, page_size=10)
    assert [r["call_id"] for r in rows] == ["CA04", "CA03", "CA02", "CA01", "CA00"]
    rows, total = await store.search("PIZZA")  # words said, any case
    assert total == 5 and {r["call_id"] for r in rows} == {"CA00", "CA05", "CA10", "CA15", "CA20"}
    assert (await store.search("CA1"))[1] == 10  # CA10..CA19
    assert (await store.search("100%"))[1] == 0  # LIKE wildcards are literal
    assert (await store.search(CALLER[-4:]))[1] == 25
    assert len(await store.export("pizza")) == 5
    row = rows[0]
    assert row["latency_p95_ms"] == 900.0 and row["cost_total"] == 0.0123 and row["turns"] == 1


async def test_db_work_happens_on_one_worker_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()
    original = SQLiteStore._write

    def spy(self: SQLiteStore, rec: dict[str, Any]) -> None:
        threads.add(threading.current_thread().name)
        original(self, rec)

    monkeypatch.setattr(SQLiteStore, "_write", spy)
    await asyncio.gather(*(store.write(record(f"CA{i}", float(i))) for i in range(5)))
    assert len(threads) == 1 and next(iter(threads)).startswith("getpatter-store")
    assert threading.current_thread().name not in threads
    assert (await store.search())[1] == 5


def test_secrets_are_scrubbed_and_numbers_masked() -> None:
    scrub = Scrubber(["sk-live-SECRET-123", "tw-token-xyz"], mask_phone_numbers=True)
    out = scrub(record("CA1", 1.0, text="my key is sk-live-SECRET-123, call me on +15551234567"))
    text = repr(out)
    assert "SECRET" not in text and "tw-token" not in text and "***" in text
    assert CALLER not in text and NUMBER not in text and "+15551234567" not in text
    assert out["caller"] == mask_phone(CALLER) == "+1******4321"
    assert out["transcript"][0]["text"].endswith("call me on +1******4567")
    assert Scrubber()(record("CA1", 1.0))["caller"] == CALLER  # masking is opt-in


def test_schema_migrations_run_in_order_and_refuse_newer_files(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    n = len(MIGRATIONS)
    assert migrate(db, MIGRATIONS) == n

    def future(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE calls ADD COLUMN sentiment TEXT")

    assert migrate(db, [*MIGRATIONS, future]) == n + 1  # the hook: a later version adds a column
    assert "sentiment" in [r[1] for r in db.execute("PRAGMA table_info(calls)")]
    with pytest.raises(RuntimeError, match="newer than this getpatter"):
        migrate(db, MIGRATIONS)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        migrate(db, [*MIGRATIONS, future, broken])
    assert db.execute("PRAGMA user_version").fetchone()[0] == n + 1  # the failed step rolled back
    assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall()
    db.close()


async def test_a_version_1_file_is_upgraded_with_its_calls_finished(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, MIGRATIONS[:1])  # what getpatter wrote before calls had a state
    db.execute("INSERT INTO calls (call_id, end_reason, created_at) VALUES ('CA-old', 'hangup', 1)")
    db.close()
    store = await SQLiteStore(path).open()
    try:
        assert await store.interrupt_active() == []  # an old finished call is no crash
        old = await store.get("CA-old")
        assert old is not None and (old["state"], old["end_reason"]) == ("ended", "hangup")
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def opened(call_id: str) -> dict[str, Any]:
    """What a call's record looks like at its first webhook."""
    return {
        "call_id": call_id,
        "caller": CALLER,
        "callee": NUMBER,
        "direction": "inbound",
        "created_at": 1000.0,
        "started_at": None,
        "ended_at": None,
        "duration": 0.0,
        "end_reason": "",
        "answered": False,
        "transcript": [],
        "events": [],
        "metrics": {},
    }


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_a_call_is_claimed_at_its_first_webhook_and_journaled(
    kind: str, tmp_path: Path
) -> None:
    store: Any = await SQLiteStore(tmp_path / DB_NAME).open() if kind == "sqlite" else MemoryStore()
    try:
        assert await store.open_call(opened("CA1")) is True
        assert await store.open_call(opened("CA1")) is False  # a replay finds it taken
        row = await store.get("CA1")
        assert row is not None and row["state"] == "active" and row["end_reason"] == ""
        await store.append_transcript(
            "CA1", 0, [{"role": "assistant", "text": "Hello!", "t": 1001.0}], started_at=1000.5
        )
        await store.append_transcript("CA1", 1, [{"role": "user", "text": "hi", "t": 1003.0}])
        await store.append_transcript("CA1", 1, [{"role": "user", "text": "hi", "t": 1003.0}])
        row = await store.get("CA1")
        assert [(e["role"], e["text"]) for e in row["transcript"]] == [
            ("assistant", "Hello!"),
            ("user", "hi"),
        ]
        assert row["started_at"] == 1000.5 and row["answered"]
        rows, total = await store.search()
        assert total == 1 and rows[0]["state"] == "active"
        # the end replaces the journal with the whole record; late appends change nothing
        await store.write(record("CA1", 1000.5))
        await store.append_transcript("CA1", 2, [{"role": "user", "text": "late", "t": 2.0}])
        row = await store.get("CA1")
        assert row["state"] == "ended" and row["end_reason"] == "hangup"
        assert [e["text"] for e in row["transcript"]] == ["hello there", "Hi!"]
        assert await store.open_call(opened("CA1")) is False  # a finished call stays finished
    finally:
        await store.close()


async def test_calls_left_active_by_a_dead_process_become_interrupted(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / DB_NAME).open()
    await store.open_call(opened("CA-live"))
    await store.append_transcript(
        "CA-live", 0, [{"role": "assistant", "text": "Hello!", "t": 1002.0}], started_at=1001.0
    )
    await store.open_call(opened("CA-ringing"))
    await store.write(record("CA-done", 900.0))
    await store.close()  # as if killed: nobody wrote the end of the two open calls

    store = await SQLiteStore(tmp_path / DB_NAME).open()
    try:
        assert sorted(await store.interrupt_active()) == ["CA-live", "CA-ringing"]
        assert await store.interrupt_active() == []
        live = await store.get("CA-live")
        assert live is not None
        assert (live["state"], live["end_reason"]) == ("interrupted", "interrupted")
        assert [e["text"] for e in live["transcript"]] == ["Hello!"]
        assert live["ended_at"] == 1002.0 and live["duration"] == 1.0
        done = await store.get("CA-done")
        assert done is not None and done["state"] == "ended"
    finally:
        await store.close()


async def test_unusable_persist_root_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.ERROR):
        store = await open_store(str(blocker / "history"))
    assert isinstance(store, MemoryStore)
    assert "cannot be used" in caplog.text and "persist=" in caplog.text
    assert isinstance(await open_store(None), MemoryStore)


# --- with a server -------------------------------------------------------------------------


async def _serve(
    net: FakeTwilio, root: Path, agent: dict[str, Any] | None = None, **serve_kwargs: Any
) -> tuple[Patter, asyncio.Task[None]]:
    phone = Patter(
        carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=str(root),
        mask_phone_numbers=True,
    )
    agent = agent or {"engine": ScriptedEngine(replies=["Sure."]), "first_message": "Hello!"}
    task = asyncio.create_task(
        phone.serve(phone.agent(**agent), port=0, host="127.0.0.1", **serve_kwargs)
    )
    await asyncio.wait_for(phone.ready, 5)
    net.route(HOST, f"127.0.0.1:{phone.port}")
    return phone, task


async def _stop(phone: Patter, task: asyncio.Task[None]) -> None:
    await phone.disconnect()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(task, 5)


async def test_calls_survive_a_restart_and_a_stop_mid_call(net: FakeTwilio, tmp_path: Path) -> None:
    phone, task = await _serve(
        net,
        tmp_path,
        {"stt": ScriptedSTT(["hours"]), "tts": ScriptedTTS(), "first_message": "Acme, hello."},
        on_message=lambda msg: "Nine to five.",
    )
    assert phone.server is not None and phone.server.store is not None
    # one call that ends normally
    done = await net.place_call(
        from_=CALLER, to=NUMBER, audio=np.concatenate([speech(lead=1.5, tail=2.5)])
    )
    await asyncio.sleep(4.5)
    await done.hangup()
    # one call still live when the server stops
    live = await net.place_call(from_=CALLER, to=NUMBER)
    await live.wait_for(lambda: live.stream_open, 5)
    await asyncio.sleep(0.5)
    await _stop(phone, task)
    assert live.ended

    again, task = await _serve(net, tmp_path)
    try:
        assert again.server is not None and again.server.store is not None
        rows, total = await again.server.store.search()
        assert total == 2
        by_id = {r["call_id"]: r for r in rows}
        assert by_id[live.call_sid]["end_reason"] == "server_stopped"
        assert by_id[done.call_sid]["end_reason"] == "hangup"
        assert by_id[done.call_sid]["caller"] == "+1******4321"  # masked on disk
        old = await again.server.store.get(done.call_sid)
        assert old is not None
        assert [e["role"] for e in old["transcript"]][:2] == ["assistant", "user"]
        assert old["metrics"]["turn_count"] >= 2 and old["events"]
        # and the dashboard's API of the new server lists them
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{again.port}/api/calls"
            async with http.get(url) as response:
                body = await response.json()
        assert body["total"] == 2
        assert {c["call_id"] for c in body["calls"]} == {live.call_sid, done.call_sid}
    finally:
        await _stop(again, task)

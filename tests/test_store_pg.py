"""Call history in a real PostgreSQL: the same records as SQLite (written and read back), the
same masking, the schema's versioning, and a database outage that only delays the records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_store import record

from getpatter.core.pg import Database, redact_url
from getpatter.core.store import DB_NAME, Scrubber
from getpatter.core.store_pg import MIGRATIONS, PostgresStore
from getpatter.core.store_sqlite import SQLiteStore
from getpatter.errors import PatterConfigError
from getpatter.testing import services

from helpers import CALLER

MISSING = services.missing()
pytestmark = [
    pytest.mark.xdist_group("postgres"),
    pytest.mark.skipif(
        not services._pg_bin("initdb"),
        reason="POSTGRESQL TESTS SKIPPED: initdb/pg_ctl not installed "
        "(apt-get install postgresql; .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def pg() -> Iterator[services.LocalPostgres]:
    with services.LocalPostgres() as server:
        yield server


@pytest.fixture
async def fresh(pg: services.LocalPostgres) -> AsyncIterator[str]:
    """An empty database of its own for each test, on the module's server."""
    import asyncpg

    name = f"t{id(object())}"
    admin = await asyncpg.connect(pg.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield pg.url.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(pg.url)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def open_pg(url: str, scrub: Scrubber | None = None, node: str = "a") -> PostgresStore:
    return await PostgresStore(Database(url), scrub, node).open()


async def settled(store: PostgresStore, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while store.db.pending:
        assert asyncio.get_running_loop().time() < deadline, "writes still queued"
        await asyncio.sleep(0.02)


async def test_the_same_records_as_sqlite(fresh: str, tmp_path: Path) -> None:
    pg = await open_pg(fresh)
    lite = await SQLiteStore(tmp_path / DB_NAME).open()
    try:
        for store in (pg, lite):
            await store.write(record("CA1", 1000.0))
            await store.write(record("CA2", 2000.0, text="book a table", node="b"))
        await settled(pg)
        for call_id in ("CA1", "CA2"):
            mine, theirs = await pg.get(call_id), await lite.get(call_id)
            assert mine is not None and theirs is not None
            for key in ("state", "node"):
                mine.pop(key, None)
                theirs.pop(key, None)
            assert mine == theirs
        rows, total = await pg.search()
        assert total == 2 and [r["call_id"] for r in rows] == ["CA2", "CA1"]
        assert rows[0]["node"] == "b" and rows[1]["node"] == "a"
        lite_rows, _ = await lite.search()
        for mine_row, lite_row in zip(rows, lite_rows, strict=True):
            assert {k: mine_row[k] for k in lite_row} == lite_row
        assert [r["call_id"] for r in (await pg.search("TABLE"))[0]] == ["CA2"]  # transcript
        assert (await pg.search("", page=2, page_size=1))[0][0]["call_id"] == "CA1"
        assert len(await pg.export()) == 2
        await pg.write(record("CA1", 1000.0, text="again"))  # a rewrite replaces the row
        await settled(pg)
        again = await pg.get("CA1")
        assert again is not None and again["transcript"][0]["text"] == "again"
    finally:
        await pg.close()
        await lite.close()


async def test_secrets_and_phone_numbers_never_reach_the_database(fresh: str) -> None:
    secret = "sk-live-0123456789abcdef"
    store = await open_pg(fresh, Scrubber([secret], mask_phone_numbers=True))
    try:
        await store.write(record("CA1", 1000.0, text=f"my key is {secret}, call {CALLER}"))
        await settled(store)
        import asyncpg

        con = await asyncpg.connect(fresh)
        try:
            dump = " ".join(
                [
                    str(dict(r))
                    for table in ("calls", "transcript", "turns", "events")
                    for r in await con.fetch(f"SELECT * FROM {table}")
                ]
            )
        finally:
            await con.close()
        assert secret not in dump and CALLER not in dump
        assert "***" in dump and "+1******4321" in dump
    finally:
        await store.close()


async def test_schema_is_versioned_and_a_newer_one_refused(fresh: str) -> None:
    store = await open_pg(fresh)
    version = await store.db.fetchval("SELECT version FROM getpatter_schema")
    await store.close()
    assert version == len(MIGRATIONS)
    again = await open_pg(fresh)  # opening twice migrates nothing
    await again.db.execute("UPDATE getpatter_schema SET version = version + 1")
    await again.close()
    with pytest.raises(PatterConfigError, match="newer than this getpatter"):
        await open_pg(fresh)


async def test_open_call_claims_the_id_and_a_dead_node_s_rows_are_interrupted(fresh: str) -> None:
    a = await open_pg(fresh, node="a")
    try:
        opened = {k: v for k, v in record("CA1", 1000.0).items() if k != "transcript"}
        assert await a.open_call(opened)
        assert not await a.open_call(opened)  # a replayed webhook finds it taken
        await a.append_transcript(
            "CA1", 0, [{"role": "user", "text": "hi", "t": 1005.0}], started_at=1000.0
        )
        assert await a.open_call({**opened, "call_id": "CA2", "node": "b"})  # another node's
        await settled(a)
    finally:
        await a.close()
    restarted = await open_pg(fresh, node="a")
    try:
        assert await restarted.interrupt_active() == ["CA1"]  # not node b's call
        row = await restarted.get("CA1")
        assert row is not None
        assert (row["state"], row["end_reason"], row["ended_at"]) == (
            "interrupted",
            "interrupted",
            1005.0,
        )
        assert [e["text"] for e in row["transcript"]] == ["hi"]
    finally:
        await restarted.close()


async def test_an_outage_queues_records_and_writes_them_when_back(
    pg: services.LocalPostgres, fresh: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = await open_pg(fresh)
    try:
        await asyncio.to_thread(pg.stop)
        caplog.set_level(logging.WARNING, "getpatter.core.pg")
        started = asyncio.get_running_loop().time()
        await store.write(record("CA9", 9000.0))
        assert asyncio.get_running_loop().time() - started < 0.05  # the call did not wait
        for _ in range(100):
            if "unreachable" in caplog.text:
                break
            await asyncio.sleep(0.02)
        assert "unreachable" in caplog.text and redact_url(fresh) in caplog.text
        assert store.db.pending == 1
        got = await store.get("CA9")  # what is queued is still seen
        assert got is not None and got["call_id"] == "CA9"
        await asyncio.to_thread(pg.start)
        await settled(store, 15)
        assert "is back" in caplog.text
        with_db: Any = await store.db.fetchval("SELECT count(*) FROM calls WHERE call_id = 'CA9'")
        assert with_db == 1
    finally:
        if not (pg.data / "postmaster.pid").exists():
            await asyncio.to_thread(pg.start)
        await store.close()


async def test_the_queue_is_bounded_and_says_what_it_drops(
    pg: services.LocalPostgres, fresh: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = await open_pg(fresh)
    store.db.max_pending = 3
    try:
        await asyncio.to_thread(pg.stop)
        for i in range(3):
            await store.append_transcript(f"CA{i}", 0, [{"role": "user", "text": "x"}])
        await store.write(record("CAkeep", 1.0))
        await store.write(record("CAkeep2", 2.0))
        assert store.db.pending == 3
        assert "queue full" in caplog.text and "transcript of call" in caplog.text
    finally:
        await asyncio.to_thread(pg.start)
        await store.close()


def test_a_database_url_is_never_logged_with_its_password() -> None:
    assert redact_url("postgresql://u:hunter22@db:5432/x") == "postgresql://u:***@db:5432/x"


def test_the_database_url_comes_from_persist_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from getpatter import Patter, Twilio
    from getpatter.core.credentials import secret_values

    url = "postgresql://getpatter:hunter2-secret@db.internal:5432/calls"
    monkeypatch.setenv("GETPATTER_DATABASE_URL", url)
    twilio = Twilio("AC" + "0" * 32, "token-123456")
    phone = Patter(carrier=twilio, phone_number="+15550001234")
    assert phone.config.persist_root == url
    assert "hunter2-secret" not in repr(phone.config)
    assert "hunter2-secret" in secret_values(phone.config)  # scrubbed from records and logs
    explicit = Patter(carrier=twilio, phone_number="+15550001234", persist="postgres://x@h/db")
    assert explicit.config.persist_root == "postgres://x@h/db"
    with pytest.raises(PatterConfigError, match="postgresql://"):
        Patter(carrier=twilio, phone_number="+15550001234", persist="postgresql:")


async def test_a_bad_write_in_a_batch_is_dropped_alone(
    fresh: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = await open_pg(fresh)
    try:

        async def broken(con: Any) -> None:
            await con.execute("INSERT INTO no_such_table VALUES (1)")

        await store.write(record("CA1", 1000.0))  # three writes queued together: one batch
        store.db.submit(broken, "a broken write")
        await store.write(record("CA3", 3000.0))
        await settled(store)
        rows, total = await store.search()
        assert total == 2 and {r["call_id"] for r in rows} == {"CA1", "CA3"}
        assert "a broken write could not be written; dropped" in caplog.text
    finally:
        await store.close()

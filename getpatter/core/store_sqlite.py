"""Call history on disk: one SQLite file under the persist root, written off the event loop.

The `Store` of `store.py` over SQLite. All database work runs on a single worker thread (one
connection, never shared), so the event loop never waits on the disk and writes never
interleave; a call's final record is one transaction. The schema is versioned with
`PRAGMA user_version`; `MIGRATIONS[i]` takes a database from version i to i+1, so a file
written by an older getpatter is upgraded in place on open, and one from a newer getpatter is
refused rather than damaged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from getpatter.core.store import (
    ACTIVE,
    ENDED,
    INTERRUPTED,
    LATENCY_COLUMNS,
    RECORD_COLUMNS,
    SUMMARY_COLUMNS,
    Scrubber,
    clamp_page,
    summary,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def _statements(db: sqlite3.Connection, script: str) -> None:
    # not executescript(): it commits first, and a migration step must be one transaction
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1(db: sqlite3.Connection) -> None:
    _statements(
        db,
        """
        CREATE TABLE calls (
            call_id TEXT PRIMARY KEY,
            caller TEXT NOT NULL DEFAULT '',
            callee TEXT NOT NULL DEFAULT '',
            direction TEXT NOT NULL DEFAULT '',
            created_at REAL,
            started_at REAL,
            ended_at REAL,
            duration REAL,
            end_reason TEXT NOT NULL DEFAULT '',
            answered INTEGER NOT NULL DEFAULT 0,
            turns INTEGER NOT NULL DEFAULT 0,
            latency_p50_ms REAL,
            latency_p95_ms REAL,
            latency_max_ms REAL,
            cost_total REAL,
            currency TEXT NOT NULL DEFAULT '',
            pricing_version TEXT NOT NULL DEFAULT '',
            metrics TEXT NOT NULL DEFAULT '{}',
            extra TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX calls_by_time ON calls (coalesce(started_at, created_at));
        CREATE TABLE transcript (
            call_id TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            extra TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (call_id, seq)
        );
        CREATE TABLE turns (
            call_id TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
            turn_index INTEGER NOT NULL,
            engine TEXT NOT NULL DEFAULT '',
            user_text TEXT NOT NULL DEFAULT '',
            agent_text TEXT NOT NULL DEFAULT '',
            interrupted INTEGER NOT NULL DEFAULT 0,
            endpoint_ms REAL, stt_ms REAL, llm_ttft_ms REAL, llm_total_ms REAL,
            tts_ttfb_ms REAL, total_ms REAL, bargein_ms REAL,
            cost_total REAL,
            data TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (call_id, turn_index)
        );
        CREATE TABLE events (
            call_id TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            t REAL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (call_id, seq)
        );
        """,
    )


def _v2(db: sqlite3.Connection) -> None:
    """Rows from the first webhook: a call's state (`active` → `ended`, or `interrupted` when
    the process died); every row written before this version was a finished call."""
    _statements(
        db,
        """
        ALTER TABLE calls ADD COLUMN state TEXT NOT NULL DEFAULT 'ended';
        CREATE INDEX calls_active ON calls (state) WHERE state = 'active';
        """,
    )


#: MIGRATIONS[i] upgrades a database at schema version i to i + 1 (0: a new, empty file).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, migrations: list[Callable[[sqlite3.Connection], None]]) -> int:
    """Bring `db` to the newest schema, one version per transaction; returns the version."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(migrations):
        raise RuntimeError(
            f"call history schema version {version} is newer than this getpatter understands "
            f"({len(migrations)}); upgrade getpatter or use another persist= directory"
        )
    for target in range(version + 1, len(migrations) + 1):
        with db:  # one transaction per step: a failed step leaves the previous version
            db.execute("BEGIN")
            migrations[target - 1](db)
            db.execute(f"PRAGMA user_version = {target}")
        log.info("call history upgraded to schema version %d", target)
    return len(migrations)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _like(q: str) -> str:
    escaped = q.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_SEARCH = """
    (call_id LIKE :q ESCAPE '\\' OR caller LIKE :q ESCAPE '\\' OR callee LIKE :q ESCAPE '\\'
     OR end_reason LIKE :q ESCAPE '\\'
     OR EXISTS (SELECT 1 FROM transcript t WHERE t.call_id = calls.call_id
                AND t.text LIKE :q ESCAPE '\\'))
"""


class SQLiteStore:
    """Call history in `<persist_root>/calls.db`."""

    def __init__(self, path: str | os.PathLike[str], scrub: Scrubber | None = None) -> None:
        self.path = Path(path)
        self.scrub = scrub or Scrubber()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="getpatter-store")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> SQLiteStore:
        await self._run(self._open)
        return self

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None)  # transactions by hand
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA busy_timeout = 5000")
            migrate(db, MIGRATIONS)
        except BaseException:
            db.close()
            raise
        try:
            os.chmod(self.path, 0o600)  # transcripts are personal data
        except OSError:
            pass
        self._db = db

    # --- writing -------------------------------------------------------------------------

    async def write(self, record: dict[str, Any]) -> None:
        await self._run(self._write, self.scrub(record))

    def _write(self, record: dict[str, Any]) -> None:
        db = self._db
        if db is None:
            raise RuntimeError("the call store is closed")
        row = {**summary(record), "state": ENDED}
        known = {"transcript", "events", "metrics", *SUMMARY_COLUMNS}
        extra = {k: v for k, v in record.items() if k not in known}
        metrics = record.get("metrics") or {}
        call_id = row["call_id"]
        with db:
            db.execute("BEGIN")
            db.execute("DELETE FROM calls WHERE call_id = ?", (call_id,))  # children cascade
            db.execute(
                f"INSERT INTO calls ({', '.join(SUMMARY_COLUMNS)}, metrics, extra) "
                f"VALUES ({', '.join('?' * len(SUMMARY_COLUMNS))}, ?, ?)",
                (*(row[c] for c in SUMMARY_COLUMNS), _dumps(metrics), _dumps(extra)),
            )
            db.executemany(
                "INSERT INTO transcript (call_id, seq, role, text, extra) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        call_id,
                        i,
                        str(e.get("role", "")),
                        str(e.get("text", "")),
                        _dumps({k: v for k, v in e.items() if k not in ("role", "text")}),
                    )
                    for i, e in enumerate(record.get("transcript") or [])
                ],
            )
            db.executemany(
                "INSERT INTO turns (call_id, turn_index, engine, user_text, agent_text, "
                f"interrupted, {', '.join(LATENCY_COLUMNS)}, cost_total, data) "
                f"VALUES ({', '.join('?' * (8 + len(LATENCY_COLUMNS)))})",
                [
                    (
                        call_id,
                        int(t.get("turn_index", i)),
                        str(t.get("engine", "")),
                        str(t.get("user_text", "")),
                        str(t.get("agent_text", "")),
                        int(bool(t.get("interrupted"))),
                        *((t.get("latency") or {}).get(c) for c in LATENCY_COLUMNS),
                        (t.get("cost") or {}).get("total"),
                        _dumps(t),
                    )
                    for i, t in enumerate(metrics.get("turns") or [])
                ],
            )
            db.executemany(
                "INSERT INTO events (call_id, seq, t, kind, data) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        call_id,
                        i,
                        e.get("t"),
                        str(e.get("kind", "")),
                        _dumps({k: v for k, v in e.items() if k not in ("t", "kind")}),
                    )
                    for i, e in enumerate(record.get("events") or [])
                ],
            )

    async def open_call(self, record: dict[str, Any]) -> bool:
        return await self._run(self._open_call, self.scrub(record))

    def _open_call(self, record: dict[str, Any]) -> bool:
        db = self._db
        if db is None:
            raise RuntimeError("the call store is closed")
        row = {**summary(record), "state": ACTIVE}
        known = {"transcript", "events", "metrics", *SUMMARY_COLUMNS}
        extra = {k: v for k, v in record.items() if k not in known}
        with db:
            cursor = db.execute(
                f"INSERT INTO calls ({', '.join(SUMMARY_COLUMNS)}, metrics, extra) "
                f"VALUES ({', '.join('?' * len(SUMMARY_COLUMNS))}, '{{}}', ?) "
                "ON CONFLICT (call_id) DO NOTHING",
                (*(row[c] for c in SUMMARY_COLUMNS), _dumps(extra)),
            )
        return cursor.rowcount == 1

    async def append_transcript(
        self,
        call_id: str,
        first_seq: int,
        entries: list[dict[str, Any]],
        *,
        started_at: float | None = None,
    ) -> None:
        await self._run(self._append, call_id, first_seq, self.scrub(entries), started_at)

    def _append(
        self, call_id: str, first_seq: int, entries: list[dict[str, Any]], started_at: float | None
    ) -> None:
        db = self._db
        if db is None:
            raise RuntimeError("the call store is closed")
        with db:
            db.execute("BEGIN")
            active = db.execute(
                "SELECT 1 FROM calls WHERE call_id = ? AND state = ?", (call_id, ACTIVE)
            ).fetchone()
            if active is None:
                return  # ended (its whole record is there) or never opened
            db.executemany(
                "INSERT OR IGNORE INTO transcript (call_id, seq, role, text, extra) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        call_id,
                        first_seq + i,
                        str(e.get("role", "")),
                        str(e.get("text", "")),
                        _dumps({k: v for k, v in e.items() if k not in ("role", "text")}),
                    )
                    for i, e in enumerate(entries)
                ],
            )
            if started_at is not None:
                db.execute(
                    "UPDATE calls SET started_at = ?, answered = 1 WHERE call_id = ?",
                    (started_at, call_id),
                )

    async def interrupt_active(self) -> list[str]:
        return await self._run(self._interrupt_active)

    def _interrupt_active(self) -> list[str]:
        db = self._db
        if db is None:
            raise RuntimeError("the call store is closed")
        ids: list[str] = []
        with db:
            db.execute("BEGIN")
            rows = db.execute(
                "SELECT call_id, created_at, started_at FROM calls WHERE state = ?", (ACTIVE,)
            ).fetchall()
            for call_id, created_at, started_at in rows:
                # the end is unknown: the last thing said is the best estimate
                said = [
                    json.loads(extra).get("t")
                    for (extra,) in db.execute(
                        "SELECT extra FROM transcript WHERE call_id = ?", (call_id,)
                    )
                ]
                times = [t for t in said if isinstance(t, int | float)]
                ended_at = max(times, default=started_at or created_at)
                duration = round(ended_at - started_at, 3) if started_at and ended_at else 0.0
                db.execute(
                    "UPDATE calls SET state = ?, end_reason = 'interrupted', ended_at = ?, "
                    "duration = ? WHERE call_id = ?",
                    (INTERRUPTED, ended_at, duration, call_id),
                )
                ids.append(call_id)
        return ids

    # --- reading -------------------------------------------------------------------------

    def _query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        db = self._db
        if db is None:
            raise RuntimeError("the call store is closed")
        db.row_factory = sqlite3.Row
        return db.execute(sql, params).fetchall()

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        out = {c: row[c] for c in SUMMARY_COLUMNS}
        out["answered"] = bool(out["answered"])
        return out

    def _search(self, q: str, page: int, page_size: int) -> tuple[list[dict[str, Any]], int]:
        where, params = ("WHERE " + _SEARCH, {"q": _like(q)}) if q.strip() else ("", {})
        total = int(self._query(f"SELECT count(*) AS n FROM calls {where}", params)[0]["n"])
        rows = self._query(
            f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM calls {where} "
            "ORDER BY coalesce(started_at, created_at) DESC, rowid DESC "
            "LIMIT :limit OFFSET :offset",
            {**params, "limit": page_size, "offset": (page - 1) * page_size},
        )
        return [self._row(r) for r in rows], total

    async def search(
        self, q: str = "", page: int = 1, page_size: int = 50
    ) -> tuple[list[dict[str, Any]], int]:
        page, page_size = clamp_page(page, page_size)
        return await self._run(self._search, q, page, page_size)

    def _get(self, call_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM calls WHERE call_id = ?", (call_id,))
        if not rows:
            return None
        row = rows[0]
        record: dict[str, Any] = json.loads(row["extra"])
        record.update({c: v for c, v in self._row(row).items() if c in RECORD_COLUMNS})
        record["metrics"] = json.loads(row["metrics"])
        record["transcript"] = [
            {"role": r["role"], "text": r["text"], **json.loads(r["extra"])}
            for r in self._query(
                "SELECT role, text, extra FROM transcript WHERE call_id = ? ORDER BY seq",
                (call_id,),
            )
        ]
        record["events"] = [
            {"t": r["t"], "kind": r["kind"], **json.loads(r["data"])}
            for r in self._query(
                "SELECT t, kind, data FROM events WHERE call_id = ? ORDER BY seq", (call_id,)
            )
        ]
        return record

    async def get(self, call_id: str) -> dict[str, Any] | None:
        return await self._run(self._get, call_id)

    async def export(self, q: str = "") -> list[dict[str, Any]]:
        rows, _ = await self._run(self._search, q, 1, 2**31)
        return rows

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=False)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

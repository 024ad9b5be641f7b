"""Call history on disk: one SQLite file under the persist root, written off the event loop.

Every call's record — metadata, transcript, turn metrics, cost, events — is one transaction.
All database work runs on a single worker thread (one connection, never shared), so the event
loop never waits on the disk and writes never interleave. The schema is versioned with
`PRAGMA user_version`; `MIGRATIONS[i]` takes a database from version i to i+1, so a file
written by an older getpatter is upgraded in place on open, and one from a newer getpatter is
refused rather than damaged.

With `persist=False` the same interface is served from memory (`MemoryStore`): the dashboard
works, nothing outlives the process. Before anything is stored, known secret values are
replaced by `***` and, with `mask_phone_numbers`, phone numbers are masked (`scrub`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

DB_NAME = "calls.db"
MAX_PAGE_SIZE = 200
_PHONE = re.compile(r"\+[1-9][0-9]{7,14}")
T = TypeVar("T")

SUMMARY_COLUMNS = (
    "call_id",
    "caller",
    "callee",
    "direction",
    "created_at",
    "started_at",
    "ended_at",
    "duration",
    "end_reason",
    "answered",
    "turns",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_max_ms",
    "cost_total",
    "currency",
    "pricing_version",
)
# the record's own fields among them (the rest are derived from its metrics)
RECORD_COLUMNS = SUMMARY_COLUMNS[:10]
LATENCY_COLUMNS = (
    "endpoint_ms",
    "stt_ms",
    "llm_ttft_ms",
    "llm_total_ms",
    "tts_ttfb_ms",
    "total_ms",
    "bargein_ms",
)


# --- what may be stored ----------------------------------------------------------------------


def mask_phone(number: str) -> str:
    """`+15557654321` → `+1******4321`: enough to tell calls apart, not to dial."""
    return number[:2] + "*" * (len(number) - 6) + number[-4:]


class Scrubber:
    """Removes secrets (and, if asked, phone numbers) from anything JSON-shaped."""

    def __init__(self, secrets: Iterable[str] = (), *, mask_phone_numbers: bool = False) -> None:
        values = {s for s in secrets if isinstance(s, str) and len(s) >= 6}
        # the raw value, and how it looks inside a JSON string
        forms = {f for s in values for f in (s, json.dumps(s)[1:-1])}
        self._secrets = sorted(forms, key=len, reverse=True)
        self.mask_phone_numbers = mask_phone_numbers

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if self.mask_phone_numbers:
            text = _PHONE.sub(lambda m: mask_phone(m.group(0)), text)
        return text

    def __call__(self, obj: T) -> T:
        if not self._secrets and not self.mask_phone_numbers:
            return obj
        result: T = json.loads(self.text(json.dumps(obj, default=str)))
        return result


# --- the interface -----------------------------------------------------------------------------


class Store(Protocol):
    """What the server and the dashboard need from call history."""

    async def write(self, record: dict[str, Any]) -> None: ...
    async def search(
        self, q: str = "", page: int = 1, page_size: int = 50
    ) -> tuple[list[dict[str, Any]], int]: ...
    async def get(self, call_id: str) -> dict[str, Any] | None: ...
    async def export(self, q: str = "") -> list[dict[str, Any]]: ...
    async def close(self) -> None: ...


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """A record's row in the call list."""
    metrics = record.get("metrics") or {}
    latency = metrics.get("latency") or {}
    cost = metrics.get("cost") or {}
    return {
        "call_id": record.get("call_id", ""),
        "caller": record.get("caller", ""),
        "callee": record.get("callee", ""),
        "direction": record.get("direction", ""),
        "created_at": record.get("created_at"),
        "started_at": record.get("started_at"),
        "ended_at": record.get("ended_at"),
        "duration": record.get("duration"),
        "end_reason": record.get("end_reason", ""),
        "answered": bool(record.get("answered")),
        "turns": int(metrics.get("turn_count") or 0),
        "latency_p50_ms": latency.get("p50_ms"),
        "latency_p95_ms": latency.get("p95_ms"),
        "latency_max_ms": latency.get("max_ms"),
        "cost_total": cost.get("total"),
        "currency": cost.get("currency", ""),
        "pricing_version": metrics.get("pricing_version", ""),
    }


def _page(page: int, page_size: int) -> tuple[int, int]:
    return max(1, int(page)), min(MAX_PAGE_SIZE, max(1, int(page_size)))


def _sort_key(row: dict[str, Any]) -> float:
    return float(row.get("started_at") or row.get("created_at") or 0.0)


class MemoryStore:
    """Call history of this process only (`persist=False`), newest first, bounded."""

    def __init__(self, scrub: Scrubber | None = None, limit: int = 1000) -> None:
        self.scrub = scrub or Scrubber()
        self._records: dict[str, dict[str, Any]] = {}
        self._limit = limit

    async def write(self, record: dict[str, Any]) -> None:
        record = self.scrub(record)
        self._records.pop(record["call_id"], None)
        self._records[record["call_id"]] = record
        while len(self._records) > self._limit:
            self._records.pop(next(iter(self._records)))

    def _matching(self, q: str) -> list[dict[str, Any]]:
        needle = q.strip().lower()
        rows = []
        for record in self._records.values():
            if needle:
                hay = [str(record.get(k, "")) for k in ("call_id", "caller", "callee")]
                hay.append(str(record.get("end_reason", "")))
                hay += [str(e.get("text", "")) for e in record.get("transcript", [])]
                if not any(needle in h.lower() for h in hay):
                    continue
            rows.append(summary(record))
        return sorted(rows, key=_sort_key, reverse=True)

    async def search(
        self, q: str = "", page: int = 1, page_size: int = 50
    ) -> tuple[list[dict[str, Any]], int]:
        page, page_size = _page(page, page_size)
        rows = self._matching(q)
        return rows[(page - 1) * page_size : page * page_size], len(rows)

    async def get(self, call_id: str) -> dict[str, Any] | None:
        return self._records.get(call_id)

    async def export(self, q: str = "") -> list[dict[str, Any]]:
        return self._matching(q)

    async def close(self) -> None:
        return None


# --- SQLite ------------------------------------------------------------------------------------


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


#: MIGRATIONS[i] upgrades a database at schema version i to i + 1 (0: a new, empty file).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
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
        row = summary(record)
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
        page, page_size = _page(page, page_size)
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


def store_path(location: str) -> Path:
    """The SQLite file a history location names: a persist= directory (its `calls.db`), a
    `.db`/`.sqlite` file, or a `sqlite:///path` URL."""
    if location.startswith("sqlite://"):
        return Path(location.removeprefix("sqlite://").removeprefix("/") or DB_NAME).expanduser()
    path = Path(location).expanduser()
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return path
    return path / DB_NAME


async def open_store(
    location: str | None, scrub: Scrubber | None = None, *, fallback: bool = True
) -> Store:
    """The call history at `location` — the one place that decides which store to use.

    None: memory (persistence off). A `postgresql://` URL: PostgreSQL (many nodes). Anything
    else: SQLite (see `store_path`). If it cannot be opened, `fallback` keeps calls in memory
    (said loudly, since they will not be kept); without it the error is raised.
    """
    if location is None:
        return MemoryStore(scrub)
    if location.startswith(("postgresql://", "postgres://")):
        from getpatter.errors import PatterConfigError

        raise PatterConfigError(
            "PostgreSQL call history is not available in this version: use a directory or a "
            "SQLite file"
        )
    path = store_path(location)
    store = SQLiteStore(path, scrub)
    try:
        return await store.open()
    except Exception as exc:
        await store.close()
        if not fallback:
            raise
        log.error(
            "call history at %s cannot be used (%s); calls are kept in memory only. "
            "Pass Patter(persist=...) a writable directory, or persist=False",
            path,
            exc,
        )
        return MemoryStore(scrub)

"""Call history on disk: one SQLite file under the persist root, written off the event loop.

A call's row exists from its first webhook (`open_call`, state `active`, which also claims
the carrier's call id: a replayed webhook finds it taken), its transcript is appended in
batches while it runs (`append_transcript`), and its whole record — metadata, transcript,
turn metrics, cost, events — replaces the row in one transaction when it ends (`write`, state
`ended`). A process killed mid-call leaves `active` rows; the next start marks them
`interrupted` (`interrupt_active`), with what was said so far.

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
from collections import OrderedDict
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
    "state",
)
# the record's own fields among them (the rest are derived from its metrics)
RECORD_COLUMNS = (*SUMMARY_COLUMNS[:10], "state")
ACTIVE, ENDED, INTERRUPTED = "active", "ended", "interrupted"
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

    async def open_call(self, record: dict[str, Any]) -> bool:
        """The call's row, state `active`, from its first webhook; False (and nothing
        written) when a row with its call id exists already: a replay, or a duplicate."""
        ...

    async def append_transcript(
        self,
        call_id: str,
        first_seq: int,
        entries: list[dict[str, Any]],
        *,
        started_at: float | None = None,
    ) -> None:
        """Transcript entries `first_seq`, `first_seq + 1`, ... of an active call (and when
        its media started); a finished call's row is left alone."""
        ...

    async def write(self, record: dict[str, Any]) -> None:
        """The whole record of a call that ended (state `ended`), replacing its row."""
        ...

    async def interrupt_active(self) -> list[str]:
        """At start: calls left `active` by a process that died become `interrupted`
        (with their transcript so far); returns their ids."""
        ...

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
        "state": record.get("state", "ended"),
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
        self._claimed: OrderedDict[str, None] = OrderedDict()  # ids seen, beyond the records

    def _keep(self, record: dict[str, Any]) -> None:
        self._records.pop(record["call_id"], None)
        self._records[record["call_id"]] = record
        while len(self._records) > self._limit:
            self._records.pop(next(iter(self._records)))

    async def open_call(self, record: dict[str, Any]) -> bool:
        call_id = record["call_id"]
        if call_id in self._claimed or call_id in self._records:
            return False
        self._claimed[call_id] = None
        while len(self._claimed) > 10 * self._limit:
            self._claimed.popitem(last=False)
        self._keep({**self.scrub(record), "state": ACTIVE})
        return True

    async def append_transcript(
        self,
        call_id: str,
        first_seq: int,
        entries: list[dict[str, Any]],
        *,
        started_at: float | None = None,
    ) -> None:
        record = self._records.get(call_id)
        if record is None or record.get("state") != ACTIVE:
            return
        transcript = record.setdefault("transcript", [])
        for i, entry in enumerate(self.scrub(entries)):
            if first_seq + i == len(transcript):
                transcript.append({"role": entry.get("role", ""), "text": entry.get("text", "")})
        if started_at is not None:
            record["started_at"], record["answered"] = started_at, True

    async def write(self, record: dict[str, Any]) -> None:
        self._claimed[record["call_id"]] = None
        self._keep({**self.scrub(record), "state": ENDED})

    async def interrupt_active(self) -> list[str]:
        return []  # nothing outlives the process

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


async def open_store(persist_root: str | None, scrub: Scrubber | None = None) -> Store:
    """The call history for a persist root: SQLite there, or memory when persistence is off
    (or the directory cannot be used — said loudly, since those calls will not be kept)."""
    if persist_root is None:
        return MemoryStore(scrub)
    store = SQLiteStore(Path(persist_root) / DB_NAME, scrub)
    try:
        return await store.open()
    except Exception as exc:
        await store.close()
        log.error(
            "call history at %s cannot be used (%s); calls are kept in memory only. "
            "Pass Patter(persist=...) a writable directory, or persist=False",
            persist_root,
            exc,
        )
        return MemoryStore(scrub)

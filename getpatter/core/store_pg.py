"""Call history in PostgreSQL, shared by every node (`persist="postgresql://..."`).

The same records as the SQLite store (core/store.py) — one row per call with its transcript,
turn metrics and events, the same masking, a versioned schema — plus the node that held each
call, and the tables of the cluster (nodes and their heartbeats, live calls: see
core/cluster.py). Writes go through the database's queue (core/pg.py), so a call never
waits on the database and an outage only delays its record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from getpatter.core.pg import Database
from getpatter.core.store import (
    LATENCY_COLUMNS,
    MAX_PAGE_SIZE,
    SUMMARY_COLUMNS,
    Scrubber,
    summary,
)

log = logging.getLogger(__name__)

ACTIVE, ENDED, INTERRUPTED = "active", "ended", "interrupted"
OPEN_TIMEOUT = 1.0  # seconds a call's first webhook waits for its row before going on without
RECORD_FIELDS = (
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
)
COLUMNS = (
    *RECORD_FIELDS,
    "turns",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_max_ms",
    "cost_total",
    "currency",
    "pricing_version",
    "state",
    "node",
)
LISTED = tuple(dict.fromkeys((*SUMMARY_COLUMNS, "state", "node")))  # a row of the call list

_V1 = """
CREATE TABLE calls (
    call_id TEXT PRIMARY KEY,
    caller TEXT NOT NULL DEFAULT '',
    callee TEXT NOT NULL DEFAULT '',
    direction TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    duration DOUBLE PRECISION,
    end_reason TEXT NOT NULL DEFAULT '',
    answered BOOLEAN NOT NULL DEFAULT FALSE,
    turns INTEGER NOT NULL DEFAULT 0,
    latency_p50_ms DOUBLE PRECISION,
    latency_p95_ms DOUBLE PRECISION,
    latency_max_ms DOUBLE PRECISION,
    cost_total DOUBLE PRECISION,
    currency TEXT NOT NULL DEFAULT '',
    pricing_version TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'ended',
    node TEXT NOT NULL DEFAULT '',
    metrics TEXT NOT NULL DEFAULT '{}',
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX calls_by_time ON calls ((coalesce(started_at, created_at)));
CREATE INDEX calls_active ON calls (node) WHERE state = 'active';
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
    interrupted BOOLEAN NOT NULL DEFAULT FALSE,
    endpoint_ms DOUBLE PRECISION, stt_ms DOUBLE PRECISION, llm_ttft_ms DOUBLE PRECISION,
    llm_total_ms DOUBLE PRECISION, tts_ttfb_ms DOUBLE PRECISION, total_ms DOUBLE PRECISION,
    bargein_ms DOUBLE PRECISION,
    cost_total DOUBLE PRECISION,
    data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (call_id, turn_index)
);
CREATE TABLE events (
    call_id TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    t DOUBLE PRECISION,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (call_id, seq)
);
"""

_V2 = """
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'up',
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE live_calls (
    key TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    node TEXT NOT NULL,
    caller TEXT NOT NULL DEFAULT '',
    callee TEXT NOT NULL DEFAULT '',
    direction TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',
    created_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION
);
CREATE INDEX live_calls_by_node ON live_calls (node);
CREATE INDEX live_calls_by_call ON live_calls (call_id);
"""

#: MIGRATIONS[i] takes the database from schema version i to i + 1 (core/pg.py `migrate`).
MIGRATIONS: list[str] = [_V1, _V2]


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _like(q: str) -> str:
    escaped = q.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _extra(record: dict[str, Any]) -> dict[str, Any]:
    known = {"transcript", "events", "metrics", "state", *COLUMNS}
    return {k: v for k, v in record.items() if k not in known}


def _row(record: dict[str, Any], state: str, node: str) -> tuple[Any, ...]:
    row = {**summary(record), "state": state, "node": str(record.get("node") or node)}
    return tuple(row[c] for c in COLUMNS)


_INSERT_CALL = (
    f"INSERT INTO calls ({', '.join(COLUMNS)}, metrics, extra) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS) + 2))})"
)
_INSERT_TRANSCRIPT = (
    "INSERT INTO transcript (call_id, seq, role, text, extra) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (call_id, seq) DO NOTHING"
)
_SEARCH = """
    (call_id ILIKE $1 OR caller ILIKE $1 OR callee ILIKE $1 OR end_reason ILIKE $1
     OR EXISTS (SELECT 1 FROM transcript t WHERE t.call_id = calls.call_id
                AND t.text ILIKE $1))
"""


def _transcript_rows(call_id: str, first: int, entries: list[dict[str, Any]]) -> list[Any]:
    return [
        (
            call_id,
            first + i,
            str(e.get("role", "")),
            str(e.get("text", "")),
            _dumps({k: v for k, v in e.items() if k not in ("role", "text")}),
        )
        for i, e in enumerate(entries)
    ]


class PostgresStore:
    """Call history of every node, in one PostgreSQL database."""

    def __init__(self, db: Database, scrub: Scrubber | None = None, node: str = "") -> None:
        self.db = db
        self.scrub = scrub or Scrubber()
        self.node = node  # whose `active` rows `interrupt_active` may take as dead
        self._unwritten: dict[str, dict[str, Any]] = {}  # records queued, not yet in the table

    def __repr__(self) -> str:
        return f"PostgresStore({self.db!r}, node={self.node!r})"

    async def open(self) -> PostgresStore:
        await self.db.open(MIGRATIONS)
        return self

    # --- writing -------------------------------------------------------------------------

    async def open_call(self, record: dict[str, Any]) -> bool:
        """The call's row (state active) from its first webhook; False when its id is taken.
        With the database away the call is taken all the same and the row queued."""
        record = self.scrub(record)
        args = (*_row(record, ACTIVE, self.node), "{}", _dumps(_extra(record)))
        sql = _INSERT_CALL + " ON CONFLICT (call_id) DO NOTHING RETURNING call_id"
        try:  # on the webhook's path: a database that does not answer at once is away
            return bool(await asyncio.wait_for(self.db.fetchval(sql, *args), OPEN_TIMEOUT))
        except self.db.transient:
            pass

        async def insert(con: Any) -> None:
            await con.execute(sql, *args)

        self.db.submit(insert, f"the row of call {record['call_id']}")
        return True

    async def append_transcript(
        self,
        call_id: str,
        first_seq: int,
        entries: list[dict[str, Any]],
        *,
        started_at: float | None = None,
    ) -> None:
        rows = _transcript_rows(call_id, first_seq, self.scrub(entries))

        async def append(con: Any) -> None:
            active = await con.fetchval(
                "SELECT 1 FROM calls WHERE call_id = $1 AND state = $2 FOR UPDATE",
                call_id,
                ACTIVE,
            )
            if active is None:
                return  # ended (its whole record is there) or never opened
            await con.executemany(_INSERT_TRANSCRIPT, rows)
            if started_at is not None:
                await con.execute(
                    "UPDATE calls SET started_at = $2, answered = TRUE WHERE call_id = $1",
                    call_id,
                    started_at,
                )

        self.db.submit(append, f"transcript of call {call_id}", droppable=True)

    async def write(self, record: dict[str, Any]) -> None:
        """Queue the whole record of a call that ended; returns at once."""
        record = self.scrub(record)
        call_id = str(record.get("call_id", ""))
        self._unwritten[call_id] = record
        metrics = record.get("metrics") or {}
        call_args = (*_row(record, ENDED, self.node), _dumps(metrics), _dumps(_extra(record)))
        transcript = _transcript_rows(call_id, 0, list(record.get("transcript") or []))
        turns = [
            (
                call_id,
                int(t.get("turn_index", i)),
                str(t.get("engine", "")),
                str(t.get("user_text", "")),
                str(t.get("agent_text", "")),
                bool(t.get("interrupted")),
                *((t.get("latency") or {}).get(c) for c in LATENCY_COLUMNS),
                (t.get("cost") or {}).get("total"),
                _dumps(t),
            )
            for i, t in enumerate(metrics.get("turns") or [])
        ]
        events = [
            (
                call_id,
                i,
                e.get("t"),
                str(e.get("kind", "")),
                _dumps({k: v for k, v in e.items() if k not in ("t", "kind")}),
            )
            for i, e in enumerate(record.get("events") or [])
        ]

        async def replace(con: Any) -> None:
            await con.execute("DELETE FROM calls WHERE call_id = $1", call_id)  # children cascade
            await con.execute(_INSERT_CALL, *call_args)
            if transcript:
                await con.executemany(_INSERT_TRANSCRIPT, transcript)
            if turns:
                n = 8 + len(LATENCY_COLUMNS)
                await con.executemany(
                    "INSERT INTO turns (call_id, turn_index, engine, user_text, agent_text, "
                    f"interrupted, {', '.join(LATENCY_COLUMNS)}, cost_total, data) "
                    f"VALUES ({', '.join(f'${i + 1}' for i in range(n))})",
                    turns,
                )
            if events:
                await con.executemany(
                    "INSERT INTO events (call_id, seq, t, kind, data) VALUES ($1, $2, $3, $4, $5)",
                    events,
                )
            if self._unwritten.get(call_id) is record:
                del self._unwritten[call_id]

        self.db.submit(replace, f"the record of call {call_id}")

    async def interrupt_active(self) -> list[str]:
        """At start: this node's rows left `active` by a process of it that died."""

        async def mark(con: Any) -> list[str]:
            rows = await con.fetch(
                "SELECT call_id, created_at, started_at FROM calls "
                "WHERE state = $1 AND node = $2 FOR UPDATE",
                ACTIVE,
                self.node,
            )
            ids = []
            for row in rows:
                said = await con.fetchval(
                    "SELECT max((extra::json->>'t')::double precision) FROM transcript "
                    "WHERE call_id = $1 AND extra::json->>'t' ~ '^[0-9.eE+-]+$'",
                    row["call_id"],
                )
                started = row["started_at"]
                ended_at = said or started or row["created_at"]
                duration = round(ended_at - started, 3) if started and ended_at else 0.0
                await con.execute(
                    "UPDATE calls SET state = $2, end_reason = 'interrupted', ended_at = $3, "
                    "duration = $4 WHERE call_id = $1",
                    row["call_id"],
                    INTERRUPTED,
                    ended_at,
                    duration,
                )
                ids.append(row["call_id"])
            return ids

        ids: list[str] = await self.db.run(mark, transaction=True)
        return ids

    # --- reading -------------------------------------------------------------------------

    @staticmethod
    def _listed(row: Any) -> dict[str, Any]:
        return {c: row[c] for c in LISTED}

    async def search(
        self, q: str = "", page: int = 1, page_size: int = 50
    ) -> tuple[list[dict[str, Any]], int]:
        page, page_size = max(1, int(page)), min(MAX_PAGE_SIZE, max(1, int(page_size)))
        return await self._search(q, page_size, (page - 1) * page_size)

    async def _search(self, q: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        where, args = ("WHERE " + _SEARCH, [_like(q)]) if q.strip() else ("", [])
        n = len(args)

        async def go(con: Any) -> tuple[list[dict[str, Any]], int]:
            total = await con.fetchval(f"SELECT count(*) FROM calls {where}", *args)
            rows = await con.fetch(
                f"SELECT {', '.join(LISTED)} FROM calls {where} "
                "ORDER BY coalesce(started_at, created_at) DESC NULLS LAST, call_id DESC "
                f"LIMIT ${n + 1} OFFSET ${n + 2}",
                *args,
                limit,
                offset,
            )
            return [self._listed(r) for r in rows], int(total)

        return await self.db.run(go)

    async def get(self, call_id: str) -> dict[str, Any] | None:
        pending = self._unwritten.get(call_id)
        if pending is not None:
            return {**pending, "state": ENDED}

        async def go(con: Any) -> dict[str, Any] | None:
            row = await con.fetchrow("SELECT * FROM calls WHERE call_id = $1", call_id)
            if row is None:
                return None
            record: dict[str, Any] = json.loads(row["extra"])
            record.update({c: row[c] for c in (*RECORD_FIELDS, "state", "node")})
            record["metrics"] = json.loads(row["metrics"])
            record["transcript"] = [
                {"role": r["role"], "text": r["text"], **json.loads(r["extra"])}
                for r in await con.fetch(
                    "SELECT role, text, extra FROM transcript WHERE call_id = $1 ORDER BY seq",
                    call_id,
                )
            ]
            record["events"] = [
                {"t": r["t"], "kind": r["kind"], **json.loads(r["data"])}
                for r in await con.fetch(
                    "SELECT t, kind, data FROM events WHERE call_id = $1 ORDER BY seq", call_id
                )
            ]
            return record

        result: dict[str, Any] | None = await self.db.run(go)
        return result

    async def export(self, q: str = "") -> list[dict[str, Any]]:
        rows, _ = await self._search(q, 2**31 - 1, 0)
        return rows

    async def close(self) -> None:
        await self.db.close()


async def open_postgres_store(url: str, scrub: Scrubber | None, node: str) -> PostgresStore:
    """Call history in the PostgreSQL database at `url` (schema created or upgraded)."""
    return await PostgresStore(Database(url), scrub, node or default_node()).open()


def default_node() -> str:
    from getpatter.core.node import NodeSettings

    return NodeSettings().ident

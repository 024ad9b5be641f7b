"""PostgreSQL for many nodes: one connection pool, the schema's migrations, and the ordered
write queue that keeps a database outage away from the calls.

Every write a call causes (its record, its transcript so far, its row among the live calls)
is queued and written by one background task, in order, each in its own transaction: a call
never waits for the database, and while the database is unreachable the writes wait in the
queue (bounded: past `max_pending` the least valuable go first, said in the log) and are
written once it is back. Reads (the dashboard, a hang-up routed to another node) go straight
to the pool with a timeout, and fail cleanly while the database is away.

Needs asyncpg: `pip install 'getpatter[postgres]'`. Imported only when `persist=` names a
PostgreSQL URL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from getpatter.errors import PatterConfigError

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[["asyncpg.Connection"], Awaitable[Any]]
SCHEMES = ("postgresql://", "postgres://")
MAX_PENDING = 20_000  # queued writes kept through an outage
RETRY_MAX = 2.0  # seconds between tries of the head of the queue while the database is away
BATCH = 100  # queued writes committed together
LOCK_KEY = 0x6765_7470  # pg_advisory_xact_lock key: one node migrates at a time


def is_database_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEMES)


def database_password(url: str) -> str:
    """The password in a database URL ("" if none), to keep it out of logs and records."""
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def redact_url(url: str) -> str:
    """A database URL fit for a log line: `postgresql://user:***@host/db`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "postgresql://***"


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise PatterConfigError(
            "persist='postgresql://...' needs asyncpg: pip install 'getpatter[postgres]'"
        ) from None
    return asyncpg


def transient_errors() -> tuple[type[BaseException], ...]:
    """What a lost or restarting database raises: worth waiting out, never worth a call."""
    asyncpg = _asyncpg()
    exc = asyncpg.exceptions
    return (
        OSError,
        TimeoutError,
        exc.PostgresConnectionError,  # class 08
        exc.OperatorInterventionError,  # class 57: shutting down, cannot connect now
        exc.InterfaceError,  # the connection went away under us
        exc.InternalClientError,
    )


@dataclass(slots=True)
class _Write:
    op: Op
    what: str  # for the log: "the record of call CA…"
    droppable: bool  # a transcript batch or a live-call row: the record supersedes it


class Database:
    """A pool on one PostgreSQL database, its schema, and the write queue (see module doc)."""

    def __init__(self, url: str, *, max_pending: int = MAX_PENDING, timeout: float = 5.0) -> None:
        if not is_database_url(url):
            raise PatterConfigError("a PostgreSQL URL starts with postgresql://")
        self.url = url
        self.timeout = timeout
        self.max_pending = max_pending
        self.pool: Any = None  # asyncpg.Pool
        self._queue: deque[_Write] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._down_since: float | None = None  # monotonic time the current outage began
        self._dropped = 0
        self._in_flight = 0  # writes at the head of the queue being written now
        self._closing = False
        #: monotonic time since which the database has answered without a break (None: now
        #: it does not): another node's heartbeat is judged only after a full timeout of it
        self.reachable_since: float | None = None
        self.transient = transient_errors()

    def __repr__(self) -> str:
        return f"Database({redact_url(self.url)!r}, pending={len(self._queue)})"

    # --- life ----------------------------------------------------------------------------

    async def open(self, migrations: list[str]) -> None:
        """Connect and bring the schema up to date; a database that can't be reached now is
        a configuration error (said with the URL, password hidden)."""
        asyncpg = _asyncpg()
        try:
            self.pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=4, timeout=self.timeout, command_timeout=30
            )
            await migrate(self.pool, migrations)
        except (*self.transient, asyncpg.PostgresError) as exc:
            if self.pool is not None:
                await self.pool.close()
                self.pool = None
            raise PatterConfigError(
                f"cannot use the database {redact_url(self.url)}: {type(exc).__name__}: {exc}"
            ) from None
        self.reachable_since = time.monotonic()
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name="getpatter:db-writer"
        )

    async def close(self, flush_s: float = 15.0) -> None:
        """Write what is queued (for up to `flush_s` seconds; if the database is still away
        then, what is left is named in the log), then close the pool."""
        if self._closing:
            return
        self._closing = True
        if self._queue:
            deadline = time.monotonic() + flush_s
            while self._queue and time.monotonic() < deadline:
                self._wake.set()
                await asyncio.sleep(0.05)
        if self._queue:
            log.error(
                "database %s still unreachable at exit: %d writes lost (%s, ...)",
                redact_url(self.url),
                len(self._queue),
                self._queue[0].what,
            )
            self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except Exception:
                pool.terminate()

    # --- writing (queued) ----------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, op: Op, what: str, *, droppable: bool = False) -> None:
        """Queue `op(connection)` to run in a transaction of its own, after every write
        queued before it. Never waits, never raises."""
        if self.pool is None:
            log.error("database closed: %s not written", what)
            return
        if len(self._queue) >= self.max_pending:
            self._make_room()
        self._queue.append(_Write(op, what, droppable))
        self._wake.set()

    def _make_room(self) -> None:
        # the batch in flight is left alone; past it, drop a droppable write if any, else
        # the oldest
        start = self._in_flight
        victim = next((w for i, w in enumerate(self._queue) if i >= start and w.droppable), None)
        if victim is None and len(self._queue) > start:
            victim = self._queue[start]
        if victim is None:
            return
        self._queue.remove(victim)
        self._dropped += 1
        if self._dropped == 1 or self._dropped % 1000 == 0:
            log.error(
                "database write queue full (%d): dropped %s (%d dropped so far)",
                self.max_pending,
                victim.what,
                self._dropped,
            )

    async def _write_loop(self) -> None:
        """The head of the queue, up to BATCH writes in one transaction (one round trip of
        commit for many calls' journal lines); a write that fails for a reason other than a
        lost database is then found by writing that batch one by one, and dropped alone."""
        backoff = 0.1
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(itertools.islice(self._queue, BATCH))
            self._in_flight = len(batch)
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except self.transient as exc:
                self._in_flight = 0
                self._went_away(exc)
                await asyncio.sleep(backoff)
                backoff = min(RETRY_MAX, backoff * 2)
                continue
            self._in_flight = 0
            for item in batch:
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
            backoff = 0.1
            self._came_back()

    async def _write(self, batch: list[_Write]) -> None:
        try:
            async with self.pool.acquire(timeout=self.timeout) as con:
                async with con.transaction():
                    for item in batch:
                        await item.op(con)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, self.transient):
                raise
            if len(batch) == 1:
                log.exception("%s could not be written; dropped", batch[0].what)
                return
        for item in batch:  # one bad write in the batch: find it, keep the others
            await self._write([item])

    def _went_away(self, exc: BaseException) -> None:
        self.reachable_since = None
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "database %s unreachable (%s): calls go on, their records are queued "
                "(%d now) and written when it is back",
                redact_url(self.url),
                type(exc).__name__,
                len(self._queue),
            )

    def _came_back(self) -> None:
        if self.reachable_since is None:
            self.reachable_since = time.monotonic()
        if self._down_since is not None:
            log.warning(
                "database %s is back after %.1f s; writing the %d queued writes",
                redact_url(self.url),
                time.monotonic() - self._down_since,
                len(self._queue),
            )
            self._down_since = None

    # --- reading (direct) ----------------------------------------------------------------

    async def run(self, fn: Callable[[Any], Awaitable[T]], *, transaction: bool = False) -> T:
        """`fn(connection)` now, with the pool's timeout; raises what a lost database raises
        (and notes the outage, or the return)."""
        if self.pool is None:
            raise ConnectionError("the database is closed")
        try:
            async with self.pool.acquire(timeout=self.timeout) as con:
                if transaction:
                    async with con.transaction():
                        result = await fn(con)
                else:
                    result = await fn(con)
        except self.transient as exc:
            self._went_away(exc)
            raise
        self._came_back()
        return result

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        async def go(con: Any) -> list[Any]:
            rows: list[Any] = await con.fetch(sql, *args, timeout=self.timeout)
            return rows

        return await self.run(go)

    async def execute(self, sql: str, *args: Any) -> str:
        async def go(con: Any) -> str:
            status: str = await con.execute(sql, *args, timeout=self.timeout)
            return status

        return await self.run(go)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        async def go(con: Any) -> Any:
            return await con.fetchrow(sql, *args, timeout=self.timeout)

        return await self.run(go)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async def go(con: Any) -> Any:
            return await con.fetchval(sql, *args, timeout=self.timeout)

        return await self.run(go)


async def migrate(pool: Any, migrations: list[str]) -> int:
    """Bring the database to the newest schema, one version per transaction, under an
    advisory lock so nodes starting together don't race; a newer schema is refused."""
    async with pool.acquire() as con:
        for target in range(1, len(migrations) + 1):
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS getpatter_schema ("
                    "one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version INTEGER NOT NULL)"
                )
                version = await con.fetchval("SELECT version FROM getpatter_schema") or 0
                if version > len(migrations):
                    raise PatterConfigError(
                        f"call history schema version {version} is newer than this getpatter "
                        f"understands ({len(migrations)}); upgrade getpatter"
                    )
                if version >= target:
                    continue
                await con.execute(migrations[target - 1])
                await con.execute(
                    "INSERT INTO getpatter_schema (one, version) VALUES (TRUE, $1) "
                    "ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
                    target,
                )
                log.info("call history (PostgreSQL) upgraded to schema version %d", target)
    return len(migrations)

"""Call history: what is stored (scrubbed of secrets), the `Store` interface every backend
implements, the in-memory store, and `open_store` (SQLite under the persist root, see
`store_sqlite.py`, or memory).

A call's row exists from its first webhook (`open_call`, state `active`, which also claims
the carrier's call id: a replayed webhook finds it taken), its transcript is appended in
batches while it runs (`append_transcript`), and its whole record — metadata, transcript,
turn metrics, cost, events — replaces the row when it ends (`write`, state `ended`). A process
killed mid-call leaves `active` rows; the next start marks them `interrupted`
(`interrupt_active`), with what was said so far.

With `persist=False` the same interface is served from memory (`MemoryStore`): the dashboard
works, nothing outlives the process. Before anything is stored, known secret values are
replaced by `***` and, with `mask_phone_numbers`, phone numbers are masked (`scrub`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable
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


def clamp_page(page: int, page_size: int) -> tuple[int, int]:
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
        page, page_size = clamp_page(page, page_size)
        rows = self._matching(q)
        return rows[(page - 1) * page_size : page * page_size], len(rows)

    async def get(self, call_id: str) -> dict[str, Any] | None:
        return self._records.get(call_id)

    async def export(self, q: str = "") -> list[dict[str, Any]]:
        return self._matching(q)

    async def close(self) -> None:
        return None


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
    else: SQLite (see `store_path`, and `store_sqlite.py`). If it cannot be opened, `fallback`
    keeps calls in memory (said loudly, since they will not be kept); without it the error is
    raised.
    """
    if location is None:
        return MemoryStore(scrub)
    if location.startswith(("postgresql://", "postgres://")):
        from getpatter.errors import PatterConfigError

        raise PatterConfigError(
            "PostgreSQL call history is not available in this version: use a directory or a "
            "SQLite file"
        )
    from getpatter.core.store_sqlite import SQLiteStore

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

"""Calls written to history while they happen, so a crash loses at most a second of them.

A call's row is opened at its first webhook (`Store.open_call`). From then on the session
tells the journal when it changed (a transcript entry, the media starting); every `interval`
the journal appends what is new of each changed call (`Store.append_transcript`), one batch
per call, on the store's own worker thread, never on the event loop. When the call ends its
whole record replaces the row and the journal forgets it; if the process dies first, the next
start marks the row `interrupted` with what was said so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from getpatter.core.session import CallSession
    from getpatter.core.store import Store

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between two batches


class CallJournal:
    """The live calls' transcripts, appended to `store` in batches."""

    def __init__(self, store: Store, interval: float = INTERVAL) -> None:
        self._store = store
        self.interval = interval
        self._stored: dict[CallSession, tuple[int, bool]] = {}  # entries stored, started stored
        self._changed: set[CallSession] = set()
        self._task: asyncio.Task[None] | None = None

    def changed(self, session: CallSession) -> None:
        """`session` has something new to store (cheap: called from the call's own code)."""
        if session.state == "ended":
            return
        self._changed.add(session)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="journal")

    def forget(self, session: CallSession) -> None:
        """The call ended: its whole record is written by the server, not by the journal."""
        self._changed.discard(session)
        self._stored.pop(session, None)

    async def _run(self) -> None:
        while self._changed:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        """Store what changed since the last batch."""
        changed, self._changed = self._changed, set()
        for session in changed:
            if session.state == "ended":
                continue
            count, started = self._stored.get(session, (0, False))
            entries = session.transcript[count:]
            started_at = session.started_at if not started else None
            if not entries and started_at is None:
                continue
            try:
                await self._store.append_transcript(
                    session.call_id, count, [dict(e) for e in entries], started_at=started_at
                )
            except Exception as exc:
                log.warning("call %s: journaling the transcript failed: %s", session.call_id, exc)
                self._changed.add(session)  # tried again with the next batch
                continue
            if session.state != "ended":
                self._stored[session] = (count + len(entries), started or started_at is not None)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._changed.clear()
        self._stored.clear()

"""A one-line progress bar on stderr, redrawn in place; silent unless enabled."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """`update(n)` after each sample; `close()` ends the line. Draws at most ~10 times a
    second, so it costs the bench nothing measurable."""

    def __init__(
        self, label: str, total: int, *, enabled: bool = True, out: TextIO | None = None
    ) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.out = out or sys.stderr
        self.started = time.perf_counter()
        self._drawn = 0.0
        self._draw(force=True)

    def update(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self._draw(force=self.done == self.total)

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        elapsed = now - self.started
        self.out.write(
            f"\r  {self.label[:34]:<34} [{bar}] {self.done}/{self.total}  {elapsed:5.1f}s"
        )
        self.out.flush()

    @contextlib.asynccontextmanager
    async def ticking(self, every: float = 0.5) -> AsyncIterator[Progress]:
        """Redraw the elapsed time while the block runs, so a slow sample (a cold model, a
        remote provider) still shows the bench is alive; closes the bar at the end."""
        task = asyncio.ensure_future(self._tick(every)) if self.enabled else None
        try:
            yield self
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self.close()

    async def _tick(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self._draw(force=True)

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self.out.write("\n")
            self.out.flush()

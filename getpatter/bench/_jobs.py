"""Running a bench's runs, `concurrency` at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def run_jobs(runs: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
    """`job(1)` … `job(runs)`, at most `concurrency` at once, all awaited (cancelled together)."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def gated(run: int) -> None:
        async with gate:
            await job(run)

    async with asyncio.TaskGroup() as group:
        for run in range(1, runs + 1):
            group.create_task(gated(run))

"""Real-time pacing for the fakes that stream audio, on an absolute schedule.

Sleeping a chunk's length after each send adds every send's own time to the stream: over a
few seconds of audio a fake "at real time" falls behind it by tens of milliseconds, and the
client's playout runs dry where the real service (which streams at or faster than real time)
would not. So chunk k goes out at the stream's start plus the audio before it, over `speed`.
"""

from __future__ import annotations

import asyncio


class Pace:
    """One stream's schedule: `await pace.sent(seconds)` after each chunk of that much audio."""

    def __init__(self, speed: float) -> None:
        self.speed = speed  # × real time; 0: unpaced
        self._due: float | None = None

    async def sent(self, seconds: float) -> None:
        if not self.speed:  # unpaced: as fast as the socket takes it, as before
            return
        loop = asyncio.get_running_loop()
        if self._due is None:
            self._due = loop.time()
        self._due += seconds / self.speed
        await asyncio.sleep(max(0.0, self._due - loop.time()))

"""What the provider tests (TTS, LLM) repeat around a whole call and their packaging: hanging
up and waiting for the call's end record, and which modules importing a plugin loads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from getpatter.testing.twilio import FakeCall


def fake_fixture(cls: Any, *args: Any) -> Any:
    """The `fake` fixture of one provider's test file: `cls(*args)`, serving for the test."""

    @pytest.fixture
    async def fake() -> AsyncIterator[Any]:
        async with cls(*args) as f:
            yield f

    return fake


async def poll(until: Callable[[], object], tries: int, every: float) -> None:
    """Check `until()` up to `tries` times, `every` seconds apart; return once it holds or
    the tries are used up (the caller asserts what it needs)."""
    for _ in range(tries):
        if until():
            return
        await asyncio.sleep(every)


async def hang_up(
    s: Any, call: FakeCall, also: Callable[[], object] = lambda: True, tries: int = 50
) -> dict[str, Any]:
    """Hang up, then poll (up to `tries` × 50 ms) until the call's `on_call_end` record is in
    and `also()` holds (e.g. the fake's sessions closed): the record."""
    await call.hangup()
    await call.wait_ended()
    await poll(lambda: s.events.get("on_call_end") and also(), tries, 0.05)
    record: dict[str, Any] = s.events["on_call_end"][0]
    return record


def said(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of each entry of an end record's transcript."""
    return [(e["role"], e["text"]) for e in record["transcript"]]


def peak(audio: np.ndarray) -> int:
    """The loudest sample: real speech came down the line when it is well above the noise."""
    return int(np.abs(audio.astype(np.int32)).max())


def loaded_on_import(plugin: str, prefixes: tuple[str, ...]) -> str:
    """In a fresh interpreter, `import getpatter` and `from getpatter.plugins.<plugin> import *`:
    the printed list of loaded modules that start with one of `prefixes` (a lazy plugin: [])."""
    code = (
        f"import getpatter, sys\nfrom getpatter.plugins.{plugin} import *\n"
        f"print([m for m in sys.modules if m.startswith({prefixes!r})])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()

"""Batched socket reads (core/iobatch.py): an idle loop reads its sockets at most once per
window, a timer due sooner still fires on time and runs before the batch's reads, and the
playout tick turns batching on for its loop while it runs.

`_BatchedSelect` is driven with a recorded clock: its waits are recorded, not slept."""

from __future__ import annotations

import asyncio
import selectors

import pytest

from getpatter.carriers.twilio.wire import TwilioMediaEncoder
from getpatter.core.iobatch import _BatchedSelect, batch_io, window_from_env
from getpatter.core.playout import Playout, PlayoutScheduler
from getpatter.testing.clock import VirtualClockLoop

Ready = list[tuple[selectors.SelectorKey, int]]


class Clock:
    """A monotonic clock that moves only when slept on, and a poll that records its calls."""

    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []
        self.polls: list[tuple[float, float | None]] = []  # (when, timeout)
        self.incoming: Ready = [(selectors.SelectorKey(None, 3, 1, None), 1)]  # type: ignore[arg-type]

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.t += seconds

    def poll(self, timeout: float | None) -> Ready:
        self.polls.append((round(self.t, 6), None if timeout is None else round(timeout, 6)))
        return self.incoming


def batched(window: float = 0.010) -> tuple[_BatchedSelect, Clock]:
    clock = Clock()
    select = _BatchedSelect(clock.poll, window)
    select.sleep, select.now = clock.sleep, clock.now
    return select, clock


def test_an_idle_loop_reads_its_sockets_at_most_once_per_window() -> None:
    select, clock = batched(0.010)
    select(None)  # first wait: nothing read recently, so no extra wait
    clock.t += 0.002  # the batch took 2 ms to process
    select(None)  # waits out the rest of the window before reading again
    clock.t += 0.001
    select(5.0)  # a far timer changes nothing
    assert clock.slept == [0.008, 0.009]
    assert [when for when, _ in clock.polls] == [100.0, 100.01, 100.02]
    assert clock.polls[2][1] == pytest.approx(4.991)  # the timer's deadline is kept


def test_a_quiet_loop_waits_on_its_sockets_directly() -> None:
    select, clock = batched(0.010)
    clock.incoming = []  # no message came: an idle node, or timers only
    select(None)
    clock.t += 0.002
    select(0.5)
    assert clock.slept == []  # no wait before the poll: one wake-up, as without batching
    clock.incoming = clock.__class__().incoming  # messages flow again
    select(0.5)
    clock.t += 0.001
    select(0.5)
    assert clock.slept == [0.009]


def test_a_loop_with_work_ready_never_waits() -> None:
    select, clock = batched(0.010)
    select(None)
    for _ in range(5):
        select(0)
    assert clock.slept == []
    assert len(clock.polls) == 6


def test_a_timer_due_within_the_window_fires_on_time_before_the_reads() -> None:
    select, clock = batched(0.010)
    select(None)  # reads at 100.000; the next read is due at 100.010
    clock.t += 0.001
    assert select(0.003) == []  # the tick is due in 3 ms: wake exactly then, read nothing
    assert clock.slept == [0.003]
    assert len(clock.polls) == 1
    select(0)  # the tick has run; the loop reads what came in, and a new window opens
    assert clock.polls[-1] == (100.004, 0)
    select(None)
    assert clock.slept[-1] == pytest.approx(0.010)


def test_batching_turns_on_and_off_with_its_users() -> None:
    loop = asyncio.new_event_loop()
    try:
        selector = loop._selector  # type: ignore[attr-defined]
        first, second = batch_io(loop, 0.01), batch_io(loop, 0.01)
        assert isinstance(selector.select, _BatchedSelect)
        first()
        first()  # a second release by the same user is a no-op
        assert isinstance(selector.select, _BatchedSelect)
        second()
        assert not isinstance(selector.select, _BatchedSelect)
        assert batch_io(loop, 0.0) is not None
        assert not isinstance(selector.select, _BatchedSelect)  # window 0: off
    finally:
        loop.close()


def test_the_virtual_clock_is_never_batched() -> None:
    loop = VirtualClockLoop()
    try:
        release = batch_io(loop, 0.01)
        assert not isinstance(loop._selector.select, _BatchedSelect)  # type: ignore[attr-defined]
        release()
    finally:
        loop.close()


def test_window_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GETPATTER_IO_BATCH_MS", raising=False)
    assert window_from_env() == 0.010
    monkeypatch.setenv("GETPATTER_IO_BATCH_MS", "0")
    assert window_from_env() == 0.0
    monkeypatch.setenv("GETPATTER_IO_BATCH_MS", "4")
    assert window_from_env() == 0.004
    monkeypatch.setenv("GETPATTER_IO_BATCH_MS", "lots")
    assert window_from_env() == 0.010


async def test_the_playout_tick_batches_its_loop_while_it_runs() -> None:
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    scheduler = PlayoutScheduler()

    class Sink:
        def writable(self) -> bool:
            return True

        async def send(self, message: str) -> None:
            return None

    scheduler.attach(Playout(TwilioMediaEncoder("MZ1"), Sink()))
    assert isinstance(selector.select, _BatchedSelect)
    await asyncio.sleep(0.001)  # the loop runs through a batched wait
    await scheduler.aclose()
    assert not isinstance(selector.select, _BatchedSelect)

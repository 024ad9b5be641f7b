"""Playout pacing, marks, clear and 'what was heard', on a virtual clock (exact and instant)."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from getpatter.core.audio import AudioFrame
from getpatter.core.playout import Playout, PlayoutOptions, PlayoutScheduler
from getpatter.testing.clock import run_virtual


class Encoder:
    def media(self, payload: bytes) -> str:
        return json.dumps({"event": "media", "n": len(payload), "first": payload[:1].hex()})

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "name": name})

    def clear(self) -> str:
        return json.dumps({"event": "clear"})


class Carrier:
    """A sink that plays what it receives at real time and echoes marks when played."""

    def __init__(self) -> None:
        self.log: list[tuple[float, dict[str, object]]] = []
        self.playout: Playout | None = None
        self.buffer_end = 0.0
        self.echo_tasks: list[asyncio.TimerHandle] = []
        self.echoed: list[str] = []
        self.open = True

    def writable(self) -> bool:
        return self.open

    async def send(self, message: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        msg = json.loads(message)
        self.log.append((now, msg))
        if msg["event"] == "media":
            self.buffer_end = max(self.buffer_end, now) + int(msg["n"]) / 8000
        elif msg["event"] == "mark":
            name = str(msg["name"])
            self.echo_tasks.append(loop.call_at(max(now, self.buffer_end), self._echo, name))
        elif msg["event"] == "clear":
            self.buffer_end = now
            for handle in self.echo_tasks:
                handle.cancel()

    def _echo(self, name: str) -> None:
        self.echoed.append(name)
        assert self.playout is not None
        self.playout.on_mark(name)

    def media_times(self) -> list[float]:
        return [t for t, m in self.log if m["event"] == "media"]


def make(opts: PlayoutOptions | None = None) -> tuple[Playout, Carrier, PlayoutScheduler]:
    carrier = Carrier()
    playout = Playout(Encoder(), carrier, opts)
    carrier.playout = playout
    sched = PlayoutScheduler()
    sched.attach(playout)
    return playout, carrier, sched


def test_frames_are_paced_at_real_time_with_a_small_lead() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        playout, carrier, sched = make()
        t0 = loop.time()
        playout.begin("hello")
        playout.play(b"\x55" * 8000)  # one second of audio
        done = playout.end("hello")
        assert await asyncio.wait_for(done, 5) is True
        times = carrier.media_times()
        assert len(times) == 50
        # The first 100 ms go out at once (the lead), then one frame per 20 ms tick.
        assert times[4] - t0 < 1e-9
        gaps = np.diff(times[5:])
        assert np.allclose(gaps, 0.02, atol=1e-6)
        # Never more than the lead ahead of what the carrier plays.
        for i, t in enumerate(times):
            play_start = t0 + i * 0.02
            assert play_start - t <= 0.1 + 1e-9
        # The utterance is reported played when its audio has played, not when sent.
        assert loop.time() - t0 >= 1.0 - 1e-9
        await sched.aclose()

    run_virtual(main())


def test_marks_track_what_was_heard() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        playout, _carrier, sched = make()
        t0 = loop.time()
        playout.begin("a")
        playout.play(b"\x55" * 16000)  # two seconds
        playout.end("a")
        await asyncio.sleep(0.75)
        heard = playout.heard_seconds("a")
        assert abs(heard - 0.75) <= 0.02
        assert abs(loop.time() - t0 - 0.75) < 1e-9
        await sched.aclose()

    run_virtual(main())


def test_clear_drops_unplayed_audio_and_cuts_the_utterance() -> None:
    async def main() -> None:
        playout, carrier, sched = make()
        playout.begin("reply")
        playout.play(b"\x55" * 16000)
        done = playout.end("reply")
        await asyncio.sleep(0.5)
        await playout.clear()
        assert done.done() and done.result() is False
        heard = playout.heard_seconds("reply")
        assert abs(heard - 0.5) <= 0.02
        sent_before = len(carrier.media_times())
        await asyncio.sleep(0.5)
        # Nothing of the interrupted utterance is sent after the clear.
        assert len(carrier.media_times()) == sent_before
        assert playout.heard_seconds("reply") == heard
        # Sent audio never ran more than the lead ahead of the clear point.
        assert sent_before * 0.02 <= 0.5 + 0.1 + 0.02
        # A new utterance plays normally afterwards.
        playout.begin("next")
        playout.play(b"\x11" * 800)
        assert await asyncio.wait_for(playout.end("next"), 2) is True
        await sched.aclose()

    run_virtual(main())


def test_int16_frames_at_other_rates_are_converted_once() -> None:
    async def main() -> None:
        playout, carrier, sched = make()
        playout.begin("tts")
        tone = (np.sin(np.arange(24000) * 2 * np.pi * 440 / 24000) * 8000).astype(np.int16)
        for i in range(0, 24000, 480):  # 20 ms chunks at 24 kHz
            playout.play(AudioFrame(tone[i : i + 480], 24000, i / 24000))
        await asyncio.wait_for(playout.end("tts"), 3)
        total = sum(int(m["n"]) for _, m in carrier.log if m["event"] == "media")  # type: ignore[call-overload]
        assert abs(total - 8000) <= 16
        await sched.aclose()

    run_virtual(main())


def test_stalled_sink_does_not_block_other_calls() -> None:
    async def main() -> None:
        a, carrier_a, sched = make()
        carrier_b = Carrier()
        b = Playout(Encoder(), carrier_b)
        carrier_b.playout = b
        sched.attach(b)
        carrier_a.open = False  # a's peer stopped reading
        a.play(b"\x55" * 4000)
        b.begin("b")
        b.play(b"\x55" * 4000)
        assert await asyncio.wait_for(b.end("b"), 2) is True
        assert a.stats.stalls > 0 and not carrier_a.log
        await sched.aclose()

    run_virtual(main())


def test_scheduler_sleeps_when_idle() -> None:
    async def main() -> None:
        playout, _carrier, sched = make()
        playout.begin("x")
        playout.play(b"\x55" * 800)
        await playout.end("x")
        ticks = sched.ticks
        await asyncio.sleep(10)
        assert sched.ticks - ticks <= 2
        await sched.aclose()

    run_virtual(main())

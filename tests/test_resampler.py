"""The streaming Resampler: matches one-shot soxr, keeps the timeline, never smears gaps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soxr

from getpatter.core.audio import (
    AudioFrame,
    Int16Array,
    float32_to_int16,
    int16_to_float32,
)
from getpatter.core.resample import Resampler

RATE_PAIRS = [(8000, 16000), (24000, 8000), (16000, 24000), (44100, 16000), (16000, 8000)]


def tone(rate: int, seconds: float, freq: float = 440.0, amplitude: float = 12000.0) -> Int16Array:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def frames(samples: Int16Array, rate: int, start: float = 0.0, ms: int = 20) -> list[AudioFrame]:
    """Cut samples into carrier-style frames with continuous timestamps."""
    n = rate * ms // 1000
    return [
        AudioFrame(samples[i : i + n], rate, start + i / rate) for i in range(0, len(samples), n)
    ]


def run(resampler: Resampler, inputs: list[AudioFrame]) -> list[AudioFrame]:
    """Every frame the resampler returns for `inputs`, then its flush."""
    return [resampler.process(f) for f in inputs] + [resampler.flush()]


def joined(outputs: list[AudioFrame]) -> Int16Array:
    return np.concatenate([f.samples for f in outputs])


def assert_contiguous(outputs: list[AudioFrame]) -> None:
    """Each non-empty output frame starts where the previous non-empty one ended."""
    nonempty = [f for f in outputs if len(f.samples)]
    for a, b in itertools.pairwise(nonempty):
        assert b.timestamp == pytest.approx(a.end, abs=1e-9)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_streaming_over_20ms_frames_matches_one_shot(in_rate: int, out_rate: int) -> None:
    x = tone(in_rate, 1.0) + tone(in_rate, 1.0, freq=1234.0, amplitude=5000.0)
    streamed = joined(run(Resampler(in_rate, out_rate), frames(x, in_rate)))
    assert streamed.dtype == np.int16
    edge = out_rate // 100  # 10 ms at each end
    # Against one-shot soxr on the same float32 path: equal but for rounding at the edges.
    one_shot = float32_to_int16(soxr.resample(int16_to_float32(x), in_rate, out_rate, "HQ"))
    assert len(streamed) == len(one_shot)
    diff = np.abs(streamed.astype(np.int32) - one_shot)
    assert diff[edge:-edge].max() <= 1
    assert diff.max() <= 8
    # Against soxr's own int16 one-shot, which dithers: within a few LSB.
    dithered = soxr.resample(x, in_rate, out_rate, quality="HQ")
    assert abs(len(streamed) - len(dithered)) <= 1
    n = min(len(streamed), len(dithered))
    assert np.abs(streamed[:n].astype(np.int32) - dithered[:n])[edge:-edge].max() <= 4


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_lengths_add_up_after_flush(in_rate: int, out_rate: int, frame_ms: int) -> None:
    for seconds in (0.02, 0.5, 1.37):
        x = tone(in_rate, seconds)
        outputs = run(Resampler(in_rate, out_rate), frames(x, in_rate, ms=frame_ms))
        assert abs(len(joined(outputs)) - len(x) * out_rate / in_rate) <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (24000, 8000)])
def test_timestamps_continue_the_input_timeline(in_rate: int, out_rate: int) -> None:
    start = 12.34
    x = np.zeros(in_rate, np.int16)
    x[in_rate // 4] = 30000  # a click 250 ms in
    outputs = run(Resampler(in_rate, out_rate), frames(x, in_rate, start=start))
    assert all(f.sample_rate == out_rate for f in outputs)
    assert_contiguous(outputs)
    first = next(f for f in outputs if len(f.samples))
    assert first.timestamp == pytest.approx(start)
    assert outputs[-1].end == pytest.approx(start + 1.0)
    # The click comes out at the same stream time it went in.
    y = joined(outputs)
    click_at = start + int(np.argmax(np.abs(y))) / out_rate
    assert click_at == pytest.approx(start + 0.25, abs=1.5 / out_rate)


def test_8k_to_16k_and_24k_to_8k_preserve_a_tone() -> None:
    for in_rate, out_rate in [(8000, 16000), (24000, 8000)]:
        outputs = run(Resampler(in_rate, out_rate), frames(tone(in_rate, 1.0), in_rate))
        y = joined(outputs)[out_rate // 10 : -out_rate // 10].astype(np.float64)
        expected = tone(out_rate, 1.0)[out_rate // 10 : -out_rate // 10]
        assert np.sqrt(np.mean((y - expected) ** 2)) < 30  # of a 12000 amplitude tone


@pytest.mark.parametrize("quality", ["HQ", "QQ", "LQ", "VHQ"])
@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (24000, 8000)])
def test_gap_does_not_leak_old_audio_into_new(in_rate: int, out_rate: int, quality: str) -> None:
    """Loud tone, 100 ms with no frames, then silence: everything after the gap is silent."""
    loud = frames(tone(in_rate, 0.2, amplitude=30000.0), in_rate, start=0.0)
    gap_end = 0.3
    quiet = frames(np.zeros(in_rate * 3 // 10, np.int16), in_rate, start=gap_end)
    resampler = Resampler(in_rate, out_rate, quality=quality)
    outputs = run(resampler, loud + quiet)

    assert_contiguous([f for f in outputs if f.end <= 0.2 + 1e-9])
    assert_contiguous([f for f in outputs if f.timestamp >= gap_end - 1e-9])
    old = [f for f in outputs if len(f.samples) and f.timestamp < gap_end - 1e-9]
    new = [f for f in outputs if len(f.samples) and f.timestamp >= gap_end - 1e-9]
    # No frame straddles the gap: old audio ends at the tone's end, new starts after the gap.
    assert all(f.end <= 0.2 + 1e-9 for f in old)
    # All the old audio came out (its tail was flushed, not dropped) ...
    assert abs(sum(len(f.samples) for f in old) - 0.2 * out_rate) <= 1
    # ... and none of it leaked past the gap.
    assert sum(len(f.samples) for f in new) == pytest.approx(0.3 * out_rate, abs=1)
    assert not joined(new).any()


def test_without_the_gap_the_same_signal_does_ring_into_the_silence() -> None:
    """Control for the gap test: contiguous tone → silence does smear, so the test can fail."""
    loud = frames(tone(8000, 0.2, amplitude=30000.0), 8000, start=0.0)
    quiet = frames(np.zeros(2400, np.int16), 8000, start=0.2)
    y = joined(run(Resampler(8000, 16000), loud + quiet))
    assert np.abs(y[3200 : 3200 + 80]).max() > 100  # the first 5 ms after the tone


def test_gap_with_immediate_output_is_held_then_returned_contiguously() -> None:
    """QQ emits output on every frame, so the first post-gap output must wait its turn."""
    r = Resampler(8000, 16000, quality="QQ")
    first = [r.process(f) for f in frames(tone(8000, 0.1), 8000, start=0.0)]
    at_gap = r.process(AudioFrame(np.full(160, 1000, np.int16), 8000, 0.5))
    # The frame returned at the gap is only the old stream's tail, at its true time.
    assert at_gap.end == pytest.approx(0.1)
    assert at_gap.timestamp == pytest.approx(first[-1].end)
    after = r.process(AudioFrame(np.full(160, 1000, np.int16), 8000, 0.52))
    assert after.timestamp == pytest.approx(0.5)
    tail = r.flush()
    assert tail.timestamp == pytest.approx(after.end)
    assert tail.end == pytest.approx(0.54)


def test_small_jitter_is_not_a_gap() -> None:
    x = tone(8000, 0.5)
    steady = joined(run(Resampler(8000, 16000), frames(x, 8000)))
    jittered = [
        AudioFrame(f.samples, 8000, f.timestamp + (0.003 if i % 2 else -0.002))
        for i, f in enumerate(frames(x, 8000))
    ]
    np.testing.assert_array_equal(joined(run(Resampler(8000, 16000), jittered)), steady)


def test_custom_tolerance() -> None:
    r = Resampler(8000, 16000, quality="QQ", gap_tolerance=0.001)
    first = r.process(AudioFrame(np.zeros(160, np.int16), 8000, 1.0))
    second = r.process(AudioFrame(np.zeros(160, np.int16), 8000, 1.0205))  # 0.5 ms late: fine
    assert second.timestamp == pytest.approx(first.end)
    tail = r.process(AudioFrame(np.zeros(160, np.int16), 8000, 1.042))  # 1.5 ms late: a gap
    assert tail.end == pytest.approx(1.04)  # the old stream, on its own timeline
    assert r.flush().end == pytest.approx(1.062)


def test_frames_without_timestamps_stream_as_one() -> None:
    """Early (e.g. all-zero) timestamps are not gaps: frames from a TTS may carry none."""
    x = tone(24000, 0.5)
    stamped = joined(run(Resampler(24000, 8000), frames(x, 24000)))
    unstamped = [AudioFrame(f.samples, 24000) for f in frames(x, 24000)]
    outputs = run(Resampler(24000, 8000), unstamped)
    np.testing.assert_array_equal(joined(outputs), stamped)
    assert_contiguous(outputs)
    assert outputs[-1].end == pytest.approx(0.5)


def test_reset_drops_held_audio() -> None:
    r = Resampler(8000, 16000)
    for f in frames(tone(8000, 0.06, amplitude=30000.0), 8000):
        r.process(f)
    r.reset()  # e.g. barge-in: nothing of the old turn may come out
    outputs = run(r, frames(np.zeros(1600, np.int16), 8000, start=1.0))
    assert not joined(outputs).any()
    assert len(joined(outputs)) == 3200


def test_flush_restarts_the_stream() -> None:
    r = Resampler(24000, 8000)
    first = run(r, frames(tone(24000, 0.3), 24000, start=0.0))
    second = run(r, frames(tone(24000, 0.3), 24000, start=10.0))
    np.testing.assert_array_equal(joined(first), joined(second))
    assert next(f for f in second if len(f.samples)).timestamp == pytest.approx(10.0)
    empty = r.flush()
    assert len(empty.samples) == 0 and empty.sample_rate == 8000


def test_equal_rates_pass_frames_through_untouched() -> None:
    r = Resampler(16000, 16000)
    frame = AudioFrame(tone(16000, 0.02), 16000, 3.0)
    assert r.process(frame) is frame
    assert r.passthrough
    tail = r.flush()
    assert len(tail.samples) == 0 and tail.timestamp == pytest.approx(3.02)


def test_bad_frames_are_rejected() -> None:
    r = Resampler(8000, 16000)
    with pytest.raises(ValueError, match="8000"):
        r.process(AudioFrame(np.zeros(320, np.int16), 16000, 0.0))
    with pytest.raises(TypeError):
        r.process(AudioFrame(np.zeros(160, np.float32), 8000, 0.0))
    with pytest.raises(ValueError):
        Resampler(0, 16000)
    with pytest.raises(ValueError):
        Resampler(8000, 16000, gap_tolerance=-1.0)

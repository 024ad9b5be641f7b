"""The streaming resampler: one per stream direction per call (soxr keeps filter state)."""

from __future__ import annotations

import numpy as np
import soxr

from getpatter.core.audio import float32_to_int16, int16_to_float32
from getpatter.core.frame import _F32, _I16, AudioFrame, Int16Array

_EMPTY = np.zeros(0, dtype=_I16)
_EMPTY_F32 = np.zeros(0, dtype=_F32)


class Resampler:
    """Streaming int16 resampler for one direction of one call (soxr keeps filter state).

    Output timestamps continue the input timeline: the first output sample of a stream is
    stamped with the first input frame's timestamp, and later ones follow at `out_rate`.
    soxr works in blocks, so `process` may return fewer or more samples than one frame's
    worth (often none, at HQ: about 60-115 ms of audio can be held back); `flush` returns
    the rest at the end of a stream. Equal rates pass frames through untouched.

    Gaps: when a frame starts more than `gap_tolerance` seconds (default: half a frame)
    after the previous frame ended, the old stream is flushed and soxr is reset, so no old
    audio is filtered into the new. `process` then returns the old
    stream's tail, stamped at its true time, and the new audio's first output is held and
    returned, contiguous, at the start of the next `process` (or `flush`). Every returned
    frame is therefore contiguous in time: old and new audio never share one. A frame
    stamped earlier than expected is taken as contiguous, so frames that carry no real
    timestamp (all 0.0) still stream correctly; to start a new stream, call `flush()`.

    On barge-in, call `reset()` rather than `flush()` to drop audio soxr still holds.

    soxr runs in float32 and the int16 conversions are ours: soxr's own int16 output adds
    dither, which turns digital silence into ±1 LSB noise and makes output depend on
    history. This way silence stays silent and the same input gives the same output.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        quality: str = "MQ",
        gap_tolerance: float | None = None,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        if gap_tolerance is not None and not gap_tolerance >= 0:
            raise ValueError(f"gap_tolerance must be >= 0 seconds, got {gap_tolerance}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self.quality = quality
        self.gap_tolerance = gap_tolerance
        self._stream: soxr.ResampleStream | None = None
        if self.in_rate != self.out_rate:
            self._stream = soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=quality
            )
        self._next_in: float | None = None  # where the next input frame should start
        self._last_duration = 0.0  # of the previous input frame
        self._seg_start: float | None = None  # input time of the current soxr stream
        self._seg_returned = 0  # output samples of the current stream already returned
        self._held: Int16Array | None = None  # new-stream output held back after a gap
        self._out_end = 0.0  # end time of the last returned output

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def process(self, frame: AudioFrame) -> AudioFrame:
        """Resample one frame; see the class docstring for what comes back when."""
        if frame.sample_rate != self.in_rate:
            raise ValueError(
                f"frame is {frame.sample_rate} Hz but this Resampler takes {self.in_rate} Hz"
            )
        samples = frame.samples
        if samples.dtype != _I16:
            raise TypeError(f"expected int16 samples, got dtype {samples.dtype}")
        stream = self._stream
        if stream is None:
            self._next_in = frame.end
            self._out_end = frame.end
            return frame

        tail: AudioFrame | None = None
        if self._is_gap(frame):
            tail = self._end_stream()
        if self._seg_start is None:
            self._seg_start = frame.timestamp
            self._seg_returned = 0
        new = float32_to_int16(stream.resample_chunk(int16_to_float32(samples)))
        self._next_in = frame.end
        self._last_duration = frame.duration or self._last_duration

        if tail is not None and len(tail.samples):
            if len(new):
                self._held = new
            return self._returned(tail)
        if self._held is not None:
            new = np.concatenate((self._held, new))
            self._held = None
        return self._emit(new)

    def flush(self) -> AudioFrame:
        """End the stream: return everything still held. The next frame starts afresh."""
        if self._stream is None:
            self._next_in = None
            return AudioFrame(_EMPTY.copy(), self.out_rate, self._out_end)
        tail = self._end_stream()
        self._next_in = None
        return self._returned(tail)

    def reset(self) -> None:
        """Drop everything held (e.g. on barge-in) and start the next frame afresh."""
        if self._stream is not None:
            self._stream.clear()
        self._seg_start = None
        self._held = None
        self._next_in = None

    def _is_gap(self, frame: AudioFrame) -> bool:
        if self._next_in is None or self._seg_start is None:
            return False
        tolerance = self.gap_tolerance
        if tolerance is None:
            tolerance = 0.5 * max(frame.duration, self._last_duration)
        # The epsilon keeps float rounding in callers' timestamps from looking like a gap.
        return frame.timestamp - self._next_in > tolerance + 1e-9

    def _emit(self, samples: Int16Array) -> AudioFrame:
        """Stamp output of the current soxr stream and count it as returned."""
        assert self._seg_start is not None
        ts = self._seg_start + self._seg_returned / self.out_rate
        self._seg_returned += len(samples)
        return self._returned(AudioFrame(samples, self.out_rate, ts))

    def _returned(self, frame: AudioFrame) -> AudioFrame:
        self._out_end = frame.end
        return frame

    def _end_stream(self) -> AudioFrame:
        """Flush and reset soxr; the current stream's unreturned output as one frame."""
        assert self._stream is not None
        if self._seg_start is None:
            return AudioFrame(_EMPTY.copy(), self.out_rate, self._out_end)
        rest = float32_to_int16(self._stream.resample_chunk(_EMPTY_F32, last=True))
        self._stream.clear()
        if self._held is not None:
            rest = np.concatenate((self._held, rest))
            self._held = None
        frame = self._emit(rest)
        self._seg_start = None
        return frame

"""Speech start / end detection for one call's inbound audio.

`HysteresisVAD` is the state machine every detector shares; a detector only says whether one
frame is voiced. `VAD` is the built-in one (webrtcvad); a plugin adds others (Silero) as a
`VADProvider`, chosen per agent with `vad=`.

webrtcvad classifies short frames; on its own it flickers (a cough opens it, a breath between
words closes it), so `VAD` adds hysteresis on top: speech starts only after enough voiced time
inside a short window, and ends only after a stretch of unvoiced time. An energy floor makes
quiet frames unvoiced before webrtcvad is even asked, so line hiss and hum never open it.

The state machine is driven only by the audio's own timestamps — no wall clock, no asyncio —
so it is exact and instant to test, and replaying a recording gives the same events.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import webrtcvad

from getpatter.core import audio
from getpatter.core.audio import AudioFrame, Int16Array
from getpatter.errors import PatterConfigError

__all__ = [
    "SUPPORTED_SAMPLE_RATES",
    "VAD",
    "HysteresisVAD",
    "SpeechDetector",
    "VADEvent",
    "VADEventKind",
    "VADOptions",
    "VADProvider",
    "WebRTCVAD",
    "resolve_vad",
]

#: The rates webrtcvad accepts; anything else must be resampled first.
SUPPORTED_SAMPLE_RATES: tuple[int, ...] = (8000, 16000, 32000, 48000)

_FRAME_MS_CHOICES = (10, 20, 30)
# Timestamps later than the expected next sample by more than this are a gap (lost frames).
# Small enough to catch one missing 10 ms frame, loose enough for millisecond-rounded stamps.
_GAP_TOLERANCE_S = 0.002
# Float slack for "has this much time passed" comparisons of sums of frame durations.
_EPS = 1e-9

VADEventKind = Literal["speech_started", "speech_ended"]


@dataclass(frozen=True, slots=True)
class VADEvent:
    """A speech boundary, stamped with the audio time it happened, not when it was decided."""

    kind: VADEventKind
    timestamp: float


@dataclass(frozen=True, slots=True)
class VADOptions:
    """Tuning of the detector; the defaults suit 8 kHz telephone audio.

    - `aggressiveness`: webrtcvad mode, 0 (lets most through) to 3 (strictest).
    - `frame_ms`: the length of the pieces webrtcvad classifies: 10, 20 or 30.
    - `start_window_ms` / `start_voiced_ms`: speech starts once the frames classified voiced
      within the last `start_window_ms` add up to at least `start_voiced_ms`; short clicks and
      bursts do not.
    - `end_silence_ms`: speech ends after this much unvoiced time; pauses between words and
      sentences shorter than it stay inside one utterance.
    - `energy_floor_dbfs`: frames whose RMS is below this level (dB relative to int16 full
      scale, 32768) are unvoiced whatever webrtcvad says.
    """

    aggressiveness: int = 2
    frame_ms: int = 20
    start_window_ms: float = 200.0
    start_voiced_ms: float = 120.0
    end_silence_ms: float = 600.0
    energy_floor_dbfs: float = -48.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.aggressiveness, bool)
            or not isinstance(self.aggressiveness, int)
            or not 0 <= self.aggressiveness <= 3
        ):
            raise PatterConfigError(
                f"VADOptions.aggressiveness must be an int from 0 to 3, got {self.aggressiveness!r}"
            )
        if isinstance(self.frame_ms, bool) or self.frame_ms not in _FRAME_MS_CHOICES:
            raise PatterConfigError(
                f"VADOptions.frame_ms must be 10, 20 or 30 (what webrtcvad accepts), "
                f"got {self.frame_ms!r}"
            )
        for name in ("start_window_ms", "start_voiced_ms", "end_silence_ms"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise PatterConfigError(
                    f"VADOptions.{name} must be a positive number of milliseconds, got {value!r}"
                )
        if self.start_window_ms < self.frame_ms:
            raise PatterConfigError(
                f"VADOptions.start_window_ms ({self.start_window_ms}) must be at least "
                f"frame_ms ({self.frame_ms})"
            )
        if self.start_voiced_ms > self.start_window_ms:
            raise PatterConfigError(
                f"VADOptions.start_voiced_ms ({self.start_voiced_ms}) cannot exceed "
                f"start_window_ms ({self.start_window_ms})"
            )
        if self.voiced_frames_to_start > self.frames_per_window:
            raise PatterConfigError(
                f"VADOptions: a {self.start_window_ms} ms window holds only "
                f"{self.frames_per_window} frames of {self.frame_ms} ms, fewer than the "
                f"{self.voiced_frames_to_start} voiced frames start_voiced_ms "
                f"({self.start_voiced_ms}) needs; widen the window or lower start_voiced_ms"
            )
        floor = self.energy_floor_dbfs
        if not _is_real(floor) or math.isnan(floor) or floor > 0:
            raise PatterConfigError(
                f"VADOptions.energy_floor_dbfs must be a level in dBFS, at most 0 "
                f"(use -inf to rely on webrtcvad alone), got {floor!r}"
            )

    @property
    def voiced_frames_to_start(self) -> int:
        """How many voiced frames the start window must hold for speech to start."""
        return max(1, math.ceil(self.start_voiced_ms / self.frame_ms - _EPS))

    @property
    def frames_per_window(self) -> int:
        """How many whole frames fit in the start window."""
        return int(self.start_window_ms // self.frame_ms)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@runtime_checkable
class SpeechDetector(Protocol):
    """One stream's detector: what the pipeline and the session's caller watch call."""

    @property
    def speaking(self) -> bool: ...

    def process(self, frame: AudioFrame) -> list[VADEvent]: ...

    def flush(self, timestamp: float) -> list[VADEvent]: ...

    def end(self) -> list[VADEvent]: ...

    def reset(self) -> None: ...


@runtime_checkable
class VADProvider(Protocol):
    """Agent-level VAD configuration; `create()` makes the detector for one stream."""

    def create(self, sample_rate: int = 8000) -> SpeechDetector: ...


class HysteresisVAD:
    """The speech start / end state machine over frames a subclass classifies.

    Feed it `AudioFrame`s of any length in order; it cuts them into frames of
    `frame_samples` (carrying the remainder over to the next call) and returns the boundaries
    it found. Speech starts once the voiced frames within the last `start_window_ms` last at
    least `start_voiced_ms`; it ends after `end_silence_ms` of unvoiced frames. A jump forward
    in timestamps (frames the carrier lost) counts as silence of that length. Timestamps that
    overlap or run slightly late are ignored: the detector keeps its own sample-exact clock
    from the first frame, so event times never go backwards.
    """

    def __init__(
        self,
        sample_rate: int,
        frame_samples: int,
        *,
        start_window_ms: float,
        start_voiced_ms: float,
        end_silence_ms: float,
    ) -> None:
        self.sample_rate = sample_rate
        self._chunk = frame_samples
        self._frame_s = frame_samples / sample_rate
        frame_ms = 1000.0 * self._frame_s
        self._window_s = start_window_ms / 1000.0
        self._end_silence_s = end_silence_ms / 1000.0
        self._need = max(1, math.ceil(start_voiced_ms / frame_ms - _EPS))
        self._empty: Int16Array = np.zeros(0, dtype=np.int16)
        self._speaking = False

    def _voiced(self, row: Int16Array) -> bool:
        """Whether one frame of `frame_samples` is speech (subclasses decide how)."""
        raise NotImplementedError

    def _reset_classifier(self) -> None:
        """Forget what the classifier learnt from earlier audio."""

    def reset(self) -> None:
        """Forget everything, as if no audio had been seen; emits nothing."""
        self._reset_classifier()
        self._pending: Int16Array = self._empty
        self._origin: float | None = None  # stream time of sample 0 of the current run
        self._consumed = 0  # samples of the current run already classified
        self._voiced_starts: deque[float] = deque()  # voiced frame starts in the start window
        self._speaking = False
        self._last_voiced_end = 0.0

    @property
    def speaking(self) -> bool:
        """True between a `speech_started` and its `speech_ended`."""
        return self._speaking

    def process(self, frame: AudioFrame) -> list[VADEvent]:
        """Classify `frame` (after any remainder from earlier calls); return new boundaries."""
        if frame.sample_rate != self.sample_rate:
            raise ValueError(
                f"VAD expects {self.sample_rate} Hz audio, got a {frame.sample_rate} Hz frame"
            )
        samples = frame.samples
        if samples.dtype != np.int16:
            raise ValueError(f"VAD expects int16 samples, got {samples.dtype}")
        events: list[VADEvent] = []
        if self._origin is None:
            self._origin = frame.timestamp
        elif frame.timestamp - self._expected_next() > _GAP_TOLERANCE_S:
            self._skip_to(frame.timestamp, events)
        chunk = self._chunk
        if not len(self._pending) and len(samples) == chunk:  # the usual case: one frame
            self._classify((samples,), events)
            return events
        if len(self._pending):
            samples = np.concatenate((self._pending, samples))
        count = len(samples) // chunk
        if count:
            rows = samples[: count * chunk].reshape(count, chunk)
            self._classify(list(rows), events)
        self._pending = samples[count * chunk :].copy() if len(samples) % chunk else self._empty
        return events

    def flush(self, timestamp: float) -> list[VADEvent]:
        """Treat the stream as silent up to `timestamp` (e.g. the carrier stopped sending).

        Any buffered partial frame is dropped as silence. An open utterance ends only if
        `end_silence_ms` has passed by then; use `end()` to close it unconditionally.
        """
        events: list[VADEvent] = []
        if self._origin is None:
            self._origin = timestamp
        elif timestamp > self._expected_next():
            self._skip_to(timestamp, events)
        return events

    def end(self) -> list[VADEvent]:
        """End of stream: close an open utterance at its last voiced frame, then reset."""
        events: list[VADEvent] = []
        if self._speaking:
            events.append(VADEvent("speech_ended", self._last_voiced_end))
        self.reset()
        return events

    def _expected_next(self) -> float:
        assert self._origin is not None
        return self._origin + (self._consumed + len(self._pending)) / self.sample_rate

    def _skip_to(self, timestamp: float, events: list[VADEvent]) -> None:
        """Jump the clock forward over missing audio, which counts as silence."""
        self._pending = self._empty
        self._origin = timestamp
        self._consumed = 0
        if self._speaking and timestamp - self._last_voiced_end >= self._end_silence_s - _EPS:
            self._speaking = False
            events.append(VADEvent("speech_ended", self._last_voiced_end))
        # Voiced frames older than the start window fall out on the next append.

    def _classify(self, frames: Sequence[Int16Array], events: list[VADEvent]) -> None:
        """Run the state machine over whole frames of `chunk` samples."""
        assert self._origin is not None
        rate = self.sample_rate
        chunk = self._chunk
        frame_s = self._frame_s
        voiced = self._voiced
        origin = self._origin
        first = self._consumed
        for i, row in enumerate(frames):
            start = origin + (first + i * chunk) / rate
            end = start + frame_s
            if voiced(row):
                if self._speaking:
                    self._last_voiced_end = end
                    continue
                window = self._voiced_starts
                window.append(start)
                horizon = end - self._window_s - _EPS
                while window[0] < horizon:
                    window.popleft()
                if len(window) >= self._need:
                    self._speaking = True
                    self._last_voiced_end = end
                    events.append(VADEvent("speech_started", window[0]))
                    window.clear()
            elif self._speaking and end - self._last_voiced_end >= self._end_silence_s - _EPS:
                self._speaking = False
                events.append(VADEvent("speech_ended", self._last_voiced_end))
        self._consumed = first + len(frames) * chunk


class VAD(HysteresisVAD):
    """webrtcvad behind the hysteresis, for one audio stream (one per call and direction).

    A frame is voiced when its RMS clears the energy floor and webrtcvad says speech.
    """

    def __init__(self, options: VADOptions | None = None, sample_rate: int = 8000) -> None:
        if sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise PatterConfigError(
                f"VAD sample_rate must be one of {', '.join(map(str, SUPPORTED_SAMPLE_RATES))} "
                f"Hz (what webrtcvad accepts), got {sample_rate!r}; resample the audio first"
            )
        self.options = opts = options if options is not None else VADOptions()
        super().__init__(
            sample_rate,
            sample_rate * opts.frame_ms // 1000,
            start_window_ms=opts.start_window_ms,
            start_voiced_ms=opts.start_voiced_ms,
            end_silence_ms=opts.end_silence_ms,
        )
        # The floor as an RMS level, so the hot path (the audio core's rms) needs no log.
        self._floor_rms = 32768.0 * 10.0 ** (opts.energy_floor_dbfs / 20.0)
        self._rms = audio.rms  # the C core's when built: a 20 ms frame costs well under a µs
        self.reset()

    def _reset_classifier(self) -> None:
        # A fresh webrtcvad: it adapts its noise model to the audio it has seen.
        self._is_speech = webrtcvad.Vad(self.options.aggressiveness).is_speech

    def _voiced(self, row: Int16Array) -> bool:
        return self._rms(row) >= self._floor_rms and self._is_speech(
            row.tobytes(), self.sample_rate
        )


class WebRTCVAD:
    """The built-in VAD as an agent's choice (registered as vad ``"webrtc"``): `create()`
    makes one stream's `VAD` with these options."""

    def __init__(self, options: VADOptions | None = None) -> None:
        self.options = options if options is not None else VADOptions()

    def create(self, sample_rate: int = 8000) -> VAD:
        return VAD(self.options, sample_rate)

    def __repr__(self) -> str:
        return f"WebRTCVAD({self.options!r})"


def resolve_vad(choice: object, options: VADOptions | None = None) -> VADProvider:
    """An agent's `vad=`: None or "webrtc" (the built-in, tuned by `options`), another
    registered name, or a `VADProvider` instance."""
    if choice is None or choice == "webrtc":
        return WebRTCVAD(options)
    if isinstance(choice, str):
        from getpatter.core.registry import default_registry

        provider = default_registry().create("vad", choice)
    else:
        provider = choice
    if not isinstance(provider, VADProvider):
        raise PatterConfigError(
            f"vad={type(provider).__name__}(...) has no create(sample_rate) method: pass a "
            "registered name such as 'silero' or a VAD provider such as SileroVAD(...)"
        )
    return provider

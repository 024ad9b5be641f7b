"""The audio bus: AudioFrame, G.711 codecs, mixing, levels and the streaming Resampler.

Conversions happen at the edges (carrier and provider adapters); the middle of the system
only ever sees mono int16 `AudioFrame`s.

The per-frame sample work runs in the C core (`getpatter.core._audio`) when it is built, and
in numpy otherwise; `BACKEND` says which. Set `GETPATTER_AUDIO_BACKEND=numpy` before import to
force the fallback (or `=c` to fail loudly when the extension is missing). Both backends give
bit-identical results; the numpy versions stay importable as `_np_*` so tests can prove it.

Sample inputs may be int16 numpy arrays or bytes-like objects holding little-endian int16
PCM (bytes, bytearray, memoryview). They are read in place. Sample outputs are always new,
writable numpy arrays; G.711 outputs are `bytes`.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]
BytesLike = bytes | bytearray | memoryview
PcmLike = Int16Array | BytesLike
CodesLike = npt.NDArray[np.uint8] | BytesLike
FloatLike = npt.NDArray[np.floating[Any]] | BytesLike

__all__ = [
    "BACKEND",
    "AudioFrame",
    "BytesLike",
    "CodesLike",
    "Float32Array",
    "FloatLike",
    "Int16Array",
    "PcmLike",
    "Resampler",
    "alaw_decode",
    "alaw_encode",
    "apply_gain",
    "float32_to_int16",
    "int16_to_float32",
    "mix",
    "pcm16_array",
    "pcm16_bytes",
    "peak",
    "rms",
    "ulaw_decode",
    "ulaw_encode",
]


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Mono int16 audio at `sample_rate`, starting at `timestamp` seconds of stream time."""

    samples: Int16Array
    sample_rate: int
    timestamp: float = 0.0

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> float:
        return self.timestamp + self.duration


_I16 = np.dtype(np.int16)
_U16 = np.dtype(np.uint16)
_U8 = np.dtype(np.uint8)
_F32 = np.dtype(np.float32)
_LE_I16 = np.dtype("<i2")
_LE_F32 = np.dtype("<f4")
_LITTLE_ENDIAN = sys.byteorder == "little"
_empty = np.empty  # bound once: it is on the per-frame path

# --------------------------------------------------------------------------- inputs


def _nbytes(data: Any) -> int:
    """Byte length of a buffer; `len()` counts items for memoryviews and arrays."""
    if type(data) is bytes or type(data) is bytearray:
        return len(data)
    if isinstance(data, np.ndarray | memoryview):
        return int(data.nbytes)
    return memoryview(data).nbytes


def _odd_pcm(nbytes: int) -> ValueError:
    return ValueError(f"int16 PCM has {nbytes} bytes, not a whole number of 2-byte samples")


def _pcm_ndarray(samples: npt.NDArray[Any]) -> Int16Array:
    """A 1-D native int16 view of an int16 array (copy only if it must)."""
    if samples.dtype != _I16:
        if samples.dtype.kind == "i" and samples.dtype.itemsize == 2:
            return samples.astype(_I16).reshape(-1)  # byte-swapped int16
        # Silently casting int32/float would wrap or truncate; make the caller decide.
        raise TypeError(f"expected int16 samples, got dtype {samples.dtype}")
    return samples if samples.ndim == 1 else samples.reshape(-1)


def pcm16_array(data: BytesLike) -> Int16Array:
    """Little-endian int16 PCM bytes as an int16 array.

    A zero-copy view on little-endian hosts (read-only when `data` is immutable); call
    `.copy()` before writing into it.
    """
    nbytes = _nbytes(data)
    if nbytes % 2:
        raise _odd_pcm(nbytes)
    view = np.frombuffer(data, _LE_I16)
    return view if _LITTLE_ENDIAN else view.astype(_I16)


def pcm16_bytes(samples: PcmLike) -> bytes:
    """int16 samples as little-endian PCM bytes (the wire format of L16 and WAV)."""
    if isinstance(samples, np.ndarray):
        return _pcm_ndarray(samples).astype(_LE_I16, copy=False).tobytes()
    nbytes = _nbytes(samples)
    if nbytes % 2:
        raise _odd_pcm(nbytes)
    return bytes(samples)


def _np_pcm(samples: PcmLike) -> Int16Array:
    """Any accepted PCM input as a native int16 array, for the numpy backend."""
    if isinstance(samples, np.ndarray):
        return _pcm_ndarray(samples)
    return pcm16_array(samples)


def _code_array(data: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """A 1-D uint8 view of an array of one-byte G.711 codes."""
    if data.dtype.itemsize != 1 or data.dtype.kind not in "ui":
        raise TypeError(f"expected uint8 G.711 codes, got dtype {data.dtype}")
    return (data if data.ndim == 1 else data.reshape(-1)).view(_U8)


def _np_codes(data: CodesLike) -> npt.NDArray[np.uint8]:
    if isinstance(data, np.ndarray):
        return _code_array(data)
    return np.frombuffer(data, _U8)


def _np_floats(samples: FloatLike) -> Float32Array:
    if isinstance(samples, np.ndarray):
        if samples.dtype.kind != "f":
            raise TypeError(f"expected floating-point samples, got dtype {samples.dtype}")
        return np.ascontiguousarray(samples, dtype=_F32).reshape(-1)
    nbytes = _nbytes(samples)
    if nbytes % 4:
        raise ValueError(f"float32 data has {nbytes} bytes, not a whole number of samples")
    view = np.frombuffer(samples, _LE_F32)
    return view if _LITTLE_ENDIAN else view.astype(_F32)


# ------------------------------------------------------------ numpy implementation
#
# Written from ITU-T G.711 independently of the C core (segment search via searchsorted
# rather than a shift loop); tables are built once at import, so the per-frame work is one
# vectorised lookup. The encoders see the top 14 (mu-law) / 13 (A-law) bits of a sample,
# which is how audioop quantises and what the C core does.


@functools.cache
def _np_ulaw_decode_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(_I16)


@functools.cache
def _np_alaw_decode_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (a >> 4) & 0x07
    mantissa = (a & 0x0F) << 4
    magnitude = np.where(
        segment == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(segment - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(_I16)


def _top_bits(bits: int) -> npt.NDArray[np.int32]:
    """Signed values of every `bits`-bit pattern, in index order (0, 1, ..., -2, -1)."""
    index = np.arange(1 << bits, dtype=np.int32)
    return np.where(index < (1 << (bits - 1)), index, index - (1 << bits))


@functools.cache
def _np_ulaw_encode_table() -> npt.NDArray[np.uint8]:
    v = _top_bits(14)
    mask = np.where(v < 0, 0x7F, 0xFF)
    biased = np.abs(v) + 33
    segment_ends = (0x40 << np.arange(8)) - 1  # 0x3F, 0x7F, .. 0x1FFF
    segment = np.searchsorted(segment_ends, biased)
    mantissa = (biased >> (np.minimum(segment, 7) + 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    return (code ^ mask).astype(_U8)


@functools.cache
def _np_alaw_encode_table() -> npt.NDArray[np.uint8]:
    v = _top_bits(13)
    mask = np.where(v < 0, 0x55, 0xD5)
    magnitude = np.where(v < 0, -v - 1, v)  # 0 .. 4095
    segment_ends = (0x20 << np.arange(8)) - 1  # 0x1F, 0x3F, .. 0xFFF
    segment = np.searchsorted(segment_ends, magnitude)
    mantissa = (magnitude >> np.maximum(segment, 1)) & 0x0F
    return (((segment << 4) | mantissa) ^ mask).astype(_U8)


# The tables are built on first use: with the C core loaded they are never needed.


def _np_ulaw_decode(data: CodesLike) -> Int16Array:
    """G.711 μ-law codes → int16 samples."""
    return _np_ulaw_decode_table().take(_np_codes(data))


def _np_alaw_decode(data: CodesLike) -> Int16Array:
    """G.711 A-law codes → int16 samples."""
    return _np_alaw_decode_table().take(_np_codes(data))


def _np_ulaw_encode(samples: PcmLike) -> bytes:
    """int16 samples → G.711 μ-law codes."""
    return _np_ulaw_encode_table().take(_np_pcm(samples).view(_U16) >> 2).tobytes()


def _np_alaw_encode(samples: PcmLike) -> bytes:
    """int16 samples → G.711 A-law codes."""
    return _np_alaw_encode_table().take(_np_pcm(samples).view(_U16) >> 3).tobytes()


def _np_int16_to_float32(samples: PcmLike) -> Float32Array:
    """int16 → float32 in [-1, 1): x / 32768 (exact)."""
    return _np_pcm(samples).astype(_F32) * np.float32(1.0 / 32768.0)


def _np_float32_to_int16(samples: FloatLike) -> Int16Array:
    """float32 → int16: x * 32768, saturated, rounded half to even; NaN → 0."""
    v = _np_floats(samples) * np.float32(32768.0)
    np.clip(v, -32768.0, 32767.0, out=v)
    np.rint(v, out=v)
    v[np.isnan(v)] = 0.0
    return v.astype(_I16)


def _check_gain(gain: float) -> float:
    gain = float(gain)
    if not math.isfinite(gain):
        raise ValueError("apply_gain: gain must be finite")
    return gain


def _np_apply_gain(samples: PcmLike, gain: float) -> Int16Array:
    """int16 × gain (in float64), saturated, rounded half to even."""
    v = _np_pcm(samples).astype(np.float64) * _check_gain(gain)
    np.clip(v, -32768.0, 32767.0, out=v)
    np.rint(v, out=v)
    return v.astype(_I16)


def _np_mix(a: PcmLike, b: PcmLike) -> Int16Array:
    """Sample-wise a + b, saturated to int16."""
    x, y = _np_pcm(a), _np_pcm(b)
    if len(x) != len(y):
        raise ValueError(f"mix: a has {len(x)} samples but b has {len(y)}")
    s = x.astype(np.int32) + y
    np.clip(s, -32768, 32767, out=s)
    return s.astype(_I16)


def _np_rms(samples: PcmLike) -> float:
    """Root mean square of int16 samples (0 … 32768); 0.0 when empty."""
    x = _np_pcm(samples).astype(np.int64)
    if len(x) == 0:
        return 0.0
    # Exact integer sum of squares, the same arithmetic as the C core.
    return math.sqrt(float(np.dot(x, x)) / len(x))


def _np_peak(samples: PcmLike) -> int:
    """Largest |sample| (0 … 32768); 0 when empty."""
    x = _np_pcm(samples)
    if len(x) == 0:
        return 0
    return max(int(x.max()), -int(x.min()))


# ---------------------------------------------------------------- C implementation


def _import_c_core() -> ModuleType | None:
    try:
        return importlib.import_module("getpatter.core._audio")
    except ImportError:
        return None


def _choose_backend(core: ModuleType | None) -> str:
    """Use C unless the environment forces numpy or the extension was not built."""
    choice = os.environ.get("GETPATTER_AUDIO_BACKEND", "").strip().lower()
    if choice == "numpy":
        return "numpy"
    if choice == "c" and core is None:
        raise ImportError("GETPATTER_AUDIO_BACKEND=c but getpatter.core._audio is not built")
    if choice not in ("", "auto", "c"):
        warnings.warn(
            f"GETPATTER_AUDIO_BACKEND={choice!r} is not 'c', 'numpy' or 'auto'; using auto",
            RuntimeWarning,
            stacklevel=2,
        )
    return "c" if core is not None else "numpy"


# Loaded whatever the backend choice, so tests can compare both backends in one process.
_C: Any = _import_c_core()


# Outputs are numpy-owned arrays the C core fills through its `out` argument: one
# allocation, no copy, and writable like the numpy backend's results. The wrappers keep
# the common case (bytes or a native int16 array) to a couple of cheap checks, because
# at 160 samples per frame the Python around the call costs more than the C inside it.


def _c_pcm(samples: PcmLike) -> PcmLike:
    """PCM input for the C core: native int16 arrays and (on little-endian) bytes as is."""
    if isinstance(samples, np.ndarray):
        return samples if samples.dtype is _I16 else _pcm_ndarray(samples)
    return samples if _LITTLE_ENDIAN else pcm16_array(samples)


def _c_count(pcm: PcmLike) -> int:
    """Samples in a `_c_pcm` result (the C core re-checks odd byte counts itself)."""
    if isinstance(pcm, np.ndarray):
        return int(pcm.size)
    nbytes = _nbytes(pcm)
    if nbytes % 2:
        raise _odd_pcm(nbytes)
    return nbytes // 2


def _c_ulaw_decode(data: CodesLike) -> Int16Array:
    """G.711 μ-law codes → int16 samples."""
    out: Int16Array
    if type(data) is bytes:
        out = _C.ulaw_decode(data, _empty(len(data), _I16))
    else:
        if isinstance(data, np.ndarray):
            data = _code_array(data)
        out = _C.ulaw_decode(data, _empty(_nbytes(data), _I16))
    return out


def _c_alaw_decode(data: CodesLike) -> Int16Array:
    """G.711 A-law codes → int16 samples."""
    out: Int16Array
    if type(data) is bytes:
        out = _C.alaw_decode(data, _empty(len(data), _I16))
    else:
        if isinstance(data, np.ndarray):
            data = _code_array(data)
        out = _C.alaw_decode(data, _empty(_nbytes(data), _I16))
    return out


def _c_ulaw_encode(samples: PcmLike) -> bytes:
    """int16 samples → G.711 μ-law codes."""
    if type(samples) is not bytes or not _LITTLE_ENDIAN:
        samples = _c_pcm(samples)
    out: bytes = _C.ulaw_encode(samples)
    return out


def _c_alaw_encode(samples: PcmLike) -> bytes:
    """int16 samples → G.711 A-law codes."""
    if type(samples) is not bytes or not _LITTLE_ENDIAN:
        samples = _c_pcm(samples)
    out: bytes = _C.alaw_encode(samples)
    return out


def _c_int16_to_float32(samples: PcmLike) -> Float32Array:
    """int16 → float32 in [-1, 1): x / 32768 (exact)."""
    pcm = _c_pcm(samples)
    out: Float32Array = _C.int16_to_float32(pcm, _empty(_c_count(pcm), _F32))
    return out


def _c_float32_to_int16(samples: FloatLike) -> Int16Array:
    """float32 → int16: x * 32768, saturated, rounded half to even; NaN → 0."""
    if isinstance(samples, np.ndarray):
        if samples.dtype is not _F32:
            samples = _np_floats(samples)
        n = int(samples.size)
    else:
        if not _LITTLE_ENDIAN:
            samples = _np_floats(samples)
        nbytes = _nbytes(samples)
        if nbytes % 4:
            raise ValueError(f"float32 data has {nbytes} bytes, not a whole number of samples")
        n = nbytes // 4
    out: Int16Array = _C.float32_to_int16(samples, _empty(n, _I16))
    return out


def _c_apply_gain(samples: PcmLike, gain: float) -> Int16Array:
    """int16 × gain (in float64), saturated, rounded half to even."""
    pcm = _c_pcm(samples)
    out: Int16Array = _C.apply_gain(pcm, _check_gain(gain), _empty(_c_count(pcm), _I16))
    return out


def _c_mix(a: PcmLike, b: PcmLike) -> Int16Array:
    """Sample-wise a + b, saturated to int16."""
    x, y = _c_pcm(a), _c_pcm(b)
    nx, ny = _c_count(x), _c_count(y)
    if nx != ny:
        raise ValueError(f"mix: a has {nx} samples but b has {ny}")
    out: Int16Array = _C.mix(x, y, _empty(nx, _I16))
    return out


def _c_rms(samples: PcmLike) -> float:
    """Root mean square of int16 samples (0 … 32768); 0.0 when empty."""
    out: float = _C.rms(_c_pcm(samples))
    return out


def _c_peak(samples: PcmLike) -> int:
    """Largest |sample| (0 … 32768); 0 when empty."""
    out: int = _C.peak(_c_pcm(samples))
    return out


# ----------------------------------------------------------------- public functions

BACKEND: str = _choose_backend(_C)
if BACKEND == "c":
    ulaw_decode = _c_ulaw_decode
    ulaw_encode = _c_ulaw_encode
    alaw_decode = _c_alaw_decode
    alaw_encode = _c_alaw_encode
    int16_to_float32 = _c_int16_to_float32
    float32_to_int16 = _c_float32_to_int16
    apply_gain = _c_apply_gain
    mix = _c_mix
    rms = _c_rms
    peak = _c_peak
else:
    ulaw_decode = _np_ulaw_decode
    ulaw_encode = _np_ulaw_encode
    alaw_decode = _np_alaw_decode
    alaw_encode = _np_alaw_encode
    int16_to_float32 = _np_int16_to_float32
    float32_to_int16 = _np_float32_to_int16
    apply_gain = _np_apply_gain
    mix = _np_mix
    rms = _np_rms
    peak = _np_peak


# ------------------------------------------------------------------------ Resampler

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

"""The audio bus: G.711 codecs, mixing and levels, in C with a numpy fallback.

Conversions happen at the edges (carrier and provider adapters); the middle of the system
only ever sees mono int16 `AudioFrame`s.

The per-frame sample work runs in the C core (`getpatter.core._audio`) when it is built, and
in numpy otherwise; `BACKEND` says which. Set `GETPATTER_AUDIO_BACKEND=numpy` before import to
force the fallback (or `=c` to fail loudly when the extension is missing). Both backends give
bit-identical results; the numpy versions (`audio_numpy.py`) stay importable here as `_np_*`
so tests can prove it. `AudioFrame` and the sample types live in `frame.py`, the
streaming `Resampler` in `resample.py`.

Sample inputs may be int16 numpy arrays or bytes-like objects holding little-endian int16
PCM (bytes, bytearray, memoryview). They are read in place. Sample outputs are always new,
writable numpy arrays; G.711 outputs are `bytes`.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Any

import numpy as np

from getpatter.core.audio_numpy import (
    _check_gain,
    _np_alaw_decode,
    _np_alaw_encode,
    _np_apply_gain,
    _np_float32_to_int16,
    _np_int16_to_float32,
    _np_mix,
    _np_peak,
    _np_rms,
    _np_ulaw_decode,
    _np_ulaw_encode,
)
from getpatter.core.frame import (
    _F32,
    _I16,
    _LITTLE_ENDIAN,
    AudioFrame,
    BytesLike,
    CodesLike,
    Float32Array,
    FloatLike,
    Int16Array,
    PcmLike,
    _code_array,
    _empty,
    _nbytes,
    _np_floats,
    _odd_pcm,
    _pcm_ndarray,
    pcm16_array,
    pcm16_bytes,
)

__all__ = [
    "BACKEND",
    "AudioFrame",
    "BytesLike",
    "CodesLike",
    "Float32Array",
    "FloatLike",
    "Int16Array",
    "PcmLike",
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

"""The numpy implementation of the audio core: the fallback when the C extension is not
built (or `GETPATTER_AUDIO_BACKEND=numpy`), and the reference the C core is tested against.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from getpatter.core.frame import (
    _F32,
    _I16,
    _U8,
    _U16,
    CodesLike,
    Float32Array,
    FloatLike,
    Int16Array,
    PcmLike,
    _np_codes,
    _np_floats,
    _np_pcm,
)

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

"""The audio bus's data: `AudioFrame`, the sample types, and reading PCM / G.711 buffers.

Sample inputs may be int16 numpy arrays or bytes-like objects holding little-endian int16
PCM (bytes, bytearray, memoryview). They are read in place.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]
BytesLike = bytes | bytearray | memoryview
PcmLike = Int16Array | BytesLike
CodesLike = npt.NDArray[np.uint8] | BytesLike
FloatLike = npt.NDArray[np.floating[Any]] | BytesLike


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

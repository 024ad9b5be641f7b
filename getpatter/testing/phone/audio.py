"""Caller audio for the fake phone networks: G.711 μ-law, audio inputs, and who answers.

Written from ITU-T G.711, never from getpatter's own audio code, so a mistake there cannot be
mirrored here.
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

AnswerMode: TypeAlias = Literal["human", "machine", "busy", "no-answer", "failed"]
Int16Array: TypeAlias = npt.NDArray[np.int16]
#: What tests may pass as audio: int16 samples at 8 kHz, raw μ-law bytes, or a WAV file path.
AudioInput: TypeAlias = "npt.NDArray[Any] | bytes | bytearray | str | os.PathLike[str]"

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
FRAME_S = 0.020
ULAW_SILENCE = 0xFF


# --- G.711 μ-law (ITU-T G.711 on the 14-bit magnitude, bias 33, clip 8159) -----------------


def _build_decode_table() -> Int16Array:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


_DECODE = _build_decode_table()
_SEGMENT_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def ulaw_decode(data: bytes | bytearray) -> Int16Array:
    """μ-law bytes to int16 samples."""
    return _DECODE[np.frombuffer(bytes(data), dtype=np.uint8)]


def ulaw_encode(samples: npt.NDArray[Any]) -> bytes:
    """int16 samples to μ-law bytes (bit-exact with the classic 14-bit G.711 encoder)."""
    x = np.asarray(samples).astype(np.int32) >> 2
    negative = x < 0
    mag = np.minimum(np.where(negative, -x, x), 8159) + 33
    seg = np.searchsorted(_SEGMENT_END, mag, side="left")
    code = np.where(
        seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F)
    )
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8).tobytes()


def load_audio(audio: AudioInput | None) -> bytes:
    """Normalise any accepted audio input to raw 8 kHz μ-law bytes."""
    if audio is None:
        return b""
    if isinstance(audio, bytes | bytearray):
        return bytes(audio)
    if isinstance(audio, np.ndarray):
        arr = audio
        if arr.dtype.kind == "f":
            arr = np.clip(arr, -1.0, 1.0) * 32767.0
        return ulaw_encode(arr.reshape(-1))
    return _load_wav(os.fspath(audio))


def _load_wav(path: str) -> bytes:
    """PCM16 WAV (any rate, mono or multi-channel) to 8 kHz mono μ-law; linear resampling."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    if rate != 8000 and len(pcm):
        n_out = round(len(pcm) * 8000 / rate)
        pcm = np.interp(np.arange(n_out) * rate / 8000, np.arange(len(pcm)), pcm)
    return ulaw_encode(np.round(pcm).astype(np.int16))


# --- who answers -----------------------------------------------------------------------------


@dataclass
class Callee:
    """How the far end of an outbound call (or a transfer) behaves."""

    answer: AnswerMode = "human"
    answer_delay: float = 0.0
    audio: AudioInput | None = None
    machine_greeting_s: float = 2.0


def callee_audio(callee: Callee) -> bytes:
    """What the answering party says; a silent greeting ending in a beep for machines."""
    if callee.audio is not None or callee.answer != "machine":
        return load_audio(callee.audio)
    t = np.arange(int(0.25 * 8000)) / 8000
    beep = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    silence = np.zeros(max(0, int((callee.machine_greeting_s - 0.25) * 8000)), np.int16)
    return ulaw_encode(np.concatenate([silence, beep]))

"""A ctypes binding to the libespeak-ng bundled in the `espeakng-loader` wheel.

No system package is needed: the wheel carries the shared library and its data directory.

espeak-ng keeps its state in globals (one voice, one parameter set, one synth callback), so
it is not re-entrant. This module owns the one engine of the process, initialised on first
use, and every synthesis holds `Engine.lock` from setting the voice until the last sample.
The lock is held only while espeak itself runs (far faster than real time), never while a
consumer plays the audio out, so concurrent calls queue for a few milliseconds at most.

ctypes releases the GIL during the foreign call and takes it back for each callback, so a
synthesis running in a worker thread does not stall the event loop.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# espeak_AUDIO_OUTPUT: synthesize in the calling thread and hand samples to the callback.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when data is missing
# espeak_PARAMETER
_RATE = 1
_PITCH = 3
_DEFAULT_PITCH = 50
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
# TextToPhonemes: IPA (bit 1), phonemes separated by "_" (bits 8-23).
_IPA_MODE = 0x02 | (ord("_") << 8)

# int callback(short *wav, int numsamples, espeak_EVENT *events); non-zero aborts synthesis.
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

# What a synthesis hands its samples to: (raw little-endian int16 bytes) -> keep going?
Sink = Callable[[bytes], bool]


class EspeakError(RuntimeError):
    pass


class Engine:
    """The process's espeak-ng: one library handle, one voice at a time, one lock."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lock = threading.Lock()
        # Syntheses run one at a time anyway; their own thread keeps them from queueing on
        # the lock inside the event loop's default executor, where STT decoding runs.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="getpatter-espeak")
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size in bytes, including the terminating NUL
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: none)
            ctypes.c_uint,  # flags
            ctypes.POINTER(ctypes.c_uint),  # unique identifier (may be NULL)
            ctypes.c_void_p,  # user data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),  # in/out: the text still to convert
            ctypes.c_int,  # text mode
            ctypes.c_int,  # phoneme mode
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p

        # The data directory's parent: every espeak-ng version looks for espeak-ng-data in it.
        home = str(Path(espeakng_loader.get_data_path()).parent).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, home, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}) with data in {home.decode()}")
        self.sample_rate = int(rate)
        self._sink: Sink | None = None
        # Kept on the instance: ctypes does not keep a callback alive for the C side.
        self._callback = _SynthCallback(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)
        self._settings: tuple[str, int, int | None] | None = None

    def _on_samples(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int) -> int:
        sink = self._sink
        if sink is None:
            return 1
        if wav and n > 0:
            if not sink(ctypes.string_at(wav, n * 2)):
                return 1
        return 0

    def _configure(self, voice: str, rate_wpm: int, pitch: int | None) -> None:
        """Switch voice and parameters, only when they differ from the last synthesis."""
        settings = (voice, rate_wpm, pitch)
        if settings == self._settings:
            return
        self._settings = None
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        self._lib.espeak_SetParameter(_RATE, rate_wpm, 0)
        self._lib.espeak_SetParameter(_PITCH, _DEFAULT_PITCH if pitch is None else pitch, 0)
        self._settings = settings

    def check_voice(self, voice: str, rate_wpm: int, pitch: int | None) -> None:
        """Raise EspeakError now, rather than at the first sentence, for an unknown voice."""
        with self.lock:
            self._configure(voice, rate_wpm, pitch)

    def synthesize(
        self, text: str, sink: Sink, voice: str, rate_wpm: int, pitch: int | None
    ) -> None:
        """Speak `text` into `sink` (blocking; call from a worker thread).

        `sink` gets int16 samples at `sample_rate` in pieces as espeak makes them; returning
        False stops the synthesis.
        """
        data = text.encode("utf-8") + b"\0"
        with self.lock:
            self._configure(voice, rate_wpm, pitch)
            self._sink = sink
            try:
                err = self._lib.espeak_Synth(
                    data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
            finally:
                self._sink = None
        if err != _EE_OK:
            raise EspeakError(f"espeak_Synth failed ({err})")

    def phonemes(self, text: str, voice: str = "en-us") -> list[list[str]]:
        """IPA phonemes of each word of `text`, as espeak would say it (a g2p for anything)."""
        data = ctypes.create_string_buffer(text.encode("utf-8"))
        cursor = ctypes.c_void_p(ctypes.addressof(data))
        words: list[list[str]] = []
        with self.lock:
            self._configure(voice, self._settings[1] if self._settings else 150, None)
            # Each call converts one clause and moves the cursor on (NULL at the end).
            while cursor.value:
                out = self._lib.espeak_TextToPhonemes(ctypes.byref(cursor), _CHARS_UTF8, _IPA_MODE)
                for word in (out or b"").decode("utf-8").split():
                    words.append([p for p in word.split("_") if p])
        return words


_engine: Engine | None = None
_engine_lock = threading.Lock()


def engine() -> Engine:
    """The process's espeak-ng engine (a C library's globals: there can only be one)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Engine()
        return _engine

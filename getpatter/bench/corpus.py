"""The audio and text a bench feeds providers: utterances, prompts and sentences.

The built-in utterances are spoken by LocalTTS at run time (no audio ships with getpatter) and
put through the carrier's codec, so every STT hears what it would on a phone line: 8 kHz
G.711 μ-law. A user corpus is a folder of `name.wav` files, each with its reference transcript
in `name.txt`; its audio goes through the same codec.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from getpatter.errors import PatterConfigError

__all__ = [
    "CARRIER_RATE",
    "PROMPTS",
    "RECEPTIONIST_PROMPT",
    "SENTENCES",
    "TOOLS",
    "UTTERANCES",
    "Utterance",
    "builtin_corpus",
    "carrier_quality",
    "load_corpus",
    "voiced_bounds",
]

CARRIER_RATE = 8000
LEADING_SILENCE = 0.3  # seconds before a built-in utterance: the pipeline's pre-roll
Int16Array = npt.NDArray[np.int16]

#: What the built-in corpus says: things callers say to a receptionist.
UTTERANCES: tuple[str, ...] = (
    "What are your opening hours on Saturday?",
    "I would like to book an appointment for tomorrow at ten.",
    "Can you tell me where to park near the office?",
    "Please ask the doctor to call me back this afternoon.",
)

#: The LLM bench's requests: the caller's turn, after this system prompt and with TOOLS.
RECEPTIONIST_PROMPT = (
    "You are the receptionist of Acme Dental, answering the phone. This is a phone call: "
    "answer in one or two short sentences, with no lists, markdown or emoji. Opening hours: "
    "Monday to Friday 9 am to 5 pm, Saturday 10 am to 2 pm, closed on Sunday. The office is "
    "at 12 Harbour Street; parking is behind the building. To book, use schedule_appointment "
    "once you know the day and the time."
)
PROMPTS: tuple[str, ...] = (
    "Hi, what time do you open on Saturday?",
    "Is there somewhere to park near the office?",
    "I'd like to book a cleaning for tomorrow at ten.",
    "Can I speak to someone about my bill?",
    "Okay, thanks, that's all. Goodbye.",
)
TOOLS: tuple[dict[str, object], ...] = (
    {
        "name": "schedule_appointment",
        "description": "Book an appointment for the caller.",
        "parameters": {
            "type": "object",
            "properties": {
                "date": {"type": "string", "description": "The day, e.g. 2025-06-03"},
                "time": {"type": "string", "description": "The time, 24 h, e.g. 10:00"},
                "reason": {"type": "string", "description": "What the visit is for"},
            },
            "required": ["date", "time"],
        },
    },
)

#: The TTS bench's sentences: what a receptionist agent says, one sentence at a time.
SENTENCES: tuple[str, ...] = (
    "Thank you for calling Acme Dental, how can I help you today?",
    "We are open Monday to Friday, from nine in the morning to five in the evening.",
    "Your appointment is booked for tomorrow at ten.",
    "Is there anything else I can help you with?",
)


@dataclass(frozen=True)
class Utterance:
    """One thing a caller says: 8 kHz int16 audio (already through the carrier's codec) and
    what was said. `speech_start`/`speech_end`: the voiced part, in samples."""

    name: str
    text: str
    audio: Int16Array
    speech_start: int
    speech_end: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / CARRIER_RATE

    @property
    def speech_seconds(self) -> float:
        return (self.speech_end - self.speech_start) / CARRIER_RATE

    @classmethod
    def from_audio(cls, name: str, text: str, audio: npt.NDArray[np.int16]) -> Utterance:
        """Through the carrier's codec, with the voiced part found from the audio itself."""
        line = carrier_quality(audio)
        start, end = voiced_bounds(line)
        if end <= start:
            raise PatterConfigError(f"corpus utterance {name!r} has no speech in it")
        return cls(name, text, line, start, end)


def carrier_quality(audio: npt.NDArray[np.int16]) -> Int16Array:
    """8 kHz int16 audio as the carrier delivers it: encoded to G.711 μ-law and back."""
    from getpatter.core.audio import ulaw_decode, ulaw_encode

    return ulaw_decode(ulaw_encode(np.ascontiguousarray(audio, dtype=np.int16)))


def voiced_bounds(audio: npt.NDArray[np.int16], rate: int = CARRIER_RATE) -> tuple[int, int]:
    """The first and one past the last voiced sample.

    Voiced: a 10 ms frame whose RMS is above three times the noise floor (the quietest tenth
    of the frames) and within 40 dB of the loudest frame's, but never needs to be within
    30 dB of it, nor is anything under -56 dBFS voiced; inside the first and last such frames,
    the first and last samples louder than that threshold. On synthetic speech with digital
    silence around it this is the exact sample.
    """
    hop = rate // 100
    n = -(-len(audio) // hop)
    if n == 0:
        return 0, 0
    samples = np.zeros(n * hop)
    samples[: len(audio)] = audio
    frames = samples.reshape(n, hop)
    rms = np.sqrt((frames**2).mean(axis=1))
    peak = float(rms.max())
    noise = float(np.percentile(rms, 10))
    threshold = max(min(max(peak * 0.01, 3.0 * noise), peak * 0.03), 50.0)
    loud = np.flatnonzero(rms > threshold)
    if not len(loud):
        return 0, 0
    first, last = int(loud[0]), int(loud[-1])
    head = np.flatnonzero(np.abs(frames[first]) > threshold)
    tail = np.flatnonzero(np.abs(frames[last]) > threshold)
    start = first * hop + (int(head[0]) if len(head) else 0)
    end = last * hop + (int(tail[-1]) + 1 if len(tail) else hop)
    return start, end


async def builtin_corpus(
    texts: Sequence[str] = UTTERANCES, rate_wpm: int = 150, voice: str = "en-us"
) -> list[Utterance]:
    """The built-in utterances, spoken now by LocalTTS (espeak-ng) at 8 kHz, each after
    `LEADING_SILENCE` (espeak's audio starts and ends on the speech itself)."""
    from getpatter.core.audio import pcm16_array
    from getpatter.plugins.local.tts import LocalTTS

    tts = LocalTTS(voice=voice, rate_wpm=rate_wpm, sample_rate=CARRIER_RATE, encoding="pcm16")
    stream = await tts.open()
    lead = np.zeros(int(LEADING_SILENCE * CARRIER_RATE), np.int16)
    corpus = []
    try:
        for i, text in enumerate(texts, 1):
            chunks = [chunk async for chunk in stream.synthesize(text)]
            audio = np.concatenate([lead, pcm16_array(b"".join(chunks))])
            corpus.append(Utterance.from_audio(f"utt{i}", text, audio))
    finally:
        await stream.aclose()
    return corpus


def load_corpus(folder: str | Path) -> list[Utterance]:
    """`name.wav` (16-bit PCM, any rate, first channel) with `name.txt` beside each, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise PatterConfigError(f"--corpus {folder}: not a folder")
    wavs = sorted(root.glob("*.wav"))
    if not wavs:
        raise PatterConfigError(f"--corpus {folder}: no .wav files (want name.wav + name.txt)")
    corpus = []
    for wav in wavs:
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            raise PatterConfigError(f"{wav}: no reference transcript; write it to {txt}")
        text = " ".join(txt.read_text(encoding="utf-8").split())
        corpus.append(Utterance.from_audio(wav.stem, text, read_wav(wav)))
    return corpus


def read_wav(path: str | Path) -> Int16Array:
    """A 16-bit PCM WAV file as 8 kHz mono int16 (resampled once if need be)."""
    try:
        with wave.open(str(path)) as w:
            if w.getsampwidth() != 2:
                raise PatterConfigError(f"{path}: only 16-bit PCM WAV files are supported")
            channels, rate = w.getnchannels(), w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as exc:
        raise PatterConfigError(f"{path}: not a PCM WAV file ({exc})") from None
    if channels > 1:
        data = data.reshape(-1, channels)[:, 0]
    if rate != CARRIER_RATE:
        import soxr

        from getpatter.core.audio import float32_to_int16, int16_to_float32

        out = soxr.resample(int16_to_float32(np.ascontiguousarray(data)), rate, CARRIER_RATE)
        return float32_to_int16(np.asarray(out, dtype=np.float32))
    return data.astype(np.int16)

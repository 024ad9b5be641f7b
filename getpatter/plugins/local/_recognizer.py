"""One LocalSTT stream's recogniser: pocketsphinx decoding, run only in the executor,
one job at a time.

Rejection: a grammar result counts only when the search ends in the grammar's final state (a
whole phrase; pocketsphinx otherwise reports a partial path, so `bestpath` is off for the
grammar, whose lattice ignores the final state) and when no long stretch of speech was passed
off as silence, which is how a search explains "<phrase> and then something else".

Cepstral mean: pocketsphinx normalises live, from a prior that suits wideband audio rather than
the phone band, so the first utterance of a stream is decoded against the wrong mean and the
grammar often rejects it. A rejected utterance is therefore decoded again, normalised by its
own mean (what pocketsphinx's batch mode would use), taken back out of the live mean; at the
grammar's cost that is a few milliseconds. The fallback starts from that mean too.

Threads and the GIL: pocketsphinx runs in the event loop's default executor, but it holds the
GIL inside each call, so audio goes in 10 ms pieces (the event loop gets the GIL back between
two), and the language model's `fwdflat` and `bestpath` passes, which would hold it for
0.1–0.3 s at the end of an utterance, are off. Two consequences: all recognition in a process
shares one core, so the general model serves about three callers speaking at once; and loading
a decoder holds the GIL throughout — ~20 ms for a grammar (it gets a dictionary of just its
own words), ~0.35 s for the general model. Decoders are pooled per `LocalSTT` and the fallback
decoder is shared by its streams, so that happens once; `preload()` does it before serving.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import soxr

from getpatter.core.audio import (
    Int16Array,
    float32_to_int16,
    int16_to_float32,
    pcm16_array,
    ulaw_decode,
)
from getpatter.core.providers import Transcript

if TYPE_CHECKING:
    from .stt import LocalSTT

MODEL_RATE = 16000  # pocketsphinx's English acoustic model
_PIECE = MODEL_RATE // 100  # samples per process_raw call (10 ms): the longest GIL hold
_INTERIM_EVERY = MODEL_RATE // 2  # samples of new audio between interim transcripts
_MAX_UTTERANCE = 60 * MODEL_RATE  # audio kept for a second pass, in samples
_DITHER = 4.0  # standard deviation, in int16 steps (about -78 dBFS)
_RETRIES = 2  # grammar passes after a rejection, each with the utterance's own mean
_LONG_FILLER = 50  # frames (0.5 s) of "silence" long enough to be hiding speech
_FILLER_SPEECH_RATIO = 10 ** (-15 / 10)  # ... when within 15 dB of the words' level
_TRIM_BELOW_PEAK = 10 ** (-35 / 10)  # frames this far below the loudest are silence ...
_TRIM_MARGIN = 20  # ... and kept for this many frames (0.2 s) around the speech
_CMN_WIN, _CMN_WIN_HWM = 500, 800  # pocketsphinx's live CMN window (cmn.h)
FloatArray = npt.NDArray[np.float64]


@dataclass(slots=True)
class Decoders:
    """One stream's decoders: the grammar's (if any) and the general LM's (if any).

    With a grammar, the LM decoder is only the fallback, used for a moment now and then, so
    it is one per `LocalSTT`, shared under `lm_lock` (pocketsphinx holds the GIL while it
    decodes, so separate decoders would not run in parallel anyway, and each costs ~95 MB).
    """

    grammar: Any  # pocketsphinx.Decoder | None
    lm: Any  # pocketsphinx.Decoder | None
    fsg: Any  # pocketsphinx.FsgModel | None: accepts only complete grammar sentences
    prior: str  # the cepstral mean a fresh stream starts from
    lm_lock: threading.Lock | None = None  # set when `lm` is the shared fallback

    def reset(self) -> None:
        """Forget the last caller: a stream from the pool starts like a new one."""
        main = self.grammar if self.grammar is not None else self.lm
        main.set_cmn(self.prior)


# --- one stream's recogniser (runs only in the executor, one job at a time) -----------------


class Recognizer:
    def __init__(self, stt: LocalSTT, decoders: Decoders) -> None:
        self.decoders = decoders
        self.main = decoders.grammar if decoders.grammar is not None else decoders.lm
        self.phrases = stt.compiled().phrases if decoders.grammar is not None else {}
        self.min_confidence = stt.min_confidence
        self.mulaw = stt.encoding == "mulaw"
        self.rate = stt.sample_rate
        self.upsampler: soxr.ResampleStream | None = None
        if stt.sample_rate != MODEL_RATE:
            self.upsampler = soxr.ResampleStream(
                stt.sample_rate, MODEL_RATE, 1, dtype="float32", quality="HQ"
            )
        self.rng = np.random.default_rng(0)  # same audio in, same transcript out
        self.keep = decoders.grammar is not None  # a second pass needs the audio again
        self.audio: list[bytes] = []
        self.kept = 0
        self.in_utterance = False
        self.received = 0  # input samples since the stream opened
        self.started = 0  # ... when the utterance began
        self.since_interim = 0
        self.interim = ""
        self.mean_before = _cmn_vector(self.main.get_cmn())

    def feed(self, data: bytes) -> Transcript | None:
        """Decode more of the utterance; an interim transcript when the guess changed."""
        samples = ulaw_decode(data) if self.mulaw else pcm16_array(data)
        if not self.in_utterance:
            # Re-set the mean so its prior weighs exactly _CMN_WIN frames (_utterance_mean).
            mean = self.main.get_cmn(True)
            self.main.set_cmn(mean)
            self.mean_before = _cmn_vector(mean)
            self.main.start_utt()
            self.in_utterance = True
            self.started = self.received
            self.since_interim = 0
            self.interim = ""
        self.received += len(samples)
        pcm = self._prepare(samples, last=False)
        self._process(self.main, pcm)
        if self.keep and self.kept < _MAX_UTTERANCE * 2:
            self.audio.append(pcm)
            self.kept += len(pcm)
        self.since_interim += len(pcm) // 2
        if self.since_interim < _INTERIM_EVERY:
            return None
        self.since_interim = 0
        hyp = self.main.hyp()
        text = hyp.hypstr if hyp is not None else ""
        if not text or text == self.interim:
            return None
        self.interim = text
        return Transcript(text, is_final=False, start=self._seconds(self.started))

    def finish(self) -> Transcript | None:
        """End the utterance: its final transcript (None when no audio came since the last)."""
        if not self.in_utterance:
            return None
        tail = self._prepare(np.zeros(0, np.int16), last=True)
        self._process(self.main, tail)
        self.main.end_utt()
        self.in_utterance = False
        audio = b"".join([*self.audio, tail])
        self.audio, self.kept = [], 0
        text = self._hyp(self.main)
        confidence = None
        if self.decoders.grammar is not None:
            text, confidence = self._grammar_result(text, audio)
        return Transcript(
            text,
            is_final=True,
            speech_final=True,
            confidence=confidence,
            start=self._seconds(self.started),
            end=self._seconds(self.received),
        )

    def _grammar_result(self, text: str, audio: bytes) -> tuple[str, float | None]:
        """The phrase recognised, with its confidence; or the fallback's guess, with None."""
        grammar, lm = self.decoders.grammar, self.decoders.lm
        before = self.mean_before
        confidence = self._confidence(text, audio)
        if confidence < self.min_confidence:
            # Rejected, maybe only for want of the right cepstral mean. Decode again, twice
            # if need be, normalised by the utterance's own mean as pocketsphinx's batch mode
            # would, and without the long silences around it that would drag the mean away
            # from the speech's (the models were trained on closely cut utterances).
            audio = _trim(audio)
            for _ in range(_RETRIES):
                before = _utterance_mean(grammar, before)
                text = self._decode(grammar, audio)
                confidence = self._confidence(text, audio)
                if confidence >= self.min_confidence:
                    break
        if confidence >= self.min_confidence:
            return self.phrases.get(text, text), confidence
        if lm is None:
            return "", None
        mean = _cmn_text(_utterance_mean(grammar, before))
        assert self.decoders.lm_lock is not None
        with self.decoders.lm_lock:
            lm.set_cmn(mean)
            return self._decode(lm, audio), None

    def _confidence(self, text: str, audio: bytes) -> float:
        """How well the grammar's result fits the audio, 0–1; 0 when it is no result at all.

        Structure first. A grammar path only ends in the final state on a whole phrase; the
        partial path pocketsphinx reports otherwise is refused. And when the caller says a
        phrase and more, the search explains the rest as a long filler ("<sil>"): a filler of
        `_LONG_FILLER` frames or more nearly as loud as the words refuses the result too.

        Then fit: pocketsphinx scores each frame against the best-matching sound of that
        frame, so the words' score per frame says how far the phrase had to be forced onto
        the audio; `2 ** (score / 40)` maps it to 0–1. It is coarse: what a phrase scores
        depends on its sounds, so the right phrase and other speech forced onto a phrase
        overlap. Measured over 12 phrases and 6 other sentences, 6 espeak voices and rates,
        clean and with noise at -40 dBFS (216 utterances; `benchmarks/local_providers.py
        --voices`): rejecting below 0.45 cut other speech taken for a phrase from 28 % to
        14 % and kept 95 % of the phrases really said recognised (0.5: 6 % and 92 %).
        """
        grammar = self.decoders.grammar
        if not text or not self.decoders.fsg.accept(text):
            return 0.0
        samples = pcm16_array(audio).astype(np.float64)
        hop = MODEL_RATE // 100  # one frame
        logmath = grammar.get_logmath()
        speech: list[float] = []
        fillers: list[float] = []
        score = 0.0
        frames = 0
        for seg in grammar.seg() or ():
            piece = samples[seg.start_frame * hop : (seg.end_frame + 1) * hop]
            if not len(piece):
                continue
            power = float(np.dot(piece, piece) / len(piece))
            length = seg.end_frame - seg.start_frame + 1
            if not seg.word.startswith(("<", "[", "+", "(")):  # not a filler or (NULL)
                speech.append(power)
                score += logmath.log(seg.ascore) if seg.ascore > 0 else -1000.0 * length
                frames += length
            elif length >= _LONG_FILLER:
                fillers.append(power)
        if not speech:
            return 0.0
        floor = float(np.mean(speech)) * _FILLER_SPEECH_RATIO
        if any(power >= floor for power in fillers):
            return 0.0
        return float(2.0 ** (score / frames / 40.0))

    def abort(self) -> None:
        """Drop a half-decoded utterance (the stream is closing mid-speech)."""
        if self.in_utterance:
            self.main.end_utt()
            self.in_utterance = False
        self.audio, self.kept = [], 0

    def _prepare(self, samples: Int16Array, last: bool) -> bytes:
        """Input samples → dithered 16 kHz int16 bytes for pocketsphinx."""
        if self.upsampler is not None:
            out = self.upsampler.resample_chunk(int16_to_float32(samples), last=last)
            if last:
                self.upsampler.clear()
            samples = float32_to_int16(out)
        if not len(samples):
            return b""
        noisy = samples + self.rng.normal(0.0, _DITHER, len(samples))
        return np.clip(np.rint(noisy), -32768, 32767).astype("<i2").tobytes()

    @staticmethod
    def _process(decoder: Any, pcm: bytes) -> None:
        step = _PIECE * 2
        for i in range(0, len(pcm), step):
            decoder.process_raw(pcm[i : i + step], False, False)

    def _decode(self, decoder: Any, pcm: bytes) -> str:
        decoder.start_utt()
        self._process(decoder, pcm)
        decoder.end_utt()
        return self._hyp(decoder)

    @staticmethod
    def _hyp(decoder: Any) -> str:
        hyp = decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def _seconds(self, samples: int) -> float:
        return samples / self.rate


def _trim(pcm: bytes) -> bytes:
    """The utterance without leading and trailing silence (beyond `_TRIM_MARGIN`)."""
    samples = pcm16_array(pcm).astype(np.float64)
    hop = MODEL_RATE // 100
    n = len(samples) // hop
    if n == 0:
        return pcm
    power = (samples[: n * hop].reshape(n, hop) ** 2).mean(axis=1)
    loud = np.flatnonzero(power > power.max() * _TRIM_BELOW_PEAK)
    first = max(0, int(loud[0]) - _TRIM_MARGIN)
    last = min(n, int(loud[-1]) + 1 + _TRIM_MARGIN)
    return pcm[first * hop * 2 : last * hop * 2]


def _cmn_vector(text: str) -> FloatArray:
    return np.array([float(v) for v in text.split(",")])


def _cmn_text(mean: FloatArray) -> str:
    return ",".join(f"{v:.4f}" for v in mean)


def _utterance_mean(decoder: Any, before: FloatArray) -> FloatArray:
    """Set `decoder`'s cepstral mean to the mean of the utterance it just decoded; return it.

    pocketsphinx's live mean is a running sum seeded with the prior as `_CMN_WIN` frames,
    decayed back to that weight whenever it passes `_CMN_WIN_HWM` frames. Its final value is
    therefore `a * prior + b * utterance mean`, with weights that depend only on the frame
    count; replaying that arithmetic takes the prior back out.
    """
    after = _cmn_vector(decoder.get_cmn(True))
    a, b = _cmn_weights(decoder.n_frames())
    if b > 0.05:  # else the utterance hardly moved the mean: nothing to recover
        after = (after - a * before) / b
    decoder.set_cmn(_cmn_text(after))
    return after


@functools.lru_cache(maxsize=256)
def _cmn_weights(frames: int) -> tuple[float, float]:
    """Weights of the prior and of the utterance's mean in the live mean after `frames`."""
    prior, utterance, count = float(_CMN_WIN), 0.0, _CMN_WIN
    for _ in range(frames):
        utterance += 1.0
        count += 1
        if count > _CMN_WIN_HWM:
            scale = _CMN_WIN / count
            prior, utterance, count = prior * scale, utterance * scale, _CMN_WIN
    return prior / count, utterance / count

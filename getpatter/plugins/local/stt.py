"""LocalSTT: offline speech recognition with pocketsphinx — no key, no network.

Two ways to recognise, measured on espeak-spoken sentences at telephone quality (8 kHz μ-law,
see `benchmarks/local_providers.py`):

- **Phrase hints** (`phrases=[...]` or a JSGF `grammar=`): the utterance is matched against a
  grammar of the expected phrases, one phrase per utterance. Every test phrase is recognised,
  at ~2 % of real time. A recognised phrase comes back as it was given (case, punctuation).
  Speech the grammar rejects falls back to the general language model for that utterance
  (`fallback=True`), so an unexpected answer still gives some transcript.
- **General language model** (no hints): any English, but at phone quality it gets nearly all
  words of those sentences wrong, and it costs ~25–45 % of real time per speaking caller.

So give phrases whenever the answers can be foreseen (menus, yes/no, confirmations).

Rejection: a grammar result counts only when the search ends in the grammar's final state (a
whole phrase; pocketsphinx otherwise reports a partial path, so `bestpath` is off for the
grammar, whose lattice ignores the final state) and when no long stretch of speech was passed
off as silence, which is how a search explains "<phrase> and then something else".

Audio: the decoder runs at 16 kHz, the English model's own rate, so the pipeline resamples the
call's 8 kHz once. Configuring the decoder for 8 kHz instead (samprate 8000, nfft 256, the
model's filterbank cut to 3.5 kHz) was measured too: it squeezes the model's mel filters into
half the band it was trained on and recognised none of the test sentences, with the grammar or
without. `sample_rate=8000` is accepted for callers that want to hand over the carrier's audio
untouched (`encoding="mulaw"` too); the stream then resamples to 16 kHz itself.

Utterances: the pipeline's VAD decides where an utterance ends and calls `finalize()`; the
decoder's own endpointing is not used. Audio is decoded as it arrives (interim transcripts come
out about every half second of speech); `finalize()` gives the utterance's final transcript.
A little dither is added, because digital silence (exact zeros, common in carrier and test
audio) throws off pocketsphinx's cepstral mean and loses whole utterances.

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

import asyncio
import functools
import logging
import os
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
from getpatter.core.providers import AudioEncoding, Transcript
from getpatter.errors import PatterConfigError, ProviderError

from . import _grammar

__all__ = ["LocalSTT", "LocalSTTStream"]

log = logging.getLogger("getpatter.plugins.local")

MODEL_RATE = 16000  # pocketsphinx's English acoustic model
_PIECE = MODEL_RATE // 100  # samples per process_raw call (10 ms): the longest GIL hold
_INTERIM_EVERY = MODEL_RATE // 2  # samples of new audio between interim transcripts
_MAX_UTTERANCE = 60 * MODEL_RATE  # audio kept for a second pass, in samples
_DITHER = 4.0  # standard deviation, in int16 steps (about -78 dBFS)
_POOL_MAX = 4  # idle decoder sets kept per LocalSTT
_SEARCH = "hints"
_RETRIES = 2  # grammar passes after a rejection, each with the utterance's own mean
_LONG_FILLER = 50  # frames (0.5 s) of "silence" long enough to be hiding speech
_FILLER_SPEECH_RATIO = 10 ** (-15 / 10)  # ... when within 15 dB of the words' level
_TRIM_BELOW_PEAK = 10 ** (-35 / 10)  # frames this far below the loudest are silence ...
_TRIM_MARGIN = 20  # ... and kept for this many frames (0.2 s) around the speech
_CMN_WIN, _CMN_WIN_HWM = 500, 800  # pocketsphinx's live CMN window (cmn.h)
FloatArray = npt.NDArray[np.float64]


@dataclass(slots=True)
class _Decoders:
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


class LocalSTT:
    """Offline English STT. `phrases`: the answers you expect (recognised far better and
    cheaper than free speech); `grammar`: a JSGF grammar instead; neither: any English.

    `fallback`: decode speech the grammar rejects with the general language model (~95 MB,
    loaded once per `LocalSTT`); without it such speech gives an empty transcript.
    `min_confidence`: grammar results scoring below it are rejected (and go to the fallback).
    The score (a final's `confidence`) is a coarse fit measure; see `_Recognizer._confidence`
    for what the default trades.
    """

    encoding: AudioEncoding
    sample_rate: int

    def __init__(
        self,
        phrases: Sequence[str] | None = None,
        grammar: str | None = None,
        language: str = "en-us",
        sample_rate: int = MODEL_RATE,
        encoding: AudioEncoding = "pcm16",
        fallback: bool = True,
        min_confidence: float = 0.45,
    ) -> None:
        if phrases is not None and grammar is not None:
            raise PatterConfigError("LocalSTT: give phrases=[...] or grammar='...', not both")
        if isinstance(phrases, str):
            raise PatterConfigError("LocalSTT: phrases must be a list of phrases, not one string")
        if phrases is not None:
            phrases = tuple(phrases)
            if not all(isinstance(p, str) for p in phrases):
                raise PatterConfigError("LocalSTT: every phrase must be a string")
            if not any(_grammar.words_of(p) for p in phrases):
                raise PatterConfigError("LocalSTT: phrases=[...] has no phrase with any words")
        if grammar is not None and (not isinstance(grammar, str) or "public" not in grammar):
            raise PatterConfigError(
                "LocalSTT: grammar must be JSGF text with a public rule, e.g. "
                "'#JSGF V1.0; grammar g; public <answer> = yes | no;'"
            )
        _check_language(language)
        if sample_rate not in (8000, MODEL_RATE):
            raise PatterConfigError(
                f"LocalSTT: sample_rate must be 16000 (the model's) or 8000, got {sample_rate}"
            )
        if encoding not in ("pcm16", "mulaw"):
            raise PatterConfigError(
                f"LocalSTT: encoding must be 'pcm16' or 'mulaw', got {encoding!r}"
            )
        self.phrases: tuple[str, ...] | None = phrases
        self.grammar = grammar
        self.language = language
        self.sample_rate = sample_rate
        self.encoding = encoding
        if not 0.0 < min_confidence <= 1.0:
            raise PatterConfigError(
                f"LocalSTT: min_confidence must be in (0, 1], got {min_confidence!r}"
            )
        self.fallback = fallback
        self.min_confidence = float(min_confidence)
        self._compiled: _grammar.Grammar | None = None
        self._compile_lock = threading.Lock()
        self._pool: list[_Decoders] = []
        self._fallback: Any = None  # the shared fallback decoder, once loaded
        self._fallback_lock = threading.Lock()

    def __repr__(self) -> str:
        hints = (
            f"phrases=<{len(self.phrases)}>"
            if self.phrases is not None
            else ("grammar=<jsgf>" if self.grammar else "phrases=None")
        )
        return (
            f"LocalSTT({hints}, language={self.language!r}, sample_rate={self.sample_rate}, "
            f"encoding={self.encoding!r}, fallback={self.fallback}, "
            f"min_confidence={self.min_confidence})"
        )

    @property
    def hinted(self) -> bool:
        return self.phrases is not None or self.grammar is not None

    async def open(self, *, language: str = "en") -> LocalSTTStream:
        _check_language(language)
        decoders = self._pool.pop() if self._pool else await self._build_async()
        return LocalSTTStream(self, decoders)

    async def preload(self, streams: int = 1) -> None:
        """Load decoders for `streams` concurrent calls now, e.g. before serving, so that no
        call start pays for (and no other call stalls on) loading the language model."""
        built = [await self._build_async() for _ in range(streams - len(self._pool))]
        self._pool.extend(built)

    def _release(self, decoders: _Decoders) -> None:
        if len(self._pool) < _POOL_MAX:
            self._pool.append(decoders)

    async def _build_async(self) -> _Decoders:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._build)
        except ValueError as exc:
            raise PatterConfigError(f"LocalSTT: {exc}") from exc
        except RuntimeError as exc:
            raise ProviderError(f"LocalSTT: pocketsphinx failed to start: {exc}") from exc

    def compiled(self) -> _grammar.Grammar:
        """The grammar and its dictionary, built once (blocking: scans the dictionary)."""
        with self._compile_lock:
            if self._compiled is None:
                from pocketsphinx import get_model_path

                self._compiled = _grammar.build(
                    self.phrases,
                    self.grammar,
                    get_model_path("en-us/cmudict-en-us.dict"),
                    _espeak_g2p(),
                )
            return self._compiled

    def _build(self) -> _Decoders:
        """New decoders for one stream (blocking; in the executor)."""
        from pocketsphinx import Decoder

        grammar = fsg = None
        if self.hinted:
            compiled = self.compiled()
            # A dictionary of just the grammar's words: a fraction of the full one's load time.
            fd, path = tempfile.mkstemp(prefix="getpatter-", suffix=".dict")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(compiled.dictionary)
                # bestpath would rescore on a lattice that ignores the grammar's final state.
                grammar = Decoder(lm=None, dict=path, bestpath=False, loglevel="FATAL")
            finally:
                os.unlink(path)
            try:
                grammar.add_jsgf_string(_SEARCH, compiled.jsgf)
            except (ValueError, RuntimeError) as exc:
                raise ValueError(f"the grammar does not parse: {exc}") from exc
            grammar.activate_search(_SEARCH)
            fsg = grammar.get_fsg(_SEARCH)
            if not self.fallback:
                return _Decoders(grammar, None, fsg, grammar.get_cmn())
            with self._compile_lock:
                if self._fallback is None:
                    self._fallback = _lm_decoder()
            return _Decoders(grammar, self._fallback, fsg, grammar.get_cmn(), self._fallback_lock)
        lm = _lm_decoder()
        return _Decoders(None, lm, None, lm.get_cmn())


def _lm_decoder() -> Any:
    from pocketsphinx import Decoder

    # fwdflat's second pass and bestpath's lattice search would each run in one long
    # GIL-holding call (~0.1-0.3 s) at the end of every utterance. maxhmmpf 10000 (from the
    # default 30000; CMU's speed tuning suggests 3000-10000) caps the costliest frames, so
    # the longest single call, at ~15 ms, and cuts the cost by about a third.
    return Decoder(loglevel="FATAL", fwdflat=False, bestpath=False, maxhmmpf=10000)


def _check_language(language: str) -> None:
    if not isinstance(language, str) or language.replace("_", "-").lower().split("-")[0] != "en":
        raise PatterConfigError(
            f"LocalSTT recognises English only (pocketsphinx's en-us model), not {language!r}; "
            "use another STT provider for other languages"
        )


def _espeak_g2p() -> Callable[[str], str | None] | None:
    """espeak-ng as a pronunciation guesser for words the dictionary lacks, if installed."""
    try:
        from . import _espeak

        engine = _espeak.engine()
    except Exception as exc:  # espeakng-loader missing or its library failing to load
        log.info("LocalSTT: no espeak-ng for unknown words (%r)", exc)
        return None

    def g2p(word: str) -> str | None:
        phonemes = [p for w in engine.phonemes(word) for p in w]
        return _grammar.ipa_to_arpabet(phonemes)

    return g2p


# --- one stream's recogniser (runs only in the executor, one job at a time) -----------------


class _Recognizer:
    def __init__(self, stt: LocalSTT, decoders: _Decoders) -> None:
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


# --- the asyncio side -----------------------------------------------------------------------

_FINALIZE = object()
_CLOSE = object()


class LocalSTTStream:
    """One call's recogniser. `send` only queues; a worker task hands the audio to the
    executor, so neither `send` nor the event loop ever waits for pocketsphinx."""

    def __init__(self, stt: LocalSTT, decoders: _Decoders) -> None:
        self._stt = stt
        self._decoders = decoders
        self._recognizer = _Recognizer(stt, decoders)
        self._pending: deque[bytes | object] = deque()
        self._wake = asyncio.Event()
        self._out: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="local-stt")

    async def send(self, audio: bytes) -> None:
        self._check()
        if audio:
            self._put(bytes(audio))

    async def finalize(self) -> None:
        self._check()
        self._put(_FINALIZE)

    def transcripts(self) -> AsyncIterator[Transcript]:
        return self._transcripts()

    async def _transcripts(self) -> AsyncIterator[Transcript]:
        while (transcript := await self._out.get()) is not None:
            yield transcript
        if self._error is not None:
            raise ProviderError(f"LocalSTT failed: {self._error!r}") from self._error

    async def aclose(self) -> None:
        """Finish the job in hand, drop unprocessed audio, give the decoders back."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._put(_CLOSE)
        try:
            await asyncio.shield(self._worker)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled, not just the worker

    def _check(self) -> None:
        if self._error is not None:
            raise ProviderError(f"LocalSTT failed: {self._error!r}") from self._error
        if self._closed:
            raise ProviderError("LocalSTT stream is closed")

    def _put(self, item: bytes | object) -> None:
        self._pending.append(item)
        self._wake.set()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        recognizer = self._recognizer
        clean = False
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    item = self._pending.popleft()
                    if item is _CLOSE:
                        await loop.run_in_executor(None, recognizer.abort)
                        clean = True
                        return
                    if item is _FINALIZE:
                        result = await loop.run_in_executor(None, recognizer.finish)
                    else:
                        audio = [item]  # everything queued meanwhile goes in one job
                        while self._pending and isinstance(self._pending[0], bytes):
                            audio.append(self._pending.popleft())
                        data = b"".join(audio)  # type: ignore[arg-type]
                        result = await loop.run_in_executor(None, recognizer.feed, data)
                    if result is not None:
                        self._out.put_nowait(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("LocalSTT: recognition failed: %r", exc)
            self._error = exc
        finally:
            self._closed = True
            self._out.put_nowait(None)
            if clean:
                self._decoders.reset()
                self._stt._release(self._decoders)

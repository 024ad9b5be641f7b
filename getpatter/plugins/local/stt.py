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

See `_recognizer.py` for how an utterance is decoded (rejection, cepstral mean, threads
and the GIL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from getpatter.core.providers import AudioEncoding, Transcript
from getpatter.errors import PatterConfigError, ProviderError

from . import _grammar
from ._recognizer import MODEL_RATE, Decoders, Recognizer

__all__ = ["LocalSTT", "LocalSTTStream"]

log = logging.getLogger("getpatter.plugins.local")

_POOL_MAX = 4  # idle decoder sets kept per LocalSTT
_SEARCH = "hints"


class LocalSTT:
    """Offline English STT. `phrases`: the answers you expect (recognised far better and
    cheaper than free speech); `grammar`: a JSGF grammar instead; neither: any English.

    `fallback`: decode speech the grammar rejects with the general language model (~95 MB,
    loaded once per `LocalSTT`); without it such speech gives an empty transcript.
    `min_confidence`: grammar results scoring below it are rejected (and go to the fallback).
    The score (a final's `confidence`) is a coarse fit measure; see `Recognizer._confidence`
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
        self._pool: list[Decoders] = []
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

    def _release(self, decoders: Decoders) -> None:
        if len(self._pool) < _POOL_MAX:
            self._pool.append(decoders)

    async def _build_async(self) -> Decoders:
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

    def _build(self) -> Decoders:
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
                return Decoders(grammar, None, fsg, grammar.get_cmn())
            with self._compile_lock:
                if self._fallback is None:
                    self._fallback = _lm_decoder()
            return Decoders(grammar, self._fallback, fsg, grammar.get_cmn(), self._fallback_lock)
        lm = _lm_decoder()
        return Decoders(None, lm, None, lm.get_cmn())


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


# --- the asyncio side -----------------------------------------------------------------------

_FINALIZE = object()
_CLOSE = object()


class LocalSTTStream:
    """One call's recogniser. `send` only queues; a worker task hands the audio to the
    executor, so neither `send` nor the event loop ever waits for pocketsphinx."""

    def __init__(self, stt: LocalSTT, decoders: Decoders) -> None:
        self._stt = stt
        self._decoders = decoders
        self._recognizer = Recognizer(stt, decoders)
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

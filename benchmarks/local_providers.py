"""Speed and accuracy of the offline providers: LocalTTS (espeak-ng) and LocalSTT (pocketsphinx).

Run: python benchmarks/local_providers.py   (about 30 s)

The corpus is a set of sentences a caller might say, spoken by LocalTTS at 8 kHz and taken to
telephone quality the way a call carries them: μ-law encoded and decoded, then resampled to the
STT's 16 kHz with the pipeline's own streaming Resampler, with 300 ms of silence before (the
pipeline's pre-roll) and 600 ms after (the VAD's end-of-speech hangover). Three more sentences
are not in the phrase hints, to exercise the grammar's rejection and the language-model
fallback.

Rows:
  RTF          real-time factor, compute time / audio duration, per sentence (p50 and max):
               LocalTTS synthesis (text → 8 kHz audio), LocalSTT decoding with phrase hints,
               the same for sentences outside the hints (grammar pass, retry, LM fallback),
               and without hints (general language model only). STT time is measured from
               the first `send` to the final transcript, on a fresh stream per sentence
               (so every sentence is a stream's first utterance, the costliest case).
  latency      LocalTTS: from `synthesize(text)` to its first chunk of audio.
               LocalSTT: from `finalize()` (the VAD's end of speech) to the final transcript,
               with the audio sent at twice real time (all decoders keep up with that), for
               the first four sentences of each row: what a caller waits for after speaking.
  WER          word error rate over the in-hint sentences, with and without hints.

With --voices (a minute or two more): the phrase hints' accuracy and rejection over 6 espeak
voices and rates, clean and with white noise at -40 dBFS, on 12 phrases (4 with words the
dictionary lacks) and 6 sentences that are not among them, at a few `min_confidence` settings:
how many phrases come back right, rejected or wrong, and how many other sentences are taken
for one.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from getpatter.core.audio import AudioFrame, pcm16_bytes, ulaw_decode, ulaw_encode
from getpatter.core.resample import Resampler
from getpatter.plugins.local.stt import LocalSTT
from getpatter.plugins.local.tts import LocalTTS

SENTENCES = [
    "Hello, I would like to book a table.",
    "Yes, that works for me.",
    "Can you call me back tomorrow?",
    "I want to cancel my appointment.",
    "What time do you open on Sunday?",
    "Please transfer me to a human agent.",
    "No, thank you, goodbye.",
    "My order number is four five six.",
]
OUTSIDE = [
    "The weather is nice today.",
    "I lost my credit card yesterday.",
    "Send the package to my office.",
]
EXTRA = [
    "Send it to the office.",
    "Is Twilio down again?",
    "Ask for Siobhan Nguyen.",
    "Restart the Kubernetes cluster.",
]
OTHERS = ["Please send me the bill.", "Can I speak to the manager?", "Is the office open today?"]
VOICES = [
    ("en-us", 150),
    ("en", 150),
    ("en-us+f3", 150),
    ("en-us+m3", 170),
    ("en-us", 120),
    ("en-gb-x-rp", 180),
]
LEAD, TAIL = 0.3, 0.6
LATENCY_SENTENCES, LATENCY_SPEED = 4, 2.0


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diag, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (r != h))
    return row[-1]


def wer(pairs: list[tuple[str, str]]) -> float:
    errors = sum(edit_distance(words(r), words(h)) for r, h in pairs)
    return errors / sum(len(words(r)) for r, _ in pairs)


async def speak(tts: LocalTTS, text: str) -> tuple[bytes, float, float]:
    """8 kHz pcm16 of `text`, the seconds it took to make, and to its first chunk."""
    stream = await tts.open()
    t0 = time.perf_counter()
    chunks = []
    first = 0.0
    async for chunk in stream.synthesize(text):
        first = first or time.perf_counter() - t0
        chunks.append(chunk)
    return b"".join(chunks), time.perf_counter() - t0, first


def telephone(pcm8k: bytes, rate: int = 16000) -> bytes:
    """Padded, μ-law round-tripped, resampled to `rate` in 20 ms frames like the pipeline."""
    samples = np.frombuffer(pcm8k, "<i2")
    silence = np.zeros
    padded = np.concatenate(
        [silence(int(LEAD * 8000), np.int16), samples, silence(int(TAIL * 8000), np.int16)]
    )
    line = ulaw_decode(ulaw_encode(padded))
    if rate == 8000:
        return pcm16_bytes(line)
    resampler = Resampler(8000, rate)
    out = [
        resampler.process(AudioFrame(line[i : i + 160], 8000, i / 8000)).samples
        for i in range(0, len(line), 160)
    ]
    out.append(resampler.flush().samples)
    return pcm16_bytes(np.concatenate(out))


async def transcribe(
    stt: LocalSTT, audio: bytes, speed: float | None = None
) -> tuple[str, float, float]:
    """The final transcript of one utterance sent in 20 ms frames (as fast as possible, or
    at `speed` × real time), the time from the first `send` to the final transcript, and
    from `finalize` to the final transcript."""
    frame_bytes = 640
    stream = await stt.open()
    finals: list[str] = []

    async def read() -> None:
        async for t in stream.transcripts():
            if t.is_final:
                finals.append(t.text)
                return

    reader = asyncio.create_task(read())
    t0 = time.perf_counter()
    for n, i in enumerate(range(0, len(audio), frame_bytes)):
        await stream.send(audio[i : i + frame_bytes])
        if speed is not None:
            await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 / speed - time.perf_counter()))
    t1 = time.perf_counter()
    await stream.finalize()
    await reader
    done = time.perf_counter()
    await stream.aclose()
    return (finals[0] if finals else ""), done - t0, done - t1


async def main() -> None:
    tts = LocalTTS(sample_rate=8000)
    corpus: dict[str, bytes] = {}
    tts_rtf, tts_first = [], []
    for text in SENTENCES + OUTSIDE:
        audio, took, first = await speak(tts, text)
        corpus[text] = telephone(audio)
        tts_rtf.append(took / (len(audio) / 2 / 8000))
        tts_first.append(first)

    hinted = LocalSTT(phrases=SENTENCES)
    general = LocalSTT()
    t0 = time.perf_counter()
    await hinted.preload()
    t_hinted = time.perf_counter() - t0
    t0 = time.perf_counter()
    await general.preload()
    t_general = time.perf_counter() - t0

    rows: dict[str, list[float]] = {"LocalTTS synthesis": tts_rtf}
    latencies: dict[str, list[float]] = {"LocalTTS: text → first chunk": tts_first}
    results: dict[str, list[tuple[str, str]]] = {}
    for label, stt, texts in (
        ("LocalSTT, phrase hints", hinted, SENTENCES),
        ("LocalSTT, outside the hints", hinted, OUTSIDE),
        ("LocalSTT, no hints (LM)", general, SENTENCES + OUTSIDE),
    ):
        rtf, latency, pairs = [], [], []
        for text in texts:
            audio = corpus[text]
            hyp, took, _ = await transcribe(stt, audio)
            rtf.append(took / (len(audio) / 2 / 16000))
            pairs.append((text, hyp))
        for text in texts[:LATENCY_SENTENCES]:
            latency.append((await transcribe(stt, corpus[text], speed=LATENCY_SPEED))[2])
        rows[label] = rtf
        latencies[f"{label.replace('LocalSTT, ', 'LocalSTT: ')}"] = latency
        results[label] = pairs

    print(f"decoder load: hints {t_hinted * 1000:.0f} ms, general LM {t_general * 1000:.0f} ms")
    print(f"{'real-time factor':32} {'p50':>8} {'max':>8}")
    for label, values in rows.items():
        print(f"{label:32} {statistics.median(values):8.4f} {max(values):8.4f}")
    print()
    print(f"{'latency, ms (STT: finalize → final)':36} {'p50':>4} {'max':>8}")
    for label, values in latencies.items():
        ms = [v * 1000 for v in values]
        print(f"{label:36} {statistics.median(ms):4.0f} {max(ms):8.0f}")
    print()
    hinted_pairs = results["LocalSTT, phrase hints"]
    lm_pairs = [p for p in results["LocalSTT, no hints (LM)"] if p[0] in SENTENCES]
    print(f"WER with phrase hints    {wer(hinted_pairs):6.1%}   ({len(hinted_pairs)} sentences)")
    print(f"WER without (general LM) {wer(lm_pairs):6.1%}")
    print(f"WER outside the hints    {wer(results['LocalSTT, outside the hints']):6.1%}  (LM)")
    print()
    for label, pairs in results.items():
        print(label)
        for ref, hyp in pairs:
            print(f"  {ref:40} -> {hyp}")


async def robustness(min_confidences: tuple[float, ...] = (0.01, 0.45, 0.5)) -> None:
    phrases = SENTENCES + EXTRA
    corpus: list[tuple[str, bytes]] = []
    rng = np.random.default_rng(1)
    for voice, rate in VOICES:
        tts = LocalTTS(voice=voice, rate_wpm=rate)
        for noise in (0.0, 328.0):  # -40 dBFS
            for text in phrases + OUTSIDE + OTHERS:
                pcm = np.frombuffer((await speak(tts, text))[0], "<i2").astype(np.float64)
                pcm += rng.normal(0.0, noise, len(pcm)) if noise else 0.0
                audio = np.clip(np.rint(pcm), -32768, 32767).astype(np.int16)
                corpus.append((text, telephone(pcm16_bytes(audio))))
    print(f"phrase hints over {len(VOICES)} voices × clean/noisy: {len(corpus)} utterances")
    print(f"{'min_confidence':>14} {'right':>7} {'rejected':>9} {'wrong':>6} {'others taken':>13}")
    for floor in min_confidences:
        stt = LocalSTT(phrases=phrases, fallback=False, min_confidence=floor)
        counts = {"right": 0, "rejected": 0, "wrong": 0, "taken": 0, "others": 0}
        per_stream = len(phrases) + len(OUTSIDE) + len(OTHERS)
        for start in range(0, len(corpus), per_stream):
            stream = await stt.open()  # one stream per voice and noise, as one call
            finals = stream.transcripts()
            for text, audio in corpus[start : start + per_stream]:
                for i in range(0, len(audio), 640):
                    await stream.send(audio[i : i + 640])
                await stream.finalize()
                heard = ""
                async for t in finals:
                    if t.is_final:
                        heard = t.text
                        break
                if text not in phrases:
                    counts["others"] += 1
                    counts["taken"] += bool(heard)
                elif not heard:
                    counts["rejected"] += 1
                else:
                    counts["right" if words(heard) == words(text) else "wrong"] += 1
            await stream.aclose()
        n = len(corpus) - counts["others"]
        print(
            f"{floor:14.2f} {counts['right'] / n:7.1%} {counts['rejected'] / n:9.1%} "
            f"{counts['wrong'] / n:6.1%} {counts['taken'] / counts['others']:13.1%}"
        )


if __name__ == "__main__":
    asyncio.run(main())
    if "--voices" in sys.argv[1:]:
        print()
        asyncio.run(robustness())

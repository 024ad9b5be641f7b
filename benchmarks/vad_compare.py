"""Silero VAD vs webrtcvad, both behind getpatter's hysteresis, on the committed test WAVs.

Run: python benchmarks/vad_compare.py            (~10 s)
     python benchmarks/vad_compare.py --silero '{"neg_threshold": 0.45}'
     python benchmarks/vad_compare.py --derive-labels   (rewrites vad_labels.json)

What it measures, for each detector with its production defaults (`VAD()`, `SileroVAD()`):
- onset / offset error (ms) of the detected utterance against a labelled reference, on each
  clean recording (tests/data/*.wav at 8 kHz) and on the same speech mixed with generated
  noise (white at 10 dB and 0 dB SNR, hum + white), padded with 1 s of lead and 1.5 s of
  tail. Labels (`benchmarks/vad_labels.json`, committed) are the first and last 10 ms of each
  clean recording above -40 dBFS. "miss" means no utterance was found; "+N" extra ones.
- false starts on noise-only audio (seeded white, brown, hum, and hum + clicks; 10 s each).
- CPU per 20 ms carrier frame (process time over all the audio above, median of 5 runs), and
  the ratio to webrtcvad measured in the same run.

Noise comes from numpy's seeded generator, so every run sees the same audio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from getpatter.core.frame import AudioFrame  # noqa: E402
from getpatter.core.vad import VAD, SpeechDetector, VADEvent  # noqa: E402

RATE = 8000
DATA = ROOT / "tests" / "data"
LABELS = Path(__file__).resolve().parent / "vad_labels.json"
WAVS = ("hello.wav", "yes.wav", "callback.wav")
LEAD, TAIL = 1.0, 1.5


def read(name: str) -> np.ndarray:
    with wave.open(str(DATA / name)) as w:
        assert w.getframerate() == RATE, name
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def energy_labels(x: np.ndarray) -> tuple[float, float]:
    """First and last 10 ms frame of a clean recording above -40 dBFS, in seconds."""
    frames = x[: len(x) // 80 * 80].reshape(-1, 80).astype(np.float64)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > 32768 * 10 ** (-40 / 20))
    return round(loud[0] * 0.01, 3), round((loud[-1] + 1) * 0.01, 3)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def white(n: int, level: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, level, n)


def brown(n: int, level: float, seed: int) -> np.ndarray:
    walk = np.cumsum(np.random.default_rng(seed).normal(0, 1, n))
    walk -= np.convolve(walk, np.ones(400) / 400, mode="same")  # keep it centred
    return walk / max(rms(walk), 1e-9) * level


def hum(n: int, level: float) -> np.ndarray:
    t = np.arange(n) / RATE
    return level * (np.sin(2 * np.pi * 60 * t) + 0.5 * np.sin(2 * np.pi * 180 * t))


def clicks(n: int, level: float, seed: int) -> np.ndarray:
    out = np.zeros(n)
    rng = np.random.default_rng(seed)
    for at in rng.integers(0, n - 40, size=n // RATE * 2):  # two 5 ms clicks a second
        out[at : at + 40] = level * rng.choice([-1, 1])
    return out


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def padded(x: np.ndarray) -> np.ndarray:
    z = np.zeros
    return np.concatenate([z(int(LEAD * RATE), np.int16), x, z(int(TAIL * RATE), np.int16)])


def speech_cases() -> list[tuple[str, np.ndarray, str]]:
    """(case name, audio, label key)."""
    cases = []
    for i, name in enumerate(WAVS):
        clean = padded(read(name))
        level = rms(read(name))
        cases.append((f"{name} clean", clean, name))
        for snr, seed in ((10, 100 + i), (0, 200 + i)):
            noise = white(len(clean), level / 10 ** (snr / 20), seed)
            cases.append((f"{name} white {snr} dB", to_int16(clean + noise), name))
        noise = hum(len(clean), level / 3) + white(len(clean), level / 10, 300 + i)
        cases.append((f"{name} hum+white", to_int16(clean + noise), name))
    return cases


def noise_cases() -> list[tuple[str, np.ndarray]]:
    n = 10 * RATE
    return [
        ("white -40 dBFS", to_int16(white(n, 328, 1))),
        ("white -25 dBFS", to_int16(white(n, 1843, 2))),
        ("white -15 dBFS", to_int16(white(n, 5827, 3))),
        ("brown -25 dBFS", to_int16(brown(n, 1843, 4))),
        ("hum -20 dBFS", to_int16(hum(n, 3277))),
        ("hum + clicks", to_int16(hum(n, 1000) + clicks(n, 12000, 5))),
    ]


def run(detector: SpeechDetector, x: np.ndarray) -> list[VADEvent]:
    events: list[VADEvent] = []
    for i in range(0, len(x) - 159, 160):
        events += detector.process(AudioFrame(x[i : i + 160], RATE, i / RATE))
    return events + detector.end()


def segments(events: list[VADEvent]) -> list[tuple[float, float]]:
    starts = [e.timestamp for e in events if e.kind == "speech_started"]
    ends = [e.timestamp for e in events if e.kind == "speech_ended"]
    return list(zip(starts, ends, strict=False))


def cpu_per_frame(make: Callable[[], SpeechDetector], audio: list[np.ndarray]) -> float:
    """Median process time per 20 ms frame (µs) over 5 runs of all the audio."""
    frames = sum(len(x) // 160 for x in audio)
    samples = []
    for _ in range(5):
        detectors = [make() for _ in audio]  # built outside the timing
        began = time.process_time()
        for detector, x in zip(detectors, audio, strict=True):
            for i in range(0, len(x) - 159, 160):
                detector.process(AudioFrame(x[i : i + 160], RATE, i / RATE))
        samples.append((time.process_time() - began) / frames * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--derive-labels", action="store_true", help="rewrite vad_labels.json")
    parser.add_argument(
        "--silero", default="{}", help="SileroVAD options as JSON, e.g. '{\"threshold\": 0.6}'"
    )
    args = parser.parse_args()
    if args.derive_labels:
        labels = {
            name: dict(zip(("onset", "offset"), energy_labels(read(name)), strict=True))
            for name in WAVS
        }
        LABELS.write_text(json.dumps(labels, indent=2) + "\n")
        print(f"wrote {LABELS}")
        return 0
    labels = json.loads(LABELS.read_text())
    try:
        from getpatter.plugins.silero.vad import SileroVAD
    except ImportError:
        print("SileroVAD needs the silero extra: pip install 'getpatter[silero]'")
        return 1
    silero = SileroVAD(**json.loads(args.silero))
    makers: dict[str, Callable[[], Any]] = {
        "webrtcvad": lambda: VAD(),
        "silero": lambda: silero.create(RATE),
    }
    silero.create(RATE)  # load the library and the model once, outside every timing

    print("Silero VAD vs webrtcvad behind getpatter's hysteresis (production defaults)\n")
    print("Onset / offset error vs the labelled reference, ms (detected − reference):")
    header = f"  {'case':28}" + "".join(f"{name:>22}" for name in makers)
    print(header)
    errors: dict[str, dict[str, list[float]]] = {n: {"onset": [], "offset": []} for n in makers}
    misses = dict.fromkeys(makers, 0)
    cases = speech_cases()
    for case, audio, key in cases:
        onset = LEAD + labels[key]["onset"]
        offset = LEAD + labels[key]["offset"]
        row = f"  {case:28}"
        for name, make in makers.items():
            found = segments(run(make(), audio))
            if not found:
                misses[name] += 1
                row += f"{'miss':>22}"
                continue
            on_ms = (found[0][0] - onset) * 1000
            off_ms = (found[-1][1] - offset) * 1000
            errors[name]["onset"].append(abs(on_ms))
            errors[name]["offset"].append(abs(off_ms))
            extra = f" +{len(found) - 1}" if len(found) > 1 else ""
            row += f"{f'{on_ms:+.0f} / {off_ms:+.0f}{extra}':>22}"
        print(row)
    means = []
    for e in errors.values():
        on, off = statistics.mean(e["onset"] or [0]), statistics.mean(e["offset"] or [0])
        means.append(f"{on:.0f} / {off:.0f}")
    print(f"  {'mean |error| onset/offset':28}" + "".join(f"{m:>22}" for m in means))
    print(f"  {'missed utterances':28}" + "".join(f"{misses[n]:>22}" for n in makers))

    print("\nFalse starts on noise-only audio (10 s each):")
    print(f"  {'noise':28}" + "".join(f"{name:>22}" for name in makers))
    total = dict.fromkeys(makers, 0)
    for case, audio in noise_cases():
        counts = {name: len(segments(run(make(), audio))) for name, make in makers.items()}
        for name, count in counts.items():
            total[name] += count
        print(f"  {case:28}" + "".join(f"{counts[n]:>22}" for n in makers))
    print(f"  {'total':28}" + "".join(f"{total[n]:>22}" for n in makers))

    audio = [a for _, a, _ in cases] + [a for _, a in noise_cases()]
    seconds = sum(len(a) for a in audio) / RATE
    cpu = {name: cpu_per_frame(make, audio) for name, make in makers.items()}
    print(f"\nCPU per 20 ms frame ({seconds:.0f} s of audio, median of 5 runs, one thread):")
    for name, micros in cpu.items():
        ratio = micros / cpu["webrtcvad"]
        print(
            f"  {name:28}{micros:>10.1f} µs   {ratio:>5.1f}× webrtcvad   "
            f"{micros / 200:.2f} % of one core per call"
        )
    print(
        f"\n{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {platform.processor() or platform.system()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

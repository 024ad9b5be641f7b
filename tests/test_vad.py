"""VAD: speech start/end on real (espeak-ng) recordings, noise, gaps and odd frame sizes.

The detector is driven only by the frames' timestamps, so every test feeds audio as fast as
it can and still gets exact, repeatable event times.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from getpatter.core.audio import AudioFrame, Int16Array
from getpatter.core.vad import VAD, VADEvent, VADOptions
from getpatter.errors import PatterConfigError

DATA = Path(__file__).parent / "data"
RATE = 8000
FloatArray = npt.NDArray[np.float64]


# --- audio helpers -------------------------------------------------------------------------


def load(name: str) -> tuple[FloatArray, int]:
    """A committed recording as float samples on the int16 scale, and its rate."""
    with wave.open(str(DATA / name), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.astype(np.float64), w.getframerate()


def silence(seconds: float, rate: int = RATE) -> FloatArray:
    return np.zeros(round(seconds * rate))


def level(dbfs: float) -> float:
    """RMS amplitude on the int16 scale for a level in dBFS."""
    return 32768.0 * 10.0 ** (dbfs / 20.0)


def hiss(n: int, dbfs: float, seed: int = 7) -> FloatArray:
    return np.random.default_rng(seed).standard_normal(n) * level(dbfs)


def hum(n: int, dbfs: float, mains_hz: float, rate: int = RATE) -> FloatArray:
    """Mains hum: the fundamental plus a weaker third harmonic, at `dbfs` RMS overall."""
    t = np.arange(n) / rate
    tone = np.sin(2 * np.pi * mains_hz * t) + 0.3 * np.sin(2 * np.pi * 3 * mains_hz * t)
    return tone / np.sqrt(np.mean(tone**2)) * level(dbfs)


def to_int16(x: npt.NDArray[np.float64] | Int16Array) -> Int16Array:
    if x.dtype == np.int16:
        return x.astype(np.int16)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def speech_span(x: FloatArray, rate: int, threshold_dbfs: float = -40.0) -> tuple[float, float]:
    """Real onset and offset: first/last 5 ms block louder than `threshold_dbfs`."""
    block = rate // 200
    blocks = x[: len(x) // block * block].reshape(-1, block)
    loud = np.nonzero(np.sqrt(np.mean(blocks**2, axis=1)) > level(threshold_dbfs))[0]
    assert len(loud), "no speech in signal"
    return loud[0] * block / rate, (loud[-1] + 1) * block / rate


@dataclass(frozen=True)
class Decided:
    """An event and the audio time at which the VAD reported it (end of the frame fed)."""

    event: VADEvent
    at: float


def feed(
    vad: VAD,
    x: FloatArray | Int16Array,
    rate: int = RATE,
    chunk: int | None = None,
    t0: float = 0.0,
    end: bool = True,
) -> list[Decided]:
    """Stream `x` through `vad` in `chunk`-sample frames (20 ms by default)."""
    samples = to_int16(x)
    step = chunk or rate // 50
    out: list[Decided] = []
    for i in range(0, len(samples), step):
        frame = AudioFrame(samples[i : i + step], rate, t0 + i / rate)
        out += [Decided(e, frame.end) for e in vad.process(frame)]
    if end:
        out += [Decided(e, t0 + len(samples) / rate) for e in vad.end()]
    return out


def kinds(decided: list[Decided]) -> list[str]:
    return [d.event.kind for d in decided]


def events(decided: list[Decided]) -> list[VADEvent]:
    return [d.event for d in decided]


def same_events(a: list[VADEvent], b: list[VADEvent], tolerance: float = 1e-9) -> bool:
    return len(a) == len(b) and all(
        x.kind == y.kind and abs(x.timestamp - y.timestamp) <= tolerance
        for x, y in zip(a, b, strict=True)
    )


# --- no speech -----------------------------------------------------------------------------


def test_silence_gives_no_events() -> None:
    vad = VAD()
    assert feed(vad, silence(10.0)) == []
    assert not vad.speaking


@pytest.mark.parametrize(
    "noise",
    [
        pytest.param(lambda n: hiss(n, -50.0), id="hiss-50dBFS"),
        pytest.param(lambda n: hum(n, -50.0, 50.0), id="hum50Hz-50dBFS"),
        pytest.param(lambda n: hum(n, -50.0, 60.0), id="hum60Hz-50dBFS"),
        pytest.param(lambda n: hiss(n, -55.0) + hum(n, -55.0, 60.0), id="hiss+hum-52dBFS"),
    ],
)
def test_line_noise_and_hum_give_no_events(noise: Callable[[int], FloatArray]) -> None:
    assert feed(VAD(), noise(10 * RATE)) == []


def test_energy_floor_overrides_webrtcvad() -> None:
    # At aggressiveness 0 webrtcvad calls quiet mains hum speech; only the floor stops it.
    x = hum(5 * RATE, -55.0, 60.0)
    no_floor = VADOptions(aggressiveness=0, energy_floor_dbfs=-math.inf)
    assert kinds(feed(VAD(no_floor), x)) == ["speech_started", "speech_ended"]
    assert feed(VAD(VADOptions(aggressiveness=0)), x) == []


def test_speech_below_the_energy_floor_is_ignored() -> None:
    x, _ = load("yes.wav")
    quiet = np.concatenate([silence(0.5), x * 10 ** (-50 / 20), silence(1.0)])  # ≈ -75 dBFS
    loose = VADOptions(aggressiveness=0, energy_floor_dbfs=-math.inf)
    assert kinds(feed(VAD(loose), quiet))[:1] == ["speech_started"]
    assert feed(VAD(VADOptions(aggressiveness=0)), quiet) == []


# --- one utterance -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hello.wav", "yes.wav", "callback.wav"])
def test_utterance_padded_with_silence_gives_one_start_and_end(name: str) -> None:
    speech, rate = load(name)
    lead = 1.0
    x = np.concatenate([silence(lead), speech, silence(2.0)])
    onset, offset = speech_span(x, rate)
    opts = VADOptions()
    vad = VAD(opts)

    out = feed(vad, x, end=False)

    assert kinds(out) == ["speech_started", "speech_ended"]
    started, ended = out
    assert abs(started.event.timestamp - onset) <= 0.1
    assert abs(ended.event.timestamp - offset) <= 0.1
    # The start is decided once start_voiced_ms of speech is in, stamped back at the onset.
    assert started.at - started.event.timestamp >= opts.start_voiced_ms / 1000 - 1e-9
    assert started.at - onset <= opts.start_window_ms / 1000 + 0.1
    # The end is decided after exactly end_silence_ms of unvoiced audio.
    assert ended.at - ended.event.timestamp == pytest.approx(opts.end_silence_ms / 1000)
    assert ended.at - offset <= opts.end_silence_ms / 1000 + 0.1
    assert not vad.speaking
    assert vad.end() == []


def test_speaking_follows_the_events() -> None:
    speech, _ = load("yes.wav")
    x = to_int16(np.concatenate([silence(0.5), speech, silence(1.0)]))
    vad = VAD()
    assert not vad.speaking
    seen: list[tuple[str, bool]] = []
    for i in range(0, len(x), 160):
        seen += [
            (e.kind, vad.speaking) for e in vad.process(AudioFrame(x[i : i + 160], RATE, i / RATE))
        ]
    assert seen == [("speech_started", True), ("speech_ended", False)]


def test_timestamps_come_from_the_audio_not_from_zero() -> None:
    speech, _ = load("yes.wav")
    x = np.concatenate([silence(0.5), speech, silence(1.0)])
    at_zero = events(feed(VAD(), x))
    later = events(feed(VAD(), x, t0=1000.0))
    assert [e.kind for e in later] == [e.kind for e in at_zero]
    for a, b in zip(at_zero, later, strict=True):
        assert b.timestamp == pytest.approx(a.timestamp + 1000.0, abs=1e-9)


def test_end_closes_an_open_utterance() -> None:
    speech, rate = load("hello.wav")
    _, offset = speech_span(speech, rate)
    cut = speech[: int(offset * rate)]  # stream stops mid-utterance, no trailing silence
    vad = VAD()
    out = feed(vad, np.concatenate([silence(0.3), cut]), end=False)
    assert kinds(out) == ["speech_started"]
    assert vad.speaking
    closing = vad.end()
    assert [e.kind for e in closing] == ["speech_ended"]
    assert abs(closing[0].timestamp - (0.3 + offset)) <= 0.1
    assert not vad.speaking
    assert vad.end() == []


def test_reset_forgets_an_open_utterance() -> None:
    speech, _ = load("yes.wav")
    vad = VAD()
    feed(vad, np.concatenate([silence(0.3), speech[:4000]]), end=False)
    assert vad.speaking
    vad.reset()
    assert not vad.speaking
    assert vad.end() == []


# --- pauses --------------------------------------------------------------------------------


def two_utterances(pause: float) -> FloatArray:
    first, _ = load("yes.wav")
    second, _ = load("callback.wav")
    f_on, f_off = speech_span(first, RATE)
    s_on, s_off = speech_span(second, RATE)
    # Trim each recording to its speech so `pause` is the real gap between the words.
    first = first[int(f_on * RATE) : int(f_off * RATE)]
    second = second[int(s_on * RATE) : int(s_off * RATE)]
    return np.concatenate([silence(0.5), first, silence(pause), second, silence(1.5)])


def test_short_pause_stays_one_utterance() -> None:
    out = feed(VAD(), two_utterances(pause=0.3))
    assert kinds(out) == ["speech_started", "speech_ended"]


def test_long_pause_gives_two_utterances() -> None:
    x = two_utterances(pause=1.2)
    out = feed(VAD(), x)
    assert kinds(out) == ["speech_started", "speech_ended"] * 2
    first, _ = load("yes.wav")
    f_on, f_off = speech_span(first, RATE)
    first_offset = 0.5 + (int(f_off * RATE) - int(f_on * RATE)) / RATE
    second_onset = first_offset + 1.2
    assert abs(out[0].event.timestamp - 0.5) <= 0.1
    assert abs(out[1].event.timestamp - first_offset) <= 0.1
    assert abs(out[2].event.timestamp - second_onset) <= 0.1
    assert out[1].at < out[2].at


def test_end_silence_option_decides_how_long_a_pause_may_be() -> None:
    x = two_utterances(pause=0.4)
    assert len(feed(VAD(VADOptions(end_silence_ms=600)), x)) == 2
    assert len(feed(VAD(VADOptions(end_silence_ms=300)), x)) == 4


# --- bursts and noise ----------------------------------------------------------------------


def test_click_does_not_start_speech() -> None:
    click = np.zeros(RATE // 100)  # a 10 ms full-scale click
    click[:40] = 30000.0 * np.sign(np.sin(np.arange(40)))
    x = np.concatenate([silence(1.0), click, silence(1.0)])
    assert feed(VAD(), x) == []


def test_burst_shorter_than_the_start_requirement_does_not_start_speech() -> None:
    speech, _ = load("hello.wav")
    # 80 ms from the loud vowel in the middle of "hello" (0.26-0.34 s): voiced, but too short.
    burst = speech[int(0.26 * RATE) : int(0.34 * RATE)]
    x = np.concatenate([silence(1.0), burst, silence(1.0)])
    assert feed(VAD(), x) == []
    # Not vacuous: the same burst does start speech when one voiced frame is enough.
    eager = VADOptions(start_window_ms=20, start_voiced_ms=20)
    assert kinds(feed(VAD(eager), x)) == ["speech_started", "speech_ended"]


@pytest.mark.parametrize("name", ["hello.wav", "yes.wav", "callback.wav"])
def test_speech_in_noise_is_detected(name: str) -> None:
    speech, rate = load(name)
    clean = np.concatenate([silence(1.0), speech, silence(2.0)])
    onset, offset = speech_span(clean, rate)
    noisy = clean + hiss(len(clean), -35.0) + hum(len(clean), -45.0, 50.0)  # ≈15 dB SNR
    out = feed(VAD(), noisy)
    assert kinds(out) == ["speech_started", "speech_ended"]
    assert abs(out[0].event.timestamp - onset) <= 0.1
    assert abs(out[1].event.timestamp - offset) <= 0.15


# --- rates, frame sizes and timestamps -----------------------------------------------------


def test_16k_input_works() -> None:
    speech, rate = load("yes_16k.wav")
    assert rate == 16000
    x = np.concatenate([silence(1.0, rate), speech, silence(1.5, rate)])
    onset, offset = speech_span(x, rate)
    out = feed(VAD(sample_rate=rate), x, rate=rate)
    assert kinds(out) == ["speech_started", "speech_ended"]
    assert abs(out[0].event.timestamp - onset) <= 0.1
    assert abs(out[1].event.timestamp - offset) <= 0.1


@pytest.mark.parametrize("rate", [32000, 48000])
def test_higher_webrtcvad_rates_are_accepted(rate: int) -> None:
    x = np.repeat(two_utterances(pause=1.2), rate // RATE)  # crude upsample is enough here
    assert (
        kinds(feed(VAD(sample_rate=rate), x, rate=rate)) == ["speech_started", "speech_ended"] * 2
    )


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_odd_frame_sizes_give_the_same_events_as_20ms_frames(frame_ms: int) -> None:
    x = two_utterances(pause=1.2)
    opts = VADOptions(frame_ms=frame_ms)
    reference = events(feed(VAD(opts), x, chunk=160))
    assert len(reference) == 4
    assert events(feed(VAD(opts), x, chunk=56)) == reference  # 7 ms
    assert events(feed(VAD(opts), x, chunk=1)) == reference  # sample by sample
    assert events(feed(VAD(opts), x, chunk=len(x))) == reference  # all at once

    # Random sizes, empty frames included.
    samples = to_int16(x)
    rng = np.random.default_rng(3)
    vad = VAD(opts)
    got: list[VADEvent] = []
    i = 0
    while i < len(samples):
        n = int(rng.integers(0, 700))
        got += vad.process(AudioFrame(samples[i : i + n], RATE, i / RATE))
        i += n
    got += vad.end()
    assert got == reference


def test_jittery_timestamps_within_tolerance_change_nothing() -> None:
    samples = to_int16(two_utterances(pause=1.2))
    reference = events(feed(VAD(), samples))
    rng = np.random.default_rng(5)
    vad = VAD()
    got: list[VADEvent] = []
    for i in range(0, len(samples), 160):
        # Each stamp off by up to 0.85 ms, so two never disagree by the 2 ms that makes a gap.
        stamp = round(i / RATE + float(rng.uniform(-0.0008, 0.0008)), 4)
        got += vad.process(AudioFrame(samples[i : i + 160], RATE, stamp))
    got += vad.end()
    assert same_events(got, reference, tolerance=0.001)  # the clock starts at the first stamp


def test_timestamp_gap_counts_as_silence() -> None:
    # The same audio, once with the pause as real zeros and once as missing frames.
    first, _ = load("yes.wav")
    second, _ = load("callback.wav")
    head = to_int16(np.concatenate([silence(0.5), first]))
    head = head[: len(head) // 160 * 160]  # whole frames, so both runs cut the same frames
    tail = to_int16(np.concatenate([second, silence(1.5)]))
    gap = 1.0
    with_zeros = events(feed(VAD(), np.concatenate([head, to_int16(silence(gap)), tail])))

    vad = VAD()
    got = [d.event for d in feed(vad, head, end=False)]
    got += [d.event for d in feed(vad, tail, t0=len(head) / RATE + gap)]

    assert [e.kind for e in got] == ["speech_started", "speech_ended"] * 2
    assert same_events(got, with_zeros)


def test_short_gap_inside_speech_does_not_end_it() -> None:
    speech, _ = load("hello.wav")
    x = to_int16(np.concatenate([silence(0.5), speech, silence(1.5)]))
    half = len(x) // 2
    vad = VAD()
    out = feed(vad, x[:half], end=False)
    out += feed(vad, x[half:], t0=half / RATE + 0.2)  # 200 ms of frames lost
    assert kinds(out) == ["speech_started", "speech_ended"]


def test_flush_counts_missing_audio_as_silence() -> None:
    speech, rate = load("yes.wav")
    _, offset = speech_span(speech, rate)
    x = to_int16(np.concatenate([silence(0.5), speech[: int(offset * rate)]]))
    vad = VAD()
    assert kinds(feed(vad, x[:-3], end=False)) == ["speech_started"]  # leaves a partial frame
    last = len(x[:-3]) / RATE
    assert vad.flush(last + 0.3) == []  # shorter than end_silence_ms: still speaking
    assert vad.speaking
    closing = vad.flush(last + 0.7)
    assert [e.kind for e in closing] == ["speech_ended"]
    assert abs(closing[0].timestamp - (0.5 + offset)) <= 0.1
    assert not vad.speaking
    assert vad.flush(last + 5.0) == []


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggressiveness": 4}, "aggressiveness"),
        ({"aggressiveness": -1}, "aggressiveness"),
        ({"aggressiveness": True}, "aggressiveness"),
        ({"aggressiveness": 2.0}, "aggressiveness"),
        ({"frame_ms": 25}, "frame_ms"),
        ({"start_window_ms": 0}, "start_window_ms"),
        ({"start_window_ms": 10}, "start_window_ms"),
        ({"start_voiced_ms": -5}, "start_voiced_ms"),
        ({"start_voiced_ms": 250}, "start_voiced_ms"),
        ({"end_silence_ms": 0}, "end_silence_ms"),
        ({"end_silence_ms": math.nan}, "end_silence_ms"),
        ({"end_silence_ms": "600"}, "end_silence_ms"),
        ({"energy_floor_dbfs": 3.0}, "energy_floor_dbfs"),
        ({"energy_floor_dbfs": math.nan}, "energy_floor_dbfs"),
        ({"frame_ms": 30, "start_window_ms": 50, "start_voiced_ms": 40}, "window holds only"),
    ],
)
def test_invalid_options_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PatterConfigError, match=message):
        VADOptions(**kwargs)  # type: ignore[arg-type]
    assert issubclass(PatterConfigError, ValueError)


def test_bad_sample_rates_and_samples_raise() -> None:
    with pytest.raises(PatterConfigError, match="sample_rate"):
        VAD(sample_rate=11025)
    vad = VAD()
    with pytest.raises(ValueError, match="16000 Hz"):
        vad.process(AudioFrame(np.zeros(320, dtype=np.int16), 16000, 0.0))
    with pytest.raises(ValueError, match="int16"):
        vad.process(AudioFrame(np.zeros(160, dtype=np.float32), RATE, 0.0))


def test_defaults_suit_telephone_audio() -> None:
    opts = VADOptions()
    assert (opts.aggressiveness, opts.frame_ms) == (2, 20)
    assert (opts.start_window_ms, opts.start_voiced_ms, opts.end_silence_ms) == (200, 120, 600)
    assert opts.energy_floor_dbfs == -48.0
    assert VAD().sample_rate == 8000


def test_reset_also_resets_webrtcvad() -> None:
    # Same input after reset() as into a fresh VAD gives the same events.
    x = two_utterances(pause=1.2) + hiss(len(two_utterances(pause=1.2)), -40.0)
    fresh = events(feed(VAD(), x))
    vad = VAD()
    feed(vad, hiss(3 * RATE, -30.0, seed=11), end=False)
    vad.reset()
    assert events(feed(vad, x)) == fresh

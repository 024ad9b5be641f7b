"""The C audio core and its numpy fallback: bit-exact with each other and with audioop."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from getpatter.core import audio

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python >= 3.13
        audioop = None  # type: ignore[assignment]

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop left the stdlib in 3.13")
needs_c = pytest.mark.skipif(audio._C is None, reason="C core not built")

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)

NUMPY: dict[str, Callable[..., Any]] = {
    "ulaw_decode": audio._np_ulaw_decode,
    "ulaw_encode": audio._np_ulaw_encode,
    "alaw_decode": audio._np_alaw_decode,
    "alaw_encode": audio._np_alaw_encode,
    "int16_to_float32": audio._np_int16_to_float32,
    "float32_to_int16": audio._np_float32_to_int16,
    "apply_gain": audio._np_apply_gain,
    "mix": audio._np_mix,
    "rms": audio._np_rms,
    "peak": audio._np_peak,
}
C: dict[str, Callable[..., Any]] = {
    "ulaw_decode": audio._c_ulaw_decode,
    "ulaw_encode": audio._c_ulaw_encode,
    "alaw_decode": audio._c_alaw_decode,
    "alaw_encode": audio._c_alaw_encode,
    "int16_to_float32": audio._c_int16_to_float32,
    "float32_to_int16": audio._c_float32_to_int16,
    "apply_gain": audio._c_apply_gain,
    "mix": audio._c_mix,
    "rms": audio._c_rms,
    "peak": audio._c_peak,
}


@pytest.fixture(params=["c", "numpy"])
def impl(request: pytest.FixtureRequest) -> dict[str, Callable[..., Any]]:
    """Run a test once per backend, in the same process."""
    if request.param == "c":
        if audio._C is None:
            pytest.skip("C core not built")
        return C
    return NUMPY


def both(name: str, *args: Any) -> Any:
    """Call `name` on both backends, assert bit-identical results, return the result."""
    expected = NUMPY[name](*args)
    if audio._C is None:
        return expected
    got = C[name](*args)
    assert type(got) is type(expected)
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes()  # bit for bit, NaN and -0.0 included
    else:
        assert got == expected
    return expected


# ------------------------------------------------------------------------- backend


def test_c_backend_is_loaded_unless_forced() -> None:
    if os.environ.get("GETPATTER_AUDIO_BACKEND", "").strip().lower() == "numpy":
        assert audio.BACKEND == "numpy"
    else:
        assert audio.BACKEND == "c"
        assert audio._C is not None
        assert audio.ulaw_decode is audio._c_ulaw_decode


def _backend_in_subprocess(value: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("GETPATTER_AUDIO_BACKEND", None)
    if value is not None:
        env["GETPATTER_AUDIO_BACKEND"] = value
    code = (
        "from getpatter.core import audio as a; "
        "print(a.BACKEND, a.ulaw_decode.__name__, a.rms.__name__)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_env_var_forces_numpy_backend() -> None:
    proc = _backend_in_subprocess("numpy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["numpy", "_np_ulaw_decode", "_np_rms"]


@needs_c
def test_env_var_unset_or_c_selects_c_backend() -> None:
    for value in (None, "c", "auto"):
        proc = _backend_in_subprocess(value)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["c", "_c_ulaw_decode", "_c_rms"]


def test_missing_extension_falls_back_to_numpy() -> None:
    code = (
        "import sys; sys.modules['getpatter.core._audio'] = None\n"  # as if never built
        "from getpatter.core import audio as a\n"
        "print(a.BACKEND, a._C, a.ulaw_decode(b'\\xff\\x00').tolist())"
    )
    env = {k: v for k, v in os.environ.items() if k != "GETPATTER_AUDIO_BACKEND"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "numpy None [0, -32124]"
    env["GETPATTER_AUDIO_BACKEND"] = "c"  # insisting on C without it fails loudly
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "ImportError" in proc.stderr


# -------------------------------------------------------------------------- G.711


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_decode_all_codes_backends_agree(law: str) -> None:
    samples = both(f"{law}_decode", ALL_CODES)
    assert samples.dtype == np.int16 and len(samples) == 256


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_encode_all_int16_values_backends_agree(law: str) -> None:
    codes = both(f"{law}_encode", ALL_SAMPLES)
    assert isinstance(codes, bytes) and len(codes) == 65536


@needs_audioop
@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_matches_audioop_exhaustively(impl: dict[str, Callable[..., Any]], law: str) -> None:
    to_lin = audioop.ulaw2lin if law == "ulaw" else audioop.alaw2lin
    from_lin = audioop.lin2ulaw if law == "ulaw" else audioop.lin2alaw
    assert impl[f"{law}_decode"](ALL_CODES).tobytes() == to_lin(ALL_CODES, 2)
    assert impl[f"{law}_encode"](ALL_SAMPLES) == from_lin(ALL_SAMPLES.tobytes(), 2)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_reencoding_a_decoded_code_is_stable(
    impl: dict[str, Callable[..., Any]], law: str
) -> None:
    decoded = impl[f"{law}_decode"](ALL_CODES)
    again = impl[f"{law}_decode"](impl[f"{law}_encode"](decoded))
    np.testing.assert_array_equal(again, decoded)


def test_g711_known_values(impl: dict[str, Callable[..., Any]]) -> None:
    # Silence is 0xFF in mu-law and 0xD5 in A-law; full scale lands on the end codes.
    assert impl["ulaw_encode"](np.array([0, 32767, -32768], np.int16)) == b"\xff\x80\x00"
    assert impl["alaw_encode"](np.array([0, 32767, -32768], np.int16)) == b"\xd5\xaa\x2a"
    assert impl["ulaw_decode"](b"\xff\x7f\x80\x00").tolist() == [0, 0, 32124, -32124]
    assert impl["alaw_decode"](b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]


def _pcm_variants(samples: np.ndarray) -> list[Any]:
    """The same int16 samples as every kind of input the API accepts."""
    raw = samples.tobytes()
    doubled = np.repeat(samples, 2)
    return [
        samples,
        raw,
        bytearray(raw),
        memoryview(raw),
        memoryview(samples),  # type: ignore[arg-type]  # format 'h'
        memoryview(b"\x00" + raw)[1:],  # unaligned start
        doubled[::2],  # strided
        samples.reshape(-1, 4) if len(samples) % 4 == 0 else samples,
        samples.astype(">i2"),  # byte-swapped int16
    ]


def test_inputs_every_buffer_kind(impl: dict[str, Callable[..., Any]]) -> None:
    rng = np.random.default_rng(1)
    samples = rng.integers(-32768, 32768, 320, dtype=np.int16)
    codes = impl["ulaw_encode"](samples)
    decoded = impl["ulaw_decode"](codes)
    floats = impl["int16_to_float32"](samples)
    for variant in _pcm_variants(samples):
        assert impl["ulaw_encode"](variant) == codes
        assert impl["alaw_encode"](variant) == impl["alaw_encode"](samples)
        np.testing.assert_array_equal(impl["int16_to_float32"](variant), floats)
        np.testing.assert_array_equal(
            impl["apply_gain"](variant, 0.5), impl["apply_gain"](samples, 0.5)
        )
        np.testing.assert_array_equal(impl["mix"](variant, variant), impl["mix"](samples, samples))
        assert impl["rms"](variant) == impl["rms"](samples)
        assert impl["peak"](variant) == impl["peak"](samples)
    code_array = np.frombuffer(codes, np.uint8)
    code_variants: list[Any] = [
        codes,
        bytearray(codes),
        memoryview(codes),
        code_array,
        np.repeat(code_array, 2)[::2],
        code_array.view(np.int8),
    ]
    for variant in code_variants:
        np.testing.assert_array_equal(impl["ulaw_decode"](variant), decoded)
    for variant in (
        floats,
        floats.tobytes(),
        bytearray(floats.tobytes()),
        floats.astype(np.float64),
    ):
        np.testing.assert_array_equal(impl["float32_to_int16"](variant), samples)


def test_outputs_are_fresh_writable_arrays_and_bytes(impl: dict[str, Callable[..., Any]]) -> None:
    samples = np.array([1, -2, 3, -4], np.int16)
    arrays = [
        impl["ulaw_decode"](b"\x00\x01"),
        impl["alaw_decode"](b"\x00\x01"),
        impl["float32_to_int16"](np.zeros(3, np.float32)),
        impl["apply_gain"](samples, 1.0),
        impl["mix"](samples, samples),
    ]
    for out in arrays:
        assert out.dtype == np.int16 and out.ndim == 1 and out.flags.writeable
        out[:] = 7  # never a view of someone else's memory
    floats = impl["int16_to_float32"](samples)
    assert floats.dtype == np.float32 and floats.flags.writeable
    assert type(impl["ulaw_encode"](samples)) is bytes
    assert type(impl["alaw_encode"](samples)) is bytes
    assert impl["ulaw_decode"](b"").shape == (0,)
    assert impl["ulaw_encode"](b"") == b""


# -------------------------------------------------------------------- conversions


def test_int16_to_float32_is_exact_and_round_trips(impl: dict[str, Callable[..., Any]]) -> None:
    floats = both("int16_to_float32", ALL_SAMPLES)
    assert floats.dtype == np.float32
    np.testing.assert_array_equal(floats, ALL_SAMPLES.astype(np.float64) / 32768.0)
    assert floats[0] == -1.0 and floats[-1] == np.float32(32767 / 32768)
    np.testing.assert_array_equal(impl["float32_to_int16"](floats), ALL_SAMPLES)


def test_float32_to_int16_saturates_and_rounds(impl: dict[str, Callable[..., Any]]) -> None:
    lsb = 1 / 32768
    cases = {
        1.0: 32767,
        -1.0: -32768,
        2.0: 32767,
        -2.0: -32768,
        math.inf: 32767,
        -math.inf: -32768,
        math.nan: 0,
        0.0: 0,
        0.5 * lsb: 0,  # ties round half to even
        1.5 * lsb: 2,
        -2.5 * lsb: -2,
        0.6 * lsb: 1,
        32766.5 * lsb: 32766,
        32767.4 * lsb: 32767,
    }
    x = np.array([*cases, -0.0], np.float32)
    assert impl["float32_to_int16"](x).tolist() == [*cases.values(), 0]


def test_float32_to_int16_backends_agree() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [
            rng.uniform(-1.5, 1.5, 100_000).astype(np.float32),
            (np.arange(-70000, 70000) / 2 / 32768).astype(np.float32),  # every half step
            np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-45], np.float32),
        ]
    )
    both("float32_to_int16", x)
    both("float32_to_int16", x.tobytes())


def test_apply_gain_saturates_and_rounds(impl: dict[str, Callable[..., Any]]) -> None:
    x = np.array([20000, -20000, 3, 5, -3, -5, 0, 32767, -32768], np.int16)
    assert impl["apply_gain"](x, 2.0).tolist() == [32767, -32768, 6, 10, -6, -10, 0, 32767, -32768]
    assert impl["apply_gain"](x, 0.5).tolist() == [10000, -10000, 2, 2, -2, -2, 0, 16384, -16384]
    assert impl["apply_gain"](x, -1.0).tolist()[-2:] == [-32767, 32767]  # -(-32768) saturates
    np.testing.assert_array_equal(impl["apply_gain"](ALL_SAMPLES, 1.0), ALL_SAMPLES)
    assert not impl["apply_gain"](ALL_SAMPLES, 0.0).any()
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            impl["apply_gain"](x, bad)


@pytest.mark.parametrize("gain", [0.0, 0.1, 0.5, 0.7071, 1.0, 1.5, 3.0, -0.25, -1.0, 1e6])
def test_apply_gain_backends_agree(gain: float) -> None:
    both("apply_gain", ALL_SAMPLES, gain)


def test_mix_saturates(impl: dict[str, Callable[..., Any]]) -> None:
    a = np.array([30000, -30000, 100, 32767, -32768, 1], np.int16)
    b = np.array([30000, -30000, -300, 1, -1, -1], np.int16)
    assert impl["mix"](a, b).tolist() == [32767, -32768, -200, 32767, -32768, 0]


def test_mix_backends_agree() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(-32768, 32768, 200_000, dtype=np.int16)
    b = rng.integers(-32768, 32768, 200_000, dtype=np.int16)
    both("mix", a, b)
    both("mix", ALL_SAMPLES, ALL_SAMPLES[::-1].copy())


# ------------------------------------------------------------------------- levels


def test_rms_and_peak_on_known_signals(impl: dict[str, Callable[..., Any]]) -> None:
    rms, peak = impl["rms"], impl["peak"]
    assert rms(np.full(160, 1000, np.int16)) == 1000.0
    assert rms(np.tile(np.array([-5000, 5000], np.int16), 80)) == 5000.0
    assert rms(np.full(160, -32768, np.int16)) == 32768.0
    assert rms(np.zeros(160, np.int16)) == 0.0
    assert rms(np.zeros(0, np.int16)) == 0.0 and rms(b"") == 0.0
    t = np.arange(8000) / 8000
    sine = np.round(10000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    assert rms(sine) == pytest.approx(10000 / math.sqrt(2), rel=1e-4)
    assert peak(sine) == 10000
    assert peak(np.array([1, -5, 3], np.int16)) == 5
    assert peak(np.array([-32768, 32767], np.int16)) == 32768
    assert peak(np.zeros(0, np.int16)) == 0 and peak(b"") == 0
    assert type(rms(sine)) is float and type(peak(sine)) is int


def test_levels_backends_agree() -> None:
    rng = np.random.default_rng(4)
    for n in (1, 160, 320, 100_000):
        x = rng.integers(-32768, 32768, n, dtype=np.int16)
        both("rms", x)
        both("peak", x)
    both("rms", ALL_SAMPLES)
    both("peak", ALL_SAMPLES)


@needs_audioop
def test_levels_match_audioop() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(-30000, 30000, 160, dtype=np.int16)
    assert audio.peak(x) == audioop.max(x.tobytes(), 2)
    assert audio.rms(x) == pytest.approx(audioop.rms(x.tobytes(), 2), abs=1)  # audioop truncates


# ---------------------------------------------------------------------- bad input


def test_odd_byte_counts_raise_value_error(impl: dict[str, Callable[..., Any]]) -> None:
    odd = b"\x01\x02\x03"
    calls: list[Callable[[], Any]] = [
        lambda: impl["ulaw_encode"](odd),
        lambda: impl["alaw_encode"](bytearray(odd)),
        lambda: impl["int16_to_float32"](memoryview(odd)),
        lambda: impl["apply_gain"](odd, 1.0),
        lambda: impl["mix"](odd, odd),
        lambda: impl["rms"](odd),
        lambda: impl["peak"](odd),
        lambda: impl["float32_to_int16"](b"\x00" * 6),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_mix_length_mismatch_raises_value_error(impl: dict[str, Callable[..., Any]]) -> None:
    with pytest.raises(ValueError, match="samples"):
        impl["mix"](np.zeros(160, np.int16), np.zeros(161, np.int16))
    with pytest.raises(ValueError):
        impl["mix"](b"\x00\x00", b"\x00\x00\x00\x00")


def test_wrong_dtypes_raise_type_error(impl: dict[str, Callable[..., Any]]) -> None:
    with pytest.raises(TypeError):
        impl["ulaw_encode"](np.zeros(4, np.int32))  # would silently wrap
    with pytest.raises(TypeError):
        impl["rms"](np.zeros(4, np.float32))
    with pytest.raises(TypeError):
        impl["ulaw_decode"](np.zeros(4, np.int16))  # codes are bytes
    with pytest.raises(TypeError):
        impl["float32_to_int16"](np.zeros(4, np.int16))
    with pytest.raises(TypeError):
        impl["ulaw_encode"]("not audio")


def test_pcm16_helpers_are_little_endian() -> None:
    samples = np.array([1, -2, 0x1234], np.int16)
    raw = b"\x01\x00\xfe\xff\x34\x12"
    assert audio.pcm16_bytes(samples) == raw
    assert audio.pcm16_bytes(samples.astype(">i2")) == raw
    assert audio.pcm16_bytes(bytearray(raw)) == raw
    assert audio.pcm16_array(raw).tolist() == [1, -2, 0x1234]
    assert audio.pcm16_array(memoryview(raw)).dtype == np.int16
    with pytest.raises(ValueError):
        audio.pcm16_array(b"\x00")
    with pytest.raises(ValueError):
        audio.pcm16_bytes(b"\x00\x00\x00")


# ------------------------------------------------------------- the C module itself


@needs_c
def test_c_module_returns_bytes_and_fills_out() -> None:
    core = audio._C
    assert core.ulaw_decode(b"\xff\x00") == np.array([0, -32124], np.int16).tobytes()
    out = np.empty(2, np.int16)
    assert core.ulaw_decode(b"\xff\x00", out) is out
    assert out.tolist() == [0, -32124]
    x = np.array([100, 200], np.int16)
    assert core.apply_gain(x, 2.0, x) is x  # in place
    assert x.tolist() == [200, 400]
    assert core.ulaw_decode(b"\xff", None) == b"\x00\x00"


@needs_c
def test_c_module_rejects_bad_arguments() -> None:
    core = audio._C
    with pytest.raises(ValueError, match="out has"):
        core.ulaw_decode(b"\xff\x00", np.empty(3, np.int16))
    with pytest.raises((TypeError, BufferError)):
        core.ulaw_decode(b"\xff", bytes(2))  # read-only out
    with pytest.raises(TypeError):
        core.ulaw_decode()
    with pytest.raises(TypeError):
        core.mix(b"", b"", None, None)
    with pytest.raises(TypeError):
        core.rms(12)
    with pytest.raises(TypeError):
        core.apply_gain(b"", "loud")


@needs_c
def test_c_module_releases_buffers_on_every_path() -> None:
    """A bytearray cannot be resized while a buffer export is held; leaks would show."""
    core = audio._C
    good = bytearray(b"\x10\x00" * 8)
    odd = bytearray(b"\x01\x02\x03")
    out = bytearray(16)
    calls: list[Callable[[], Any]] = [
        lambda: core.ulaw_encode(good),
        lambda: core.ulaw_encode(odd),
        lambda: core.ulaw_decode(good, out),
        lambda: core.ulaw_decode(good, bytearray(3)),
        lambda: core.mix(good, bytearray(b"\x00\x00")),
        lambda: core.mix(good, odd),
        lambda: core.mix(odd, good),
        lambda: core.mix(good, good, bytearray(1)),
        lambda: core.apply_gain(good, math.nan),
        lambda: core.apply_gain(good, 1.0, out),
        lambda: core.rms(good),
        lambda: core.peak(odd),
        lambda: core.int16_to_float32(memoryview(good)[::2]),  # strided: copied, then freed
    ]
    for call in calls:
        try:
            call()
        except (ValueError, TypeError):
            pass
    for buf in (good, odd, out):
        buf.extend(b"\x00\x00")  # BufferError if an export leaked
        del buf[-2:]


@needs_c
def test_large_buffers_take_the_nogil_path() -> None:
    rng = np.random.default_rng(6)
    x = rng.integers(-32768, 32768, 1_000_000, dtype=np.int16)
    both("ulaw_encode", x)
    both("alaw_decode", rng.integers(0, 256, 1_000_000, dtype=np.uint8).tobytes())
    both("apply_gain", x, 0.3)
    both("int16_to_float32", x)

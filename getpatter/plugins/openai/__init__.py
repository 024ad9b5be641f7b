"""OpenAI providers, and the OpenAI-compatible presets (Groq, Cerebras) built on its client.

Registering them imports nothing: the SDK loads when one is first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.openai import ...` loads the class on first use (no SDK import)
_EXPORTS = {
    "OpenAIRealtime": "getpatter.plugins.openai.realtime",
    "OpenAILLM": "getpatter.plugins.openai.llm",
    "OpenAILLMOptions": "getpatter.plugins.openai.llm",
    "OpenAITTS": "getpatter.plugins.openai.tts",
    "OpenAITTSOptions": "getpatter.plugins.openai.tts",
    "OpenAITranscribeSTT": "getpatter.plugins.openai.stt",
    "OpenAITranscribeOptions": "getpatter.plugins.openai.stt",
    "GroqLLM": "getpatter.plugins.openai.compatible",
    "CerebrasLLM": "getpatter.plugins.openai.compatible",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.openai.compatible import CerebrasLLM as CerebrasLLM
    from getpatter.plugins.openai.compatible import GroqLLM as GroqLLM
    from getpatter.plugins.openai.llm import (
        OpenAILLM as OpenAILLM,
    )
    from getpatter.plugins.openai.llm import (
        OpenAILLMOptions as OpenAILLMOptions,
    )
    from getpatter.plugins.openai.realtime import OpenAIRealtime as OpenAIRealtime
    from getpatter.plugins.openai.stt import (
        OpenAITranscribeOptions as OpenAITranscribeOptions,
    )
    from getpatter.plugins.openai.stt import (
        OpenAITranscribeSTT as OpenAITranscribeSTT,
    )
    from getpatter.plugins.openai.tts import (
        OpenAITTS as OpenAITTS,
    )
    from getpatter.plugins.openai.tts import (
        OpenAITTSOptions as OpenAITTSOptions,
    )


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "engine",
            "openai_realtime",
            "getpatter.plugins.openai.realtime:OpenAIRealtime",
            extra="openai",
            requires=("openai", "websockets"),
            description="OpenAI Realtime speech-to-speech (G.711 end to end, no transcoding)",
            env=("OPENAI_API_KEY",),
        ),
        ProviderSpec(
            "llm",
            "openai",
            "getpatter.plugins.openai.llm:OpenAILLM",
            extra="openai",
            requires=("openai",),
            description="Chat Completions, streamed, with tools (any OpenAI-compatible base_url)",
            env=("OPENAI_API_KEY",),
        ),
        ProviderSpec(
            "tts",
            "openai",
            "getpatter.plugins.openai.tts:OpenAITTS",
            extra="openai",
            requires=("openai",),
            description="OpenAI text-to-speech (gpt-4o-mini-tts), streamed 24 kHz PCM",
            env=("OPENAI_API_KEY",),
        ),
        ProviderSpec(
            "stt",
            "openai",
            "getpatter.plugins.openai.stt:OpenAITranscribeSTT",
            extra="openai",
            requires=("openai",),
            description="OpenAI transcription (gpt-4o-transcribe), one request per utterance",
            env=("OPENAI_API_KEY",),
        ),
        ProviderSpec(
            "llm",
            "groq",
            "getpatter.plugins.openai.compatible:GroqLLM",
            extra="groq",
            requires=("openai",),
            description="Groq chat completions (OpenAI-compatible), streamed, with tools",
            env=("GROQ_API_KEY",),
        ),
        ProviderSpec(
            "llm",
            "cerebras",
            "getpatter.plugins.openai.compatible:CerebrasLLM",
            extra="cerebras",
            requires=("openai",),
            description="Cerebras Inference chat completions (OpenAI-compatible), with tools",
            env=("CEREBRAS_API_KEY",),
        ),
    ]

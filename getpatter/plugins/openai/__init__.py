"""OpenAI providers, and the OpenAI-compatible presets (Groq, Cerebras) built on its client.

Registering them imports nothing: the SDK loads when one is first used."""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


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

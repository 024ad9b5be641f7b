"""getpatter: give an AI voice agent a phone number.

The public names are re-exported here lazily (PEP 562), so `import getpatter` and the
`getpatter` command stay fast and import no provider SDK until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Patter": "getpatter.client",
    "MachineDetectionResult": "getpatter.client",
    "EmbeddedServer": "getpatter.core.server",
    "Agent": "getpatter.agent",
    "Tool": "getpatter.agent",
    "Guardrail": "getpatter.agent",
    "Twilio": "getpatter.config",
    "Telnyx": "getpatter.config",
    "Plivo": "getpatter.config",
    "LocalConfig": "getpatter.config",
    "PatterError": "getpatter.errors",
    "PatterConfigError": "getpatter.errors",
    "PatterConnectionError": "getpatter.errors",
    "ProviderError": "getpatter.errors",
    "PluginNotFoundError": "getpatter.errors",
    "CallError": "getpatter.errors",
    "Message": "getpatter.core.message",
    # every built-in provider, by class (the registered names work too: stt="deepgram")
    "OpenAIRealtime": "getpatter.plugins.openai.realtime",
    "OpenAILLM": "getpatter.plugins.openai.llm",
    "OpenAITTS": "getpatter.plugins.openai.tts",
    "OpenAITranscribeSTT": "getpatter.plugins.openai.stt",
    "DeepgramSTT": "getpatter.plugins.deepgram.stt",
    "AssemblyAISTT": "getpatter.plugins.assemblyai.stt",
    "SpeechmaticsSTT": "getpatter.plugins.speechmatics.stt",
    "ElevenLabsTTS": "getpatter.plugins.elevenlabs.tts",
    "CartesiaTTS": "getpatter.plugins.cartesia.tts",
    "AnthropicLLM": "getpatter.plugins.anthropic.llm",
    "LocalSTT": "getpatter.plugins.local.stt",
    "LocalTTS": "getpatter.plugins.local.tts",
    "RimeTTS": "getpatter.plugins.rime.tts",
    "LmntTTS": "getpatter.plugins.lmnt.tts",
    "GoogleLLM": "getpatter.plugins.google.llm",
    "GroqLLM": "getpatter.plugins.openai.compatible",
    "CerebrasLLM": "getpatter.plugins.openai.compatible",
    "SileroVAD": "getpatter.plugins.silero.vad",
    "SonioxSTT": "getpatter.plugins.soniox.stt",
    "GeminiLive": "getpatter.plugins.google.live",
    "UltravoxRealtime": "getpatter.plugins.ultravox.realtime",
}

__all__ = [
    "Agent",
    "AnthropicLLM",
    "AssemblyAISTT",
    "CallError",
    "CartesiaTTS",
    "CerebrasLLM",
    "DeepgramSTT",
    "ElevenLabsTTS",
    "EmbeddedServer",
    "GeminiLive",
    "GoogleLLM",
    "GroqLLM",
    "Guardrail",
    "LmntTTS",
    "LocalConfig",
    "LocalSTT",
    "LocalTTS",
    "MachineDetectionResult",
    "Message",
    "OpenAILLM",
    "OpenAIRealtime",
    "OpenAITTS",
    "OpenAITranscribeSTT",
    "Patter",
    "PatterConfigError",
    "PatterConnectionError",
    "PatterError",
    "Plivo",
    "PluginNotFoundError",
    "ProviderError",
    "RimeTTS",
    "SileroVAD",
    "SonioxSTT",
    "SpeechmaticsSTT",
    "Telnyx",
    "Tool",
    "Twilio",
    "UltravoxRealtime",
]

if TYPE_CHECKING:
    from getpatter.agent import Agent, Guardrail, Tool
    from getpatter.client import MachineDetectionResult, Patter
    from getpatter.config import LocalConfig, Plivo, Telnyx, Twilio
    from getpatter.core.message import Message
    from getpatter.core.server import EmbeddedServer
    from getpatter.errors import (
        CallError,
        PatterConfigError,
        PatterConnectionError,
        PatterError,
        PluginNotFoundError,
        ProviderError,
    )
    from getpatter.plugins.anthropic.llm import AnthropicLLM
    from getpatter.plugins.assemblyai.stt import AssemblyAISTT
    from getpatter.plugins.cartesia.tts import CartesiaTTS
    from getpatter.plugins.deepgram.stt import DeepgramSTT
    from getpatter.plugins.elevenlabs.tts import ElevenLabsTTS
    from getpatter.plugins.google.live import GeminiLive
    from getpatter.plugins.google.llm import GoogleLLM
    from getpatter.plugins.lmnt.tts import LmntTTS
    from getpatter.plugins.local.stt import LocalSTT
    from getpatter.plugins.local.tts import LocalTTS
    from getpatter.plugins.openai.compatible import CerebrasLLM, GroqLLM
    from getpatter.plugins.openai.llm import OpenAILLM
    from getpatter.plugins.openai.realtime import OpenAIRealtime
    from getpatter.plugins.openai.stt import OpenAITranscribeSTT
    from getpatter.plugins.openai.tts import OpenAITTS
    from getpatter.plugins.rime.tts import RimeTTS
    from getpatter.plugins.silero.vad import SileroVAD
    from getpatter.plugins.soniox.stt import SonioxSTT
    from getpatter.plugins.speechmatics.stt import SpeechmaticsSTT
    from getpatter.plugins.ultravox.realtime import UltravoxRealtime


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'getpatter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

"""GroqLLM and CerebrasLLM: presets of `OpenAILLM` for two OpenAI-compatible APIs.

Both serve the Chat Completions API unchanged — request body, SSE chunks, `tool_calls`
fragments, `stream_options.include_usage` — Groq under `https://api.groq.com/openai/v1`,
Cerebras under `https://api.cerebras.ai/v1` (each checked against its official SDK's
request paths and chunk types: `groq` 1.7, `cerebras-cloud-sdk` 1.91). So a preset is only a
default URL, a default model and the key's environment variable; streaming, tool calls, the
single retry and the error mapping are `OpenAILLM`'s. Their own SDKs would bring a second copy
of all that (and the Cerebras one opens a TCP "warming" request when built) for no gain.

They live in the OpenAI plugin because they *are* its client: plugins never import each other.
"""

from __future__ import annotations

from typing import Final

from getpatter.plugins.openai.llm import OpenAILLM

__all__ = ["CEREBRAS_BASE_URL", "GROQ_BASE_URL", "CerebrasLLM", "GroqLLM"]

GROQ_BASE_URL: Final = "https://api.groq.com/openai/v1"
CEREBRAS_BASE_URL: Final = "https://api.cerebras.ai/v1"


class GroqLLM(OpenAILLM):
    """Groq's chat completions (registered as llm ``"groq"``); key from `GROQ_API_KEY`.

    The default model is one Groq lists for tool use; any model id Groq serves works.
    """

    key_env = "GROQ_API_KEY"
    provider = "Groq"
    pricing_name = "groq"  # its own prices, not OpenAI's
    default_base_url = GROQ_BASE_URL
    default_model = "llama-3.3-70b-versatile"


class CerebrasLLM(OpenAILLM):
    """Cerebras Inference chat completions (registered as llm ``"cerebras"``); key from
    `CEREBRAS_API_KEY`. Any model id Cerebras serves works."""

    key_env = "CEREBRAS_API_KEY"
    provider = "Cerebras"
    pricing_name = "cerebras"
    default_base_url = CEREBRAS_BASE_URL
    default_model = "gpt-oss-120b"

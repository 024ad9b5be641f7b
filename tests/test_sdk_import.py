"""Every provider SDK is imported, and its client built, in the one SDK thread.

Each provider's first use runs in a fresh interpreter (tests/sdk_first_use.py) against its
loopback fake, with an import hook recording the thread of every module's first import: the
SDK — and every third-party module it pulls in, on first use too (resources, transports, the
WebSocket client) — must come in through "getpatter-sdk-import", never on the event loop or a
thread of its own (two threads importing httpx at once can see it half initialised).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("sdk_first_use.py")
SDK_THREAD = "getpatter-sdk-import"

#: provider → the SDK its first use must import
PROVIDERS = {
    "openai_llm": "openai",
    "groq": "openai",
    "openai_tts": "openai",
    "openai_stt": "openai",
    "anthropic": "anthropic",
    "google_llm": "google.genai",
    "deepgram": "deepgram",
    "cartesia": "cartesia",
    "lmnt": "lmnt",
    "openai_realtime": "openai",
    "gemini_live": "google.genai",
}


def first_use(*providers: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *providers],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCRIPT.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def outside_sdk_thread(imports: dict[str, str]) -> dict[str, str]:
    """Third-party modules first imported by any thread but the SDK thread."""
    return {
        module: thread
        for module, thread in imports.items()
        if module.split(".")[0] not in sys.stdlib_module_names
        and not module.startswith("getpatter")
        and not thread.startswith(SDK_THREAD)
    }


def check(result: dict[str, Any], sdks: set[str]) -> None:
    imports: dict[str, str] = result["imports"]
    assert result["already"] == []  # plugins and fakes alone import no SDK
    for sdk in sdks:
        assert sdk in imports, f"{sdk} was not imported at all"
        assert imports[sdk].startswith(SDK_THREAD), f"{sdk} imported in {imports[sdk]!r}"
    assert outside_sdk_thread(imports) == {}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_first_use_imports_only_in_the_sdk_thread(provider: str) -> None:
    check(first_use(provider), {PROVIDERS[provider]})


def test_providers_of_different_sdks_first_used_at_once() -> None:
    """Two calls' worth of providers (STT, LLM, TTS each), all used for the first time together
    on one loop: every one works, and every SDK still came in through the one thread."""
    call_a = ("deepgram", "openai_llm", "cartesia")
    call_b = ("openai_stt", "anthropic", "lmnt", "google_llm")
    result = first_use(*call_a, *call_b)
    check(result, {PROVIDERS[p] for p in call_a + call_b})

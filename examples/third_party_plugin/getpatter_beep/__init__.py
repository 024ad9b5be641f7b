"""Registers BeepTTS as tts "beep": `phone.agent(tts="beep", ...)` once this is installed."""

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [ProviderSpec("tts", "beep", "getpatter_beep.tts:BeepTTS", description="beeps")]

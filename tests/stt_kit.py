"""The setup the STT provider tests repeat: the test sentence as carrier audio, feeding a
stream, collecting its transcripts, waiting for a condition (Deepgram, AssemblyAI, Soniox)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from getpatter.core.audio import ulaw_encode
from getpatter.core.providers import STTStream, Transcript

from helpers import speech


def said(lead: float = 0.2, tail: float = 0.0) -> bytes:
    """The committed test sentence as carrier μ-law."""
    return ulaw_encode(speech(lead=lead, tail=tail))


async def feed(stream: STTStream, audio: bytes, frame: int = 160) -> None:
    """Send `audio` in carrier-sized frames, letting the loop run between them."""
    for i in range(0, len(audio), frame):
        await stream.send(audio[i : i + frame])
        await asyncio.sleep(0)


async def collect(stream: STTStream, into: list[Transcript]) -> None:
    async for t in stream.transcripts():
        into.append(t)


async def wait_until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    for _ in range(int(within / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true within {within}s")


def finals(seen: list[Transcript]) -> list[str]:
    return [t.text for t in seen if t.is_final]


def hear(stream: STTStream) -> tuple[list[Transcript], asyncio.Task[None]]:
    """Collect `stream`'s transcripts in a task: (what it has said so far, the task)."""
    seen: list[Transcript] = []
    return seen, asyncio.create_task(collect(stream, seen))

"""The LLM bench: one streamed completion per prompt, as the pipeline asks for a reply.

Every request carries the receptionist system prompt and the booking tool's schema, as a
turn of a real agent does (both cost prompt-processing time). Measured per request, from the
`chat()` call:
- `ttft_ms`: to the first output — a text delta, or a complete tool call for a model that
  answers with one (the pipeline can act on neither sooner);
- `tokens_per_s`: output tokens after the first, over the time from the first to the last
  delta (the model's streaming speed); tokens from the provider's usage report, else deltas;
- `total_ms`: to the end of the stream.

An LLM has no `open()`: its first request also sets up the connection. That request's time
to first token is reported apart (`first_request_ms`); it is a warm-up request when there
are any, and then it is not counted in the steady-state figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from getpatter.bench._jobs import run_jobs
from getpatter.bench.corpus import PROMPTS, RECEPTIONIST_PROMPT, TOOLS
from getpatter.bench.results import Result
from getpatter.core.providers import LLM, TextDelta, ToolCallRequest, Usage

__all__ = ["bench_llm"]


async def _one_request(
    llm: LLM, prompt: str, system_prompt: str, tools: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
    started = time.perf_counter()
    first: float | None = None
    first_text: float | None = None
    last_text: float | None = None
    deltas = 0
    tokens = 0
    text: list[str] = []
    tool_calls: list[str] = []
    async for event in llm.chat(messages, tools):
        now = time.perf_counter()
        if isinstance(event, TextDelta):
            if not event.text:
                continue
            first = first or now
            first_text = first_text or now
            last_text = now
            deltas += 1
            text.append(event.text)
        elif isinstance(event, ToolCallRequest):
            first = first or now
            tool_calls.append(event.name)
        elif isinstance(event, Usage):
            tokens = event.output_tokens
    ended = time.perf_counter()
    out: dict[str, Any] = {
        "ttft": None if first is None else first - started,
        "total": ended - started,
        "text": "".join(text),
        "tool_calls": tool_calls,
        "tokens_per_s": None,
    }
    count = tokens if tokens and not tool_calls else deltas
    if first_text is not None and last_text is not None and last_text > first_text and count > 1:
        out["tokens_per_s"] = (count - 1) / (last_text - first_text)
    return out


async def bench_llm(
    llm: LLM,
    prompts: Sequence[str] = PROMPTS,
    *,
    label: str = "",
    runs: int = 1,
    concurrency: int = 1,
    warmup: int = 1,
    system_prompt: str = RECEPTIONIST_PROMPT,
    tools: Sequence[dict[str, Any]] = TOOLS,
    max_wait: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Bench one LLM: `runs` passes over `prompts`, `concurrency` passes at once, after
    `warmup` requests of the first prompt (not counted)."""
    if not prompts:
        raise ValueError("bench_llm needs at least one prompt")
    result = Result("llm", label or type(llm).__name__)
    result.info.update(prompts=list(prompts), replies=[], tool_calls=0)
    tool_list = [dict(t) for t in tools]
    first_done = False

    async def request(run: int, index: int, prompt: str, counted: bool) -> None:
        nonlocal first_done
        item = f"prompt{index + 1}"
        try:
            out = await asyncio.wait_for(
                _one_request(llm, prompt, system_prompt, tool_list), max_wait
            )
        except Exception as exc:
            why = f"no reply within {max_wait:g} s" if isinstance(exc, TimeoutError) else repr(exc)
            result.error(f"{f'run {run}' if counted else 'warm-up'} {item}: {why}")
            return
        finally:
            if progress is not None and counted:
                progress(1)
        if not first_done and out["ttft"] is not None:
            first_done = True
            result.add("first_request_ms", out["ttft"] * 1000, run, item)
        if not counted:
            return
        result.info["replies"].append(
            {"run": run, "item": item, "text": out["text"], "tool_calls": out["tool_calls"]}
        )
        if out["tool_calls"]:
            result.info["tool_calls"] += 1
        if out["ttft"] is None:
            result.error(f"run {run} {item}: the reply was empty")
        else:
            result.add("ttft_ms", out["ttft"] * 1000, run, item)
        if out["tokens_per_s"] is not None:
            result.add("tokens_per_s", out["tokens_per_s"], run, item)
        result.add("total_ms", out["total"] * 1000, run, item)

    async def one_run(run: int) -> None:
        for index, prompt in enumerate(prompts):
            await request(run, index, prompt, counted=True)

    for i in range(warmup):
        await request(-(i + 1), 0, prompts[0], counted=False)
    await run_jobs(runs, concurrency, one_run)
    if result.info["tool_calls"]:
        result.notes.append(
            f"{result.info['tool_calls']} replies were tool calls: time to first token is to "
            "the complete call, and they have no tokens-per-second sample"
        )
    if warmup == 0:
        result.notes.append(
            "no warm-up: the first request (connection set-up) is also counted in time to "
            "first token"
        )
    close = getattr(llm, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception as exc:
            result.notes.append(f"aclose() failed: {exc!r}")
    return result

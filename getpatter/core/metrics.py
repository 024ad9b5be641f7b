"""Per-turn latency and per-call cost: what `on_metrics` sees after each turn, and the record.

A turn is one agent reply and what led to it. Its times are loop times (`loop.time()`), taken
where things happen: the engine knows when the caller stopped and when its providers answered,
the session knows when agent audio went out and when it was cleared. `TurnTimes` carries them;
`CallMetrics.complete()` turns them into milliseconds, adds the call's running cost, and keeps
the turn for the record.

Latency fields (milliseconds; None where a stage does not exist for that turn or engine):

- `endpoint_ms`  the caller's last voiced audio → the endpointer declares the turn over
- `stt_ms`       end of turn → the STT's final transcript (realtime: the model's transcript)
- `llm_ttft_ms`  turn taken → first reply text (`on_message` counts as the LLM); realtime:
                 the caller stops → first model output
- `llm_total_ms` turn taken → last reply text; realtime: the caller stops → response done
- `tts_ttfb_ms`  first sentence sent to TTS → its first audio byte
- `total_ms`     the caller stops (a DTMF turn: the key press) → first agent audio sent out:
                 the agent's response latency
- `bargein_ms`   the caller starts talking over the agent → agent audio cleared

Counters per turn: `tts_retry`, the sentences of the reply the TTS gave no audio for within
the first-audio deadline and that were asked for again (see `core.synthesis`); `tts_gap`, the
sentences given up mid-way because their audio stopped coming (see `core.reply`);
`stt_timeout`: the STT sent no final in time and the turn is its last interim.

Engines that do not report their own turns (the realtime engine) are measured by
`UtteranceTurns` from what the session sees: the caller's audio (through a VAD), the agent's
utterances, clears, transcripts and usage events.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from getpatter.core.pricing import PriceTable, load_pricing

LATENCY_FIELDS = (
    "endpoint_ms",
    "stt_ms",
    "llm_ttft_ms",
    "llm_total_ms",
    "tts_ttfb_ms",
    "total_ms",
    "bargein_ms",
)
COST_FIELDS = ("stt", "tts", "llm", "telephony", "total")


class MetricsDict(dict[str, Any]):
    """A plain dict (JSON, the store) that also reads by attribute: `m.cost.total`."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return wrap(value)


def wrap(value: Any) -> Any:
    """Dicts (also inside lists) as `MetricsDict`, for attribute access."""
    if isinstance(value, dict) and not isinstance(value, MetricsDict):
        return MetricsDict({k: wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0–100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _ms(end: float | None, start: float | None) -> float | None:
    if end is None or start is None:
        return None
    return round(max(0.0, end - start) * 1000, 1)


@dataclass(slots=True)
class TurnTimes:
    """One turn's timestamps (loop time), filled in by whoever sees each moment."""

    engine: str = "pipeline"
    label: str = ""
    user_text: str = ""
    agent_text: str = ""
    caller_stopped_at: float | None = None  # the caller's last voiced audio
    endpointed_at: float | None = None  # the endpointer declared the turn over
    final_at: float | None = None  # final transcript in hand: the turn is taken
    text_first_at: float | None = None
    text_done_at: float | None = None
    tts_ttfb: float | None = None  # seconds
    tts_retry: int = 0  # sentences the TTS gave no audio for in time, asked for again
    tts_gap: int = 0  # sentences given up mid-way: their audio stopped coming
    first_audio_at: float | None = None
    model_done_at: float | None = None  # realtime: response.done
    barge_onset_at: float | None = None
    cleared_at: float | None = None
    interrupted: bool = False
    stt_timeout: bool = False  # the turn is the STT's last interim: no final came in time
    done: bool = False

    def latency(self) -> dict[str, float | None]:
        start = self.caller_stopped_at if self.caller_stopped_at is not None else self.final_at
        out = dict.fromkeys(LATENCY_FIELDS)
        out["endpoint_ms"] = _ms(self.endpointed_at, self.caller_stopped_at)
        out["total_ms"] = _ms(self.first_audio_at, start)
        out["bargein_ms"] = _ms(self.cleared_at, self.barge_onset_at)
        out["tts_ttfb_ms"] = None if self.tts_ttfb is None else round(self.tts_ttfb * 1000, 1)
        if self.engine == "pipeline":
            out["stt_ms"] = _ms(self.final_at, self.endpointed_at)
            out["llm_ttft_ms"] = _ms(self.text_first_at, self.final_at)
            out["llm_total_ms"] = _ms(self.text_done_at, self.final_at)
        else:
            out["stt_ms"] = _ms(self.final_at, self.caller_stopped_at)
            out["llm_ttft_ms"] = out["total_ms"]
            out["llm_total_ms"] = _ms(self.model_done_at, self.caller_stopped_at)
        return out


def provider_key(obj: object) -> tuple[str, str]:
    """(provider, model) for the price table: `pricing_name` if the object has one, else the
    plugin package it comes from (`getpatter.plugins.deepgram` → `deepgram`); the model is its
    `model`, else its options' `model` or `model_id` (where the HTTP providers keep it)."""
    name = getattr(obj, "pricing_name", None)
    if not isinstance(name, str) or not name:
        parts = type(obj).__module__.split(".")
        if parts[:2] == ["getpatter", "plugins"] and len(parts) > 2:
            name = parts[2]
        elif parts[:2] == ["getpatter", "testing"]:
            name = "test"
        else:
            name = parts[0]
    model = getattr(obj, "model", None)
    if not isinstance(model, str):
        options = getattr(obj, "options", None)
        model = getattr(options, "model", None) or getattr(options, "model_id", None)
    return name, model if isinstance(model, str) else ""


@lru_cache(maxsize=1)
def default_pricing() -> PriceTable:
    return load_pricing()


_USAGE_KEYS = (
    "call_seconds",
    "stt_seconds",
    "tts_characters",
    "llm_input_tokens",
    "llm_cached_tokens",
    "llm_output_tokens",
    "realtime_audio_input_tokens",
    "realtime_text_input_tokens",
    "realtime_cached_tokens",
    "realtime_audio_output_tokens",
    "realtime_text_output_tokens",
)


class CallMetrics:
    """One call's counters, turns and cost."""

    def __init__(
        self, pricing: PriceTable | None = None, *, carrier: str = "", direction: str = "inbound"
    ) -> None:
        self.pricing = pricing or default_pricing()
        self.direction = direction
        self.providers: dict[str, dict[str, str]] = {}
        if carrier:
            self.providers["carrier"] = {"provider": carrier, "model": ""}
        self.usage: dict[str, float] = dict.fromkeys(_USAGE_KEYS, 0)
        self.turns: list[dict[str, Any]] = []
        self._cost_at_last_turn: dict[str, float] = dict.fromkeys(COST_FIELDS, 0.0)

    # --- what is being used ----------------------------------------------------------------

    def identify(self, engine_call: object) -> None:
        """Learn the call's providers from its engine (the pipeline's STT/TTS/LLM, or a
        realtime engine's model)."""
        engine = getattr(engine_call, "engine", None)
        if engine is None:
            return
        if all(hasattr(engine, a) for a in ("stt", "tts", "llm")):
            for role in ("stt", "tts", "llm"):
                provider = getattr(engine, role)
                if provider is not None:
                    name, model = provider_key(provider)
                    self.providers[role] = {"provider": name, "model": model}
        elif hasattr(engine, "model"):
            name, model = provider_key(engine)
            self.providers["realtime"] = {"provider": name, "model": model}

    # --- counting --------------------------------------------------------------------------

    def add_stt_audio(self, seconds: float) -> None:
        self.usage["stt_seconds"] += seconds

    def add_tts_chars(self, count: int) -> None:
        self.usage["tts_characters"] += count

    def add_llm_usage(self, input_tokens: int, output_tokens: int, cached: int = 0) -> None:
        self.usage["llm_input_tokens"] += input_tokens
        self.usage["llm_output_tokens"] += output_tokens
        self.usage["llm_cached_tokens"] += cached

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """Usage the engines already record as call events."""
        if kind == "llm_usage":
            self.add_llm_usage(
                int(data.get("input") or 0),
                int(data.get("output") or 0),
                int(data.get("cached") or 0),
            )
        elif kind == "usage":  # a realtime response's usage
            u = self.usage
            u["realtime_audio_input_tokens"] += int(data.get("input_audio_tokens") or 0)
            u["realtime_text_input_tokens"] += int(data.get("input_text_tokens") or 0)
            u["realtime_cached_tokens"] += int(data.get("cached_tokens") or 0)
            u["realtime_audio_output_tokens"] += int(data.get("output_audio_tokens") or 0)
            u["realtime_text_output_tokens"] += int(data.get("output_text_tokens") or 0)
            model = data.get("model")
            if isinstance(model, str) and model:
                current = self.providers.get("realtime", {"provider": "openai", "model": ""})
                self.providers["realtime"] = {**current, "model": model}

    # --- cost ------------------------------------------------------------------------------

    def _rates(self, role: str, category: str) -> dict[str, float] | None:
        who = self.providers.get(role)
        if who is None:
            return None
        return self.pricing.rates(category, who["provider"], who["model"])

    def cost(self, call_seconds: float) -> dict[str, Any]:
        """The running cost of the call (USD unless the table says otherwise)."""
        u = self.usage
        u["call_seconds"] = round(call_seconds, 3)
        unpriced: list[str] = []

        def need(role: str, category: str, used: float) -> dict[str, float]:
            rates = self._rates(role, category)
            if rates is None:
                if role in self.providers and used:
                    unpriced.append(f"{role}:{self.providers[role]['provider']}")
                return {}
            return rates

        telephony = 0.0
        rates = need("carrier", "telephony", call_seconds)
        if rates and call_seconds > 0:
            step = rates.get("increment_seconds", 1.0) or 1.0
            billed = math.ceil(call_seconds / step - 1e-9) * step
            telephony = billed / 60 * rates.get(f"{self.direction}_per_minute", 0.0)
        stt = u["stt_seconds"] / 60 * need("stt", "stt", u["stt_seconds"]).get("per_minute", 0.0)
        tts_rates = need("tts", "tts", u["tts_characters"])
        tts = u["tts_characters"] / 1000 * tts_rates.get("per_1k_chars", 0.0)
        tokens = u["llm_input_tokens"] + u["llm_output_tokens"]
        r = need("llm", "llm", tokens)
        cached = min(u["llm_cached_tokens"], u["llm_input_tokens"])
        llm = (
            (u["llm_input_tokens"] - cached) * r.get("input_per_1m", 0.0)
            + cached * r.get("cached_input_per_1m", r.get("input_per_1m", 0.0))
            + u["llm_output_tokens"] * r.get("output_per_1m", 0.0)
        ) / 1e6
        llm += self._realtime_cost(need, call_seconds)
        parts = {"stt": stt, "tts": tts, "llm": llm, "telephony": telephony}
        out: dict[str, Any] = {k: round(v, 6) for k, v in parts.items()}
        out["total"] = round(sum(parts.values()), 6)
        out["currency"] = self.pricing.currency
        out["unpriced"] = unpriced
        return out

    def _realtime_cost(
        self, need: Callable[[str, str, float], dict[str, float]], call_seconds: float
    ) -> float:
        """Tokens at their rates, plus `per_minute` of the call for an engine billed by the
        minute (Ultravox), which reports no tokens."""
        u = self.usage
        audio_in, text_in = u["realtime_audio_input_tokens"], u["realtime_text_input_tokens"]
        audio_out, text_out = u["realtime_audio_output_tokens"], u["realtime_text_output_tokens"]
        tokens = audio_in + text_in + audio_out + text_out
        r = need("realtime", "realtime", tokens + max(call_seconds, 0.0))
        if not r:
            return 0.0
        by_minute = max(call_seconds, 0.0) / 60 * r.get("per_minute", 0.0)
        # cached tokens are counted inside the input tokens; split them by the input's mix
        cached = min(u["realtime_cached_tokens"], audio_in + text_in)
        share = audio_in / (audio_in + text_in) if audio_in + text_in else 0.0
        cached_audio, cached_text = cached * share, cached * (1 - share)
        return (
            (audio_in - cached_audio) * r.get("audio_input_per_1m", 0.0)
            + cached_audio * r.get("cached_audio_input_per_1m", 0.0)
            + (text_in - cached_text) * r.get("text_input_per_1m", 0.0)
            + cached_text * r.get("cached_text_input_per_1m", 0.0)
            + audio_out * r.get("audio_output_per_1m", 0.0)
            + text_out * r.get("text_output_per_1m", 0.0)
        ) / 1e6 + by_minute

    # --- turns -----------------------------------------------------------------------------

    def complete(self, times: TurnTimes, call_seconds: float) -> MetricsDict | None:
        """Close a turn (once): its metrics, kept for the record, and the `on_metrics` event."""
        if times.done:
            return None
        times.done = True
        cost = self.cost(call_seconds)
        turn_cost = {k: round(cost[k] - self._cost_at_last_turn[k], 6) for k in COST_FIELDS}
        self._cost_at_last_turn = {k: cost[k] for k in COST_FIELDS}
        latency = times.latency()
        turn = {
            "turn_index": len(self.turns),
            "engine": times.engine,
            "user_text": times.user_text,
            "agent_text": times.agent_text,
            "interrupted": times.interrupted,
            "tts_retry": times.tts_retry,
            "tts_gap": times.tts_gap,
            "stt_timeout": times.stt_timeout,
            "at": round(time.time(), 3),
            "latency": latency,
            "cost": turn_cost,
        }
        self.turns.append(turn)
        return wrap(
            {
                "turn": turn,
                "latency": latency,
                "cost": cost,
                "call": self.latency_summary(),
                "pricing_version": self.pricing.version,
            }
        )

    def latency_summary(self) -> dict[str, Any]:
        totals = [t["latency"]["total_ms"] for t in self.turns]
        values = [v for v in totals if v is not None]
        return {
            "turns": len(self.turns),
            "p50_ms": _round(percentile(values, 50)),
            "p95_ms": _round(percentile(values, 95)),
            "max_ms": max(values) if values else None,
            "avg_ms": _round(sum(values) / len(values)) if values else None,
        }

    def summary(self, call_seconds: float) -> MetricsDict:
        """The call's metrics, for the record and `on_call_end`."""
        avg: dict[str, float | None] = {}
        p95: dict[str, float | None] = {}
        for name in LATENCY_FIELDS:
            values = [t["latency"][name] for t in self.turns if t["latency"][name] is not None]
            avg[name] = _round(sum(values) / len(values)) if values else None
            p95[name] = _round(percentile(values, 95))
        return wrap(
            {
                "duration_seconds": round(call_seconds, 3),
                "turn_count": len(self.turns),
                "latency": self.latency_summary(),
                "latency_avg": avg,
                "latency_p95": p95,
                "cost": self.cost(call_seconds),
                "usage": {k: round(v, 3) for k, v in self.usage.items()},
                "providers": {k: dict(v) for k, v in self.providers.items()},
                "pricing_version": self.pricing.version,
                "turns": [dict(t) for t in self.turns],
            }
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class UtteranceTurns:
    """Turns of an engine that does not report its own (the realtime engine), measured from
    what the session sees. A turn starts with an agent utterance and ends when it has been
    heard in full or cleared; the caller's speech before it (the session's VAD over their
    audio, see `caller_speech`) gives the time they stopped talking."""

    def __init__(self, engine: str, complete: Callable[[TurnTimes], None]) -> None:
        self.engine = engine
        self._complete = complete
        self._pending: TurnTimes | None = None  # the caller's turn, not answered yet
        self._open: dict[str, TurnTimes] = {}  # agent utterances playing
        self._last: TurnTimes | None = None
        self._onset_at: float | None = None

    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def caller_speech(self, kind: str, at: float) -> None:
        """The caller started (`speech_started`) or stopped talking, at loop time `at`."""
        if kind == "speech_started":
            self._onset_at = at
        elif self._answers_already(at):
            # the model answered before our VAD's end-of-speech hangover ran out
            assert self._last is not None
            self._last.caller_stopped_at = at
        else:
            if self._pending is None:
                self._pending = TurnTimes(self.engine)
            self._pending.caller_stopped_at = at

    def _answers_already(self, stopped_at: float) -> bool:
        last = self._last
        return (
            self._pending is None
            and last is not None
            and not last.done
            and last.caller_stopped_at is None
            and last.first_audio_at is not None
            and stopped_at <= last.first_audio_at
        )

    def user_transcript(self, text: str) -> None:
        now = self._now()
        target = self._pending
        last = self._last
        if target is None and last is not None and last.caller_stopped_at is not None:
            # the model's transcript of the caller may come after its answer began
            target = last if not (last.user_text or last.done) else None
        if target is None:
            target = self._pending = TurnTimes(self.engine)
        target.user_text = f"{target.user_text} {text}".strip()
        if target.final_at is None:
            target.final_at = now

    def agent_text(self, text: str) -> None:
        if self._last is not None and not self._last.agent_text:
            self._last.agent_text = text

    def audio_started(self, label: str) -> None:
        turn = self._pending or TurnTimes(self.engine)
        self._pending = None
        turn.label = label
        turn.first_audio_at = self._now()
        self._open[label] = turn
        self._last = turn

    def audio_settled(self, label: str, heard_all: bool) -> None:
        turn = self._open.pop(label, None)
        if turn is not None and not turn.done:
            turn.interrupted = turn.interrupted or not heard_all
            # a step later: the engine records the words it played right after hearing this
            self._loop().call_soon(self._finish, turn)

    def _finish(self, turn: TurnTimes) -> None:
        if not turn.done:
            self._complete(turn)

    def model_done(self) -> None:
        if self._last is not None and self._last.model_done_at is None:
            self._last.model_done_at = self._now()

    def cleared(self) -> None:
        now = self._now()
        for turn in list(self._open.values()):
            if turn.done:
                continue
            turn.interrupted = True
            turn.cleared_at = now
            turn.barge_onset_at = self._onset_at
            self._complete(turn)
        self._open.clear()

    def close(self) -> None:
        """The call ended: turns still playing end here."""
        for turn in list(self._open.values()):
            if not turn.done:
                self._complete(turn)
        self._open.clear()

"""The price table: what a minute of telephony or STT, a character of TTS, a token costs.

Prices are data (`pricing.json`, dated by its `version`), keyed by category, provider and
model. `Patter(pricing=...)` merges the user's prices over the defaults, in either form:

- the table's own shape: ``{"stt": {"deepgram": {"nova-3": {"per_minute": 0.0043}}}}``
  (fields right under a provider apply to every model of it);
- a shorthand by provider: ``{"deepgram": {"price": 0.005}}`` — `price` is the unit price of
  that provider's category (per minute for STT, telephony and a realtime engine billed by the
  minute, per 1,000 characters for TTS);
  other field names set that field wherever the provider has it.

A mistyped field or a negative price fails at construction, not silently at the end of a call.
Every call records the table's version, so old costs can be explained after prices change.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from getpatter.errors import PatterConfigError

CATEGORIES: dict[str, tuple[str, ...]] = {
    "telephony": ("inbound_per_minute", "outbound_per_minute", "increment_seconds"),
    "stt": ("per_minute",),
    "tts": ("per_1k_chars",),
    "llm": ("input_per_1m", "cached_input_per_1m", "output_per_1m"),
    "realtime": (
        "audio_input_per_1m",
        "cached_audio_input_per_1m",
        "audio_output_per_1m",
        "text_input_per_1m",
        "cached_text_input_per_1m",
        "text_output_per_1m",
        "per_minute",  # of the call, for an engine billed by time (Ultravox), not by token
    ),
}
# what the shorthand `price` means in each category
_PRICE_FIELDS: dict[str, tuple[str, ...]] = {
    "telephony": ("inbound_per_minute", "outbound_per_minute"),
    "stt": ("per_minute",),
    "tts": ("per_1k_chars",),
    "realtime": ("per_minute",),
}
_TOP_KEYS = frozenset({"version", "currency", "note", *CATEGORIES})


def _default_data() -> dict[str, Any]:
    text = resources.files("getpatter.core").joinpath("pricing.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _price(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PatterConfigError(f"pricing {where} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise PatterConfigError(f"pricing {where} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def _check_fields(category: str, fields: object, where: str) -> dict[str, float]:
    if not isinstance(fields, dict):
        raise PatterConfigError(f"pricing {where} must be a dict of prices")
    allowed = CATEGORIES[category]
    out = {}
    for name, value in fields.items():
        if name not in allowed:
            raise PatterConfigError(
                f"pricing {where}: unknown field {name!r}; {category} prices are "
                + ", ".join(allowed)
            )
        out[name] = _price(value, f"{where}.{name}")
    return out


@dataclass(frozen=True)
class PriceTable:
    """A resolved price table (defaults with the user's prices merged in)."""

    data: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.data.get("version", ""))

    @property
    def currency(self) -> str:
        return str(self.data.get("currency", "USD"))

    def rates(self, category: str, provider: str, model: str = "") -> dict[str, float] | None:
        """The prices of `provider`/`model` in `category`; None when the table has no entry.

        An unknown model of a known provider is priced as the provider's `default`.
        """
        entry = self.data.get(category, {}).get(provider)
        if entry is None:
            return None
        if category == "telephony":
            return dict(entry)
        rates = dict(entry.get("default", {}))
        rates.update(entry.get(model, {}) if model else {})
        return rates if rates else None

    def to_json(self) -> str:
        return json.dumps(self.data, sort_keys=True)


def load_pricing(overrides: dict[str, Any] | None = None) -> PriceTable:
    """The default table, with `overrides` (either form, see the module doc) merged over it."""
    data = _default_data()
    if not overrides:
        return PriceTable(data)
    if not isinstance(overrides, dict):
        raise PatterConfigError(
            f"pricing must be a dict, got {type(overrides).__name__}: "
            'e.g. pricing={"deepgram": {"price": 0.005}}'
        )
    merged = copy.deepcopy(data)
    for key, value in overrides.items():
        if key in ("version", "currency", "note"):
            if not isinstance(value, str) or not value.strip():
                raise PatterConfigError(f"pricing {key} must be a non-empty str")
            merged[key] = value
        elif key in CATEGORIES:
            _merge_category(merged, key, value)
        else:
            _merge_shorthand(merged, str(key), value)
    if "version" not in overrides:
        merged["version"] = f"{data['version']}+custom"
    return PriceTable(merged)


def _merge_category(merged: dict[str, Any], category: str, providers: object) -> None:
    if not isinstance(providers, dict):
        raise PatterConfigError(f"pricing {category} must be a dict of providers")
    table = merged.setdefault(category, {})
    for provider, entry in providers.items():
        where = f"{category}.{provider}"
        if not isinstance(entry, dict):
            raise PatterConfigError(f"pricing {where} must be a dict")
        if category == "telephony":
            table.setdefault(provider, {}).update(_check_fields(category, entry, where))
            continue
        models = table.setdefault(provider, {})
        flat = {k: v for k, v in entry.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in entry.items() if isinstance(v, dict)}
        if flat:  # provider-wide prices: every model of it
            prices = _check_fields(category, flat, where)
            models.setdefault("default", {})
            for rates in models.values():
                rates.update(prices)
        for model, fields in nested.items():
            models.setdefault(model, {}).update(_check_fields(category, fields, f"{where}.{model}"))


def _merge_shorthand(merged: dict[str, Any], provider: str, fields: object) -> None:
    if not isinstance(fields, dict):
        raise PatterConfigError(f"pricing {provider} must be a dict, e.g. {{'price': 0.005}}")
    found = [c for c in CATEGORIES if provider in merged.get(c, {})]
    if not found:
        raise PatterConfigError(
            f"pricing: no provider {provider!r} in the price table; name its category, e.g. "
            f'pricing={{"stt": {{"{provider}": {{"per_minute": 0.005}}}}}}'
        )
    for name, value in fields.items():
        price = _price(value, f"{provider}.{name}")
        if name == "price" and len(found) > 1:
            raise PatterConfigError(
                f"pricing {provider}.price is ambiguous: {provider} is priced for "
                f"{', '.join(found)}; name the category, e.g. "
                f'pricing={{"{found[0]}": {{"{provider}": {{...}}}}}}'
            )
        applied = False
        for category in found:
            targets = _PRICE_FIELDS.get(category, ()) if name == "price" else (name,)
            targets = tuple(t for t in targets if t in CATEGORIES[category])
            if not targets:
                continue
            entry = merged[category][provider]
            for rates in [entry] if category == "telephony" else entry.values():
                for target in targets:
                    rates[target] = price
            applied = True
        if not applied:
            raise PatterConfigError(
                f"pricing {provider}.{name}: not a price of {provider} "
                f"({', '.join(found)}); fields: "
                + ", ".join(sorted({f for c in found for f in CATEGORIES[c]}))
            )

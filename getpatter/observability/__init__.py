"""Observability exporters that follow calls through `getpatter.core.observe`: OpenTelemetry
traces (`otel`, extra `getpatter[otel]`) and Prometheus metrics (`prometheus`, extra
`getpatter[prometheus]`, served at `/metrics`). Each is used only when its library is
installed; neither is imported by `import getpatter`."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from getpatter.core.observe import CallObserver

__all__ = ["has_otel", "has_prometheus", "tracer_for"]


def has_otel() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):
        return False


def has_prometheus() -> bool:
    return importlib.util.find_spec("prometheus_client") is not None


def tracer_for(tracer_provider: Any, carrier: str) -> CallObserver | None:
    """A `CallTracer` when OpenTelemetry is installed (or a provider was given), else None."""
    if tracer_provider is None and not has_otel():
        return None
    from getpatter.observability.otel import CallTracer

    return CallTracer(tracer_provider, carrier)

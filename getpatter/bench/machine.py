"""The machine and software a bench ran on, written into every report beside the numbers."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

__all__ = ["describe", "header_line"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe(extra_versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Machine, OS, Python, getpatter and the libraries the figures depend on."""
    from getpatter.core import audio

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    versions = {
        "getpatter": _version("getpatter"),
        "numpy": _version("numpy"),
        "soxr": _version("soxr"),
        "aiohttp": _version("aiohttp"),
        **dict(sorted((extra_versions or {}).items())),
    }
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": load,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "audio_core": audio.BACKEND,
        "clock": "time.perf_counter (CLOCK_MONOTONIC); the simulator uses the event loop's clock",
        "versions": versions,
    }


def header_line(meta: dict[str, Any]) -> str:
    """One line for the top of the table: when, where, what versions."""
    versions = meta.get("versions", {})
    load = meta.get("load_average") or []
    cpu = " ".join(
        p
        for p in (
            meta.get("cpu", ""),
            f"×{meta['cpus']}" if meta.get("cpus") else "",
            f"(load {load[0]})" if load else "",
        )
        if p
    )
    parts = [
        f"getpatter bench {versions.get('getpatter', '?')}",
        meta.get("started_at", ""),
        f"{meta.get('os', '')} {meta.get('machine', '')}".strip(),
        cpu,
        meta.get("python", ""),
        ", ".join(f"{k} {v}" for k, v in versions.items() if k != "getpatter"),
    ]
    return " · ".join(p for p in parts if p)

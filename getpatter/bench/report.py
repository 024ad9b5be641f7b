"""A bench report as a terminal table, CSV (one row per sample) and JSON (everything)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from getpatter.bench.machine import header_line
from getpatter.bench.results import KINDS, METRICS, Report, Result

__all__ = ["format_value", "table", "to_json", "write_csv", "write_json"]

_TITLES = {"stt": "STT", "llm": "LLM", "tts": "TTS", "turn": "Turn (whole pipeline)"}
_MAX_ERRORS = 5
_NAME_WIDTH = 28


def format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "—"
    if unit == "ms":
        return f"{value:,.0f} ms" if abs(value) >= 100 else f"{value:.1f} ms"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "x":
        return f"{value:.3f}x" if value < 10 else f"{value:.1f}x"
    if unit == "tok/s":
        return f"{value:,.0f} tok/s" if value >= 100 else f"{value:.1f} tok/s"
    return f"{value:g} {unit}"


def _rows(result: Result) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for metric in result.metrics():
        info = METRICS[metric]
        s = result.summary(metric)
        rows.append(
            (
                "",
                info.label,
                str(s.n),
                format_value(s.p50, info.unit),
                format_value(s.p95, info.unit),
                format_value(s.max, info.unit),
            )
        )
    return rows


def _line(row: tuple[str, ...], widths: list[int]) -> str:
    """Provider and metric left-aligned, numbers right-aligned."""
    cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
    cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
    return ("  " + "  ".join(cells)).rstrip()


def table(report: Report) -> str:
    """The report for a terminal: a header line, then one block per kind with p50/p95/max."""
    meta = report.meta
    lines = [header_line(meta)]
    options = meta.get("options", {})
    if options:
        lines.append(
            f"runs {options.get('runs')} · warm-up {options.get('warmup')} per provider "
            f"(not counted) · concurrency {options.get('concurrency')}"
        )
    sections: dict[str, str] = meta.get("sections", {})
    head = ("provider", "metric", "n", "p50", "p95", "max")
    for kind in KINDS:
        results = report.of(kind)
        skipped = [s for s in report.skipped if s.kind == kind]
        if not results and not skipped:
            continue
        lines.append("")
        title = _TITLES[kind]
        lines.append(f"{title} — {sections[kind]}" if kind in sections else title)
        body: list[tuple[str, ...]] = []
        before: dict[int, list[str]] = {}  # row index → lines printed before it
        after: dict[int, list[str]] = {}  # row index → lines printed after it
        for result in results:
            rows = _rows(result) or [("", "(no samples)", "0", "", "", "")]
            names = [result.provider]
            if len(result.provider) > _NAME_WIDTH:  # a long label gets a line of its own
                before[len(body)] = [f"  {result.provider}"]
                names = []
            fmt = result.info.get("format")
            if fmt:
                names.append(f"[{fmt}]")
            for i, row in enumerate(rows):
                body.append((names[i] if i < len(names) else "", *row[1:]))
            for name in names[len(rows) :]:
                body.append((name, "", "", "", "", ""))
            notes = [f"· {n}" for n in result.notes]
            errors = [f"! {e}" for e in result.errors[:_MAX_ERRORS]]
            if len(result.errors) > _MAX_ERRORS:
                errors.append(f"! … and {len(result.errors) - _MAX_ERRORS} more (see --json)")
            after[len(body) - 1] = notes + errors
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        if body:
            lines.append(_line(head, widths))
            for i, row in enumerate(body):
                lines.extend(before.get(i, []))
                lines.append(_line(row, widths))
                lines.extend(f"      {text}" for text in after.get(i, []))
        for s in skipped:
            lines.append(f"  skipped {s.provider}: {s.reason}")
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """JSON has no NaN: a missing figure is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_json(report: Report) -> dict[str, Any]:
    results = []
    for r in report.results:
        summary = {
            m: {
                "label": METRICS[m].label.strip(),
                "unit": METRICS[m].unit,
                **r.summary(m).as_dict(),
            }
            for m in r.metrics()
        }
        results.append(
            {
                "kind": r.kind,
                "provider": r.provider,
                "summary": summary,
                "notes": r.notes,
                "errors": r.errors,
                "info": r.info,
                "samples": [
                    {"metric": s.metric, "value": s.value, "run": s.run, "item": s.item}
                    for s in r.samples
                ],
            }
        )
    skipped = [
        {"kind": s.kind, "provider": s.provider, "reason": s.reason, "env": s.env}
        for s in report.skipped
    ]
    return _clean({"meta": report.meta, "results": results, "skipped": skipped})


def write_json(report: Report, path: str | Path) -> Path:
    out = Path(path)
    out.write_text(json.dumps(to_json(report), indent=2, default=str) + "\n", encoding="utf-8")
    return out


def write_csv(report: Report, path: str | Path) -> Path:
    """One row per sample: kind, provider, metric, unit, run, item, value."""
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "provider", "metric", "unit", "run", "item", "value"])
        for r in report.results:
            for s in r.samples:
                unit = METRICS[s.metric].unit
                writer.writerow(
                    [r.kind, r.provider, s.metric, unit, s.run, s.item, f"{s.value:.3f}"]
                )
    return out

"""An SVG of a report's distributions, written by hand (no plotting library).

One panel per bench and unit (STT in ms, STT in %, LLM in ms, …), each with its own scale;
one row per provider and metric: every sample as a dot, the p50 as a solid bar, the p95 as a
dashed one.
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

from getpatter.bench.machine import header_line
from getpatter.bench.report import format_value
from getpatter.bench.results import KINDS, METRICS, Report, percentile

__all__ = ["render_svg", "write_svg"]

WIDTH = 980
LABEL_W = 330
PLOT_X0 = LABEL_W + 10
PLOT_X1 = WIDTH - 40
ROW_H = 26
HEADING_H = 20
TITLE_H = 46
PANEL_HEAD = 26
AXIS_H = 30
COLORS = {"stt": "#2b6cb0", "llm": "#b7791f", "tts": "#2f855a", "turn": "#9b2c2c"}
_NAMES = {"stt": "STT", "llm": "LLM", "tts": "TTS", "turn": "Turn"}


def _nice_ticks(low: float, high: float, target: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


Row = tuple[str, str, list[float]]  # (provider, metric label, values)


def _panels(report: Report) -> list[tuple[str, str, list[Row]]]:
    """(kind, unit, rows) for every panel with data; rows grouped by provider."""
    panels: list[tuple[str, str, list[Row]]] = []
    for kind in KINDS:
        units: dict[str, list[Row]] = {}
        for result in report.of(kind):
            for metric in result.metrics():
                info = METRICS[metric]
                units.setdefault(info.unit, []).append(
                    (result.provider, info.label.strip(), result.values(metric))
                )
        for unit, rows in units.items():
            panels.append((kind, unit, rows))
    return panels


def _layout(rows: list[Row]) -> list[tuple[str, Row | None]]:
    """Rows with a provider heading before each provider's first metric."""
    out: list[tuple[str, Row | None]] = []
    last = None
    for row in rows:
        if row[0] != last:
            out.append((row[0], None))
            last = row[0]
        out.append(("", row))
    return out


def _wrap(text: str, width: int = 150) -> list[str]:
    lines, line = [], ""
    for part in text.split(" · "):
        candidate = f"{line} · {part}" if line else part
        if len(candidate) > width and line:
            lines.append(line)
            candidate = part
        line = candidate
    return [*lines, line] if line else lines


def render_svg(report: Report) -> str:
    panels = [(kind, unit, _layout(rows)) for kind, unit, rows in _panels(report)]
    header = _wrap(header_line(report.meta))
    title_h = TITLE_H + 13 * (len(header) - 1)
    height = title_h + sum(PANEL_HEAD + AXIS_H + _rows_height(rows) + 14 for _, _, rows in panels)
    height += 30
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        '<text x="16" y="22" font-size="15" font-weight="bold">getpatter bench: '
        "distributions (dots: samples; solid: p50; dashed: p95)</text>",
    ]
    for i, text in enumerate(header):
        out.append(
            f'<text x="16" y="{38 + 13 * i}" font-size="10" fill="#555">{escape(text)}</text>'
        )
    y = title_h
    for kind, unit, rows in panels:
        color = COLORS[kind]
        values = [v for _, row in rows if row is not None for v in row[2]]
        low = min(0.0, min(values)) if values else 0.0
        high = max(values) * 1.05 if values else 1.0
        ticks = _nice_ticks(low, high)
        lo, hi = ticks[0], ticks[-1]

        def x(v: float, lo: float = lo, hi: float = hi) -> float:
            return PLOT_X0 + (v - lo) / (hi - lo) * (PLOT_X1 - PLOT_X0)

        out.append(
            f'<text x="16" y="{y + 18}" font-size="13" font-weight="bold" fill="{color}">'
            f"{escape(_NAMES[kind])} ({escape(unit)})</text>"
        )
        top = y + PANEL_HEAD
        ry = top
        band = 0
        for heading, row in rows:
            if row is None:
                out.append(
                    f'<text x="24" y="{ry + HEADING_H - 5}" font-weight="bold" fill="#2d3748">'
                    f"{escape(heading)}</text>"
                )
                ry += HEADING_H
                continue
            _, label, vs = row
            mid = ry + ROW_H / 2
            if band % 2 == 0:
                out.append(
                    f'<rect x="{PLOT_X0 - 6}" y="{ry}" width="{PLOT_X1 - PLOT_X0 + 12}" '
                    f'height="{ROW_H}" fill="#f4f6f8"/>'
                )
            band += 1
            out.append(
                f'<text x="{LABEL_W}" y="{mid + 4}" text-anchor="end">{escape(label)}</text>'
            )
            for j, v in enumerate(vs):
                jitter = ((j * 0.618034) % 1.0 - 0.5) * (ROW_H - 10)
                out.append(
                    f'<circle class="sample" cx="{x(v):.1f}" cy="{mid + jitter:.1f}" r="2.6" '
                    f'fill="{color}" fill-opacity="0.55"><title>{escape(format_value(v, unit))}'
                    "</title></circle>"
                )
            if vs:
                p50, p95 = percentile(vs, 50), percentile(vs, 95)
                out.append(
                    f'<line class="p50" x1="{x(p50):.1f}" x2="{x(p50):.1f}" y1="{ry + 3}" '
                    f'y2="{ry + ROW_H - 3}" stroke="#1a202c" stroke-width="2.5"/>'
                )
                out.append(
                    f'<line class="p95" x1="{x(p95):.1f}" x2="{x(p95):.1f}" y1="{ry + 3}" '
                    f'y2="{ry + ROW_H - 3}" stroke="#1a202c" stroke-width="1.5" '
                    'stroke-dasharray="3,2"/>'
                )
            ry += ROW_H
        bottom = ry
        out.append(
            f'<line x1="{PLOT_X0}" x2="{PLOT_X1}" y1="{bottom}" y2="{bottom}" stroke="#999"/>'
        )
        for t in ticks:
            tx = x(t)
            out.append(
                f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{bottom + 4}" '
                'stroke="#ccc" stroke-width="0.6"/>'
            )
            out.append(
                f'<text x="{tx:.1f}" y="{bottom + 17}" text-anchor="middle" fill="#444">'
                f"{escape(_tick_label(t, unit))}</text>"
            )
        y = bottom + AXIS_H + 14
    if not panels:
        out.append(f'<text x="16" y="{y + 20}">no samples</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _rows_height(rows: list[tuple[str, Row | None]]) -> int:
    return sum(HEADING_H if row is None else ROW_H for _, row in rows)


def _tick_label(value: float, unit: str) -> str:
    text = f"{value:,.0f}" if abs(value) >= 10 or value == 0 else f"{value:g}"
    return f"{text}{unit}" if unit == "x" else f"{text} {unit}"


def write_svg(report: Report, path: str | Path) -> Path:
    out = Path(path)
    out.write_text(render_svg(report), encoding="utf-8")
    return out

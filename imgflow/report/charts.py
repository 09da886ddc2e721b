"""Chart geometry for the report's inline SVG: histograms and line charts, no JavaScript.

Only numbers are computed here; the template draws them. Labels are text the template escapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d")


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass
class Series:
    name: str
    points: str  # "x,y x,y ..." for <polyline points=...>
    color: str
    last: str  # the last value, formatted


@dataclass
class Chart:
    title: str
    width: int
    height: int
    series: list[Series]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    x_label: str
    plot: tuple[float, float, float, float]  # left, top, right, bottom of the plotting area


def seconds_text(value: float) -> str:
    """0.0042 -> "4.2 ms"; 1.5 -> "1.5 s"."""
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def histogram_bars(bins: Sequence[tuple[float, float, int]], width: int = 300, height: int = 70) -> list[Bar]:
    """One bar per bin, heights scaled to the fullest bin."""
    if not bins:
        return []
    top = max(count for _, _, count in bins) or 1
    step = width / len(bins)
    bars = []
    for i, (low, high, count) in enumerate(bins):
        h = height * count / top
        bars.append(Bar(x=round(i * step, 2), y=round(height - h, 2), width=round(max(step - 1, 1), 2),
                        height=round(h, 2), title=f"{seconds_text(low)} – {seconds_text(high)}: {count} item(s)"))
    return bars


def _nice_ticks(low: float, high: float, count: int = 4, whole: bool = False) -> list[float]:
    """Round tick values covering [low, high] (whole numbers only, when ``whole``)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if whole:
        step = max(1.0, math.ceil(step))
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def line_chart(title: str, xs: Sequence[float], columns: dict[str, Sequence[float | None]], x_label: str,
               width: int = 420, height: int = 220) -> Chart | None:
    """A chart of ``columns`` (name -> values, None for gaps) against ``xs``; None if nothing to draw."""
    finite = [v for values in columns.values() for v in values if v is not None and math.isfinite(v)]
    if not finite or not xs:
        return None
    left, top, right, bottom = 52.0, 22.0, width - 12.0, height - 34.0
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(finite), max(finite)
    if y_high == y_low:  # a constant (a fixed learning rate): centre it, at its own scale
        pad = abs(y_low) * 0.5 or 0.5
        y_low, y_high = y_low - pad, y_high + pad
    if x_high == x_low:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    whole = all(float(x).is_integer() for x in xs)  # epochs and steps: no tick at 0.2 of an epoch

    def px(x: float) -> float:
        return round(left + (x - x_low) / (x_high - x_low) * (right - left), 2)

    def py(y: float) -> float:
        return round(bottom - (y - y_low) / (y_high - y_low) * (bottom - top), 2)

    series = []
    for i, (name, values) in enumerate(columns.items()):
        points = [(px(x), py(v)) for x, v in zip(xs, values, strict=True) if v is not None and math.isfinite(v)]
        if not points:
            continue
        last = next(v for v in reversed(values) if v is not None and math.isfinite(v))
        series.append(Series(name=name, points=" ".join(f"{x},{y}" for x, y in points),
                             color=PALETTE[i % len(PALETTE)], last=f"{last:.4g}"))
    return Chart(title=title, width=width, height=height, series=series,
                 x_ticks=[(px(t), f"{t:g}") for t in _nice_ticks(x_low, x_high, 5, whole=whole)],
                 y_ticks=[(py(t), f"{t:.3g}") for t in _nice_ticks(y_low, y_high, 4)],
                 x_label=x_label, plot=(left, top, right, bottom))

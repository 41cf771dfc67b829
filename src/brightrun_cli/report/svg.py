"""Hand-written SVG line charts: a report must open anywhere, offline, with no script.

A chart is a frame, grid lines at "nice" ticks (1, 2 or 5 x 10^k), one polyline per
series (markers for sparse series such as validation points) and a legend. Series with
more points than fit the chart's width are reduced to the minimum and maximum of each
pixel-wide bucket, so spikes survive downsampling and the file stays small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 250
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 34
MAX_POINTS = 2 * (WIDTH - LEFT - RIGHT)  # min and max per horizontal pixel
MARKERS_UP_TO = 120  # points; a denser series gets a line only


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    points: list[tuple[float, float]]
    markers: bool = False


def downsample(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most ~`limit` points keeping each bucket's lowest and highest value (in x order),
    and the first and last point."""
    if len(points) <= limit:
        return points
    buckets = max(1, limit // 2)
    x0, x1 = points[0][0], points[-1][0]
    span = (x1 - x0) or 1.0
    groups: dict[int, list[tuple[float, float]]] = {}
    for point in points:
        groups.setdefault(min(buckets - 1, int((point[0] - x0) / span * buckets)), []).append(point)
    kept = [points[0]]
    for index in sorted(groups):
        group = groups[index]
        low, high = min(group, key=lambda p: p[1]), max(group, key=lambda p: p[1])
        kept.extend(sorted({low, high}, key=lambda p: p[0]))
    kept.append(points[-1])
    deduped = [kept[0]]
    for point in kept[1:]:
        if point != deduped[-1]:
            deduped.append(point)
    return deduped


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values within [low, high]: a step of 1, 2 or 5 times a power
    of ten, the one nearest the even split (Heckbert's "nice numbers")."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    fraction = raw / power
    step = power * (1 if fraction < 1.5 else 2 if fraction < 3 else 5 if fraction < 7 else 10)
    digits = max(0, 1 - math.floor(math.log10(step)))  # enough to print the step exactly
    ticks, index = [], math.ceil(low / step)
    while index * step <= high + step * 1e-9:
        ticks.append(round(index * step, digits))
        index += 1
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - pad, high + pad


def line_chart(key: str, title: str, series: list[Series], *, x_label: str = "step", y_label: str = "") -> str:
    """An inline <svg> (data-chart=`key`) of `series` against a shared x axis."""
    series = [Series(s.name, s.color, [(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)], s.markers)
              for s in series]
    drawn = [s for s in series if s.points]
    head = (f'<svg class="chart" data-chart="{escape(key)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
            f'<text class="chart-title" x="{LEFT}" y="18">{escape(title)}</text>')
    if not drawn:
        return (head + f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
                f'height="{HEIGHT - TOP - BOTTOM}"/><text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" '
                f'text-anchor="middle">no data</text></svg>')
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = _range(ys)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return TOP + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    parts = [head, f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>']
    for tick in nice_ticks(y_low, y_high):
        y = sy(tick)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    for tick in nice_ticks(x_low, x_high, 6):
        x = sx(tick)
        parts.append(f'<text class="tick" x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{_label(tick)}</text>')
    parts.append(f'<text class="axis" x="{LEFT + plot_w}" y="{HEIGHT - 4}" text-anchor="end">{escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{TOP - 6}" text-anchor="end">{escape(y_label)}</text>')
    legend_x = WIDTH - RIGHT
    for s in reversed(drawn):
        legend_x -= 14 + 7 * len(s.name)
        parts.append(f'<rect x="{legend_x}" y="9" width="10" height="10" fill="{escape(s.color)}"/>'
                     f'<text class="legend" x="{legend_x + 14}" y="18">{escape(s.name)}</text>')
    for s in drawn:
        points = downsample(s.points)
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline class="series" data-series="{escape(s.name)}" points="{coords}" fill="none" '
                     f'stroke="{escape(s.color)}" stroke-width="2" stroke-linejoin="round"/>')
        if (s.markers and len(points) <= MARKERS_UP_TO) or len(points) == 1:
            parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{escape(s.color)}"/>' for x, y in points)
    parts.append("</svg>")
    return "".join(parts)

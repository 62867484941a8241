"""Small static charts as inline SVG: no JavaScript, readable in light and dark palettes
(colours come from CSS classes in site_src/css/gallery.css), labels escaped.

Each function takes plain numbers and returns an `<svg>` string; nothing here reads files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gallery.site.sanitize import escape

WIDTH, HEIGHT = 640, 320
MARGIN = {"left": 64, "right": 16, "top": 28, "bottom": 48}
# Text is 11 px (gallery.css). 7 px a character is at or above the advance of digits, most
# signs and lower-case letters in common sans-serif fonts at that size (Roboto's and
# Arial's digits are 6.1 px, DejaVu Sans's 7.0), so labels sized with it stay inside the
# chart; wider characters count more.
CHAR_WIDTH = 7.0
WIDE = set("…MWmw@%")  # about a full em (11 px)
MID = set("+=<>~#")  # DejaVu Sans's plus is 9.2 px
Y_LABEL_ROOM = 20  # the rotated y-axis label, left of the y ticks


def text_width(text: str) -> float:
    """An upper estimate of a label's width in pixels at the charts' font size."""
    return sum(11.0 if c in WIDE else 9.5 if c in MID else CHAR_WIDTH for c in text)


def _fit(label: str, room: float) -> str:
    """The label, cut with an ellipsis to at most `room` pixels wide (one character and the
    ellipsis at least)."""
    if text_width(label) <= room:
        return label
    cut = len(label) - 1
    while cut > 1 and text_width(label[:cut] + "…") > room:
        cut -= 1
    return label[:cut] + "…"


@dataclass(frozen=True)
class Series:
    """A named series of points (x, y)."""

    name: str
    x: Sequence[float]
    y: Sequence[float]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    ticks = [round(k * step, 10) for k in range(first, last + 1)]
    return ticks


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels of tick values: the fewest significant digits (3 or more) that tell every tick
    apart, so that close ticks far from zero (123.2, 123.4) do not read alike."""
    for digits in range(3, 17):
        labels = [_fmt(t, digits) for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def _fmt(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.{max(digits - 1, 2)}g}"
    return f"{value:.{digits}g}"


class _Frame:
    """Maps data to pixels inside the margins and draws the axes."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, x_ticks: bool = True):
        self.x_ticks = nice_ticks(min(xs), max(xs)) if x_ticks else []
        self.y_ticks = nice_ticks(min(ys), max(ys))
        self.x0, self.x1 = (self.x_ticks[0], self.x_ticks[-1]) if x_ticks else (0.0, 1.0)
        self.y0, self.y1 = self.y_ticks[0], self.y_ticks[-1]
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1
        self.x_labels, self.y_labels = tick_labels(self.x_ticks), tick_labels(self.y_ticks)
        # margins wide enough for the widest y tick label and half the last x tick label
        # (centred on its tick at the right end of the axis)
        widest = max((text_width(t) for t in self.y_labels), default=0)
        last = text_width(self.x_labels[-1]) / 2 if self.x_labels else 0
        self.left = max(MARGIN["left"], math.ceil(Y_LABEL_ROOM + widest + 8))
        self.right = WIDTH - max(MARGIN["right"], math.ceil(last + 2))
        self.top, self.bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def axes(self, x_label: str, y_label: str) -> list[str]:
        out = [f'<line class="axis" x1="{self.left}" y1="{self.bottom}" x2="{self.right}" '
               f'y2="{self.bottom}"/>',
               f'<line class="axis" x1="{self.left}" y1="{self.top}" x2="{self.left}" '
               f'y2="{self.bottom}"/>']
        for t, label in zip(self.y_ticks, self.y_labels, strict=True):
            y = self.py(t)
            out.append(f'<line class="grid" x1="{self.left}" y1="{y:.1f}" x2="{self.right}" '
                       f'y2="{y:.1f}"/><text class="tick" x="{self.left - 6}" y="{y + 4:.1f}" '
                       f'text-anchor="end">{label}</text>')
        for t, label in zip(self.x_ticks, self.x_labels, strict=True):
            x = self.px(t)
            out.append(f'<text class="tick" x="{x:.1f}" y="{self.bottom + 16}" '
                       f'text-anchor="middle">{label}</text>')
        out.append(f'<text class="label" x="{(self.left + self.right) / 2:.0f}" '
                   f'y="{HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>')
        middle = (self.top + self.bottom) / 2
        out.append(f'<text class="label" transform="translate(14 {middle:.0f}) rotate(-90)" '
                   f'text-anchor="middle">{escape(y_label)}</text>')
        return out


def _svg(title: str, body: list[str], legend: Sequence[str] = ()) -> str:
    items, x = [], MARGIN["left"] + 8
    for i, name in enumerate(legend):
        label = _short(name, 40)
        items.append(f'<rect class="series-{i % 8}" x="{x}" y="8" width="10" height="10"/>'
                     f'<text class="legend" x="{x + 14}" y="17">{escape(label)}</text>')
        x += 14 + 6 * len(label) + 16  # about 6 px a character at 11 px
    return (f'<svg class="gallery-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            + "".join(body + items) + "</svg>")


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float | None],
              y_label: str) -> str:
    """One bar per label; missing values (None, NaN) are marked 'n/a'."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    frame = _Frame([0, 1], [0.0, *finite], x_ticks=False)
    body = frame.axes("", y_label)
    slot = (frame.right - frame.left) / max(len(labels), 1)
    # each label centred under its bar, cut to its slot (so the last stays inside the chart
    # and neighbours do not overlap); the bar's tooltip has the whole label
    room = slot - 4
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = frame.left + slot * (i + 0.15)
        centre = frame.left + slot * (i + 0.5)
        if value is None or not math.isfinite(value):
            body.append(f'<text class="tick" x="{centre:.1f}" y="{frame.bottom - 6}" '
                        'text-anchor="middle">n/a</text>')
        else:
            top, base = frame.py(max(value, 0)), frame.py(min(value, 0))
            body.append(f'<rect class="series-{i % 8}" x="{x:.1f}" y="{top:.1f}" '
                        f'width="{slot * 0.7:.1f}" height="{max(base - top, 0.5):.1f}">'
                        f'<title>{escape(label)}: {_fmt(value)}</title></rect>')
        body.append(f'<text class="tick" x="{centre:.1f}" y="{frame.bottom + 16}" '
                    f'text-anchor="middle">{escape(_fit(_short(label), room))}</text>')
    return _svg(title, body)


def _short(label: str, limit: int = 22) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def scatter_chart(title: str, series: Sequence[Series], x_label: str, y_label: str,
                  diagonal: bool = False) -> str:
    """Points of each series in its colour; `diagonal` draws y = x."""
    xs = [v for s in series for v in s.x] or [0.0, 1.0]
    ys = [v for s in series for v in s.y] or [0.0, 1.0]
    if diagonal:
        xs = ys = [min(min(xs), min(ys)), max(max(xs), max(ys))]
    frame = _Frame(xs, ys)
    body = frame.axes(x_label, y_label)
    if diagonal:
        lo, hi = max(frame.x0, frame.y0), min(frame.x1, frame.y1)
        body.append(f'<line class="diagonal" x1="{frame.px(lo):.1f}" y1="{frame.py(lo):.1f}" '
                    f'x2="{frame.px(hi):.1f}" y2="{frame.py(hi):.1f}"/>')
    for i, s in enumerate(series):
        dots = "".join(f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2"/>'
                       for x, y in zip(s.x, s.y, strict=True))
        body.append(f'<g class="series-{i % 8} points">{dots}</g>')
    return _svg(title, body, [s.name for s in series])


def line_chart(title: str, series: Sequence[Series], x_label: str, y_label: str) -> str:
    """A polyline per series."""
    xs = [v for s in series for v in s.x] or [0.0, 1.0]
    ys = [v for s in series for v in s.y] or [0.0, 1.0]
    frame = _Frame(xs, ys)
    body = frame.axes(x_label, y_label)
    for i, s in enumerate(series):
        points = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}"
                          for x, y in zip(s.x, s.y, strict=True))
        body.append(f'<polyline class="series-{i % 8} line" points="{points}"/>')
    return _svg(title, body, [s.name for s in series])


def histogram_series(samples: dict[str, Sequence[float]], bins: int = 30) -> list[Series]:
    """Density histograms of each sample on shared bins, as step-like series."""
    values = [np.asarray(v, np.float64) for v in samples.values() if len(v)]
    if not values:
        return []
    everything = np.concatenate(values)
    low, high = np.percentile(everything, [0.5, 99.5]) if everything.size > 1 else (0, 1)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    out = []
    for name, sample in samples.items():
        if len(sample):
            density, _ = np.histogram(np.clip(sample, low, high), bins=edges, density=True)
            out.append(Series(name, centres.tolist(), density.tolist()))
    return out

"""The site's SVG charts keep every tick label inside the chart: the last x tick label
(centred on the right end of the axis), the y tick labels (right-aligned left of the axis)
and the bar labels, for small, large, negative and many-digit values. Widths are estimated
at 7 px a character (11 px text), more for wide characters; tests/browser/test_viewer_group.py
measures the real widths in Chromium."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gallery.site.charts import (
    HEIGHT,
    WIDTH,
    Series,
    bar_chart,
    line_chart,
    scatter_chart,
    text_width,
    tick_labels,
)

SVG = "{http://www.w3.org/2000/svg}"

RANGES = {
    "small": (0.0, 1.0),
    "tiny": (1e-5, 9e-5),
    "large": (0.0, 2.5e6),
    "negative": (-1234.0, -5.0),
    "around zero": (-0.37, 0.52),
    "many digits": (1234567.0, 1234999.0),
    "steps": (0.0, 25_000_000.0),
}


def tick_boxes(svg: str) -> list[tuple[str, float, float]]:
    """(text, left, right) of every tick label, from its x, text-anchor and estimated width."""
    root = ET.fromstring(svg)
    assert root.get("viewBox") == f"0 0 {WIDTH} {HEIGHT}"
    boxes = []
    for text in root.iter(f"{SVG}text"):
        if text.get("class") != "tick":
            continue
        x, width = float(text.get("x")), text_width(text.text or "")
        anchor = text.get("text-anchor", "start")
        left = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        boxes.append((text.text, left, left + width))
    return boxes


def assert_inside(svg: str) -> None:
    boxes = tick_boxes(svg)
    assert boxes
    for label, left, right in boxes:
        assert 0 <= left and right <= WIDTH, f"tick {label!r} spans {left:.1f}..{right:.1f}"


@pytest.mark.parametrize("name", sorted(RANGES))
def test_tick_labels_lie_inside_the_chart(name):
    low, high = RANGES[name]
    xs = [low + (high - low) * i / 9 for i in range(10)]
    series = [Series("a", xs, xs), Series("b", xs, [-v for v in xs])]
    assert_inside(line_chart("t", series, "x", "y"))
    assert_inside(scatter_chart("t", series[:1], "x", "y", diagonal=True))


def test_the_last_x_tick_label_is_centred_on_the_axis_end():
    svg = line_chart("t", [Series("a", [0, 2.5e6], [0, 1])], "steps", "return")
    ticks = [t for t in tick_boxes(svg) if t[0] == "2.5e+06"]
    assert len(ticks) == 1
    label, left, right = ticks[0]
    root = ET.fromstring(svg)
    axis = next(e for e in root.iter(f"{SVG}line") if e.get("class") == "axis")
    assert abs((left + right) / 2 - float(axis.get("x2"))) < 0.1  # still under its tick
    assert right <= WIDTH


def test_bar_labels_fit_their_slots():
    labels = [f"A rather long model title number {i}" for i in range(12)]
    svg = bar_chart("returns", labels, [float(i) - 4 for i in range(12)], "mean return")
    assert_inside(svg)
    boxes = [b for b in tick_boxes(svg) if b[0] not in {"n/a"}]
    bars = [b for b in boxes if b[0].startswith("A")]
    assert len(bars) == 12
    for (_, _, right), (_, left, _) in zip(bars, bars[1:]):
        assert right <= left  # neighbours do not overlap
    assert all(b[0].endswith("…") for b in bars)
    # the whole title stays in the bar's tooltip
    assert "A rather long model title number 11: 7" in svg
    # two bars have room for their labels (22 characters at most)
    svg = bar_chart("returns", ["Model one", "Model two"], [1.0, 2.0], "mean return")
    assert [b[0] for b in tick_boxes(svg) if b[0].startswith("Model")] == ["Model one",
                                                                           "Model two"]


def test_tick_labels_tell_close_ticks_apart():
    assert tick_labels([123.2, 123.4, 123.6]) == ["123.2", "123.4", "123.6"]
    assert tick_labels([0, 0.5, 1]) == ["0", "0.5", "1"]
    assert tick_labels([0, 5e5, 1e6]) == ["0", "5e+05", "1e+06"]
    labels = tick_labels([1234500, 1234600, 1234700])
    assert len(set(labels)) == 3

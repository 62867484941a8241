"""The site's SVG charts in Chromium: every tick label's drawn box (getBBox, at the site's
11 px and Material's font stack, which falls back to the system's sans-serif here) lies
inside the chart's viewBox, for the ranges tests/test_charts.py checks by estimate."""

from __future__ import annotations

from gallery.site.charts import HEIGHT, WIDTH, Series, bar_chart, line_chart, text_width

from .conftest import Console

RANGES = [(0.0, 1.0), (1e-5, 9e-5), (0.0, 2.5e6), (-1234.0, -5.0), (1234567.0, 1234999.0),
          (-123456789.0, 987654321.0), (0.0, 25_000_000.0)]


def charts() -> list[str]:
    out = []
    for low, high in RANGES:
        xs = [low + (high - low) * i / 9 for i in range(10)]
        out.append(line_chart("t", [Series("a", xs, xs), Series("b", xs, [-v for v in xs])],
                              "x", "y"))
    labels = [f"Wide MMMM WWWW title {i}" for i in range(9)]
    out.append(bar_chart("bars", labels, [i - 3.0 for i in range(9)], "mean return"))
    return out


def test_tick_labels_drawn_inside_the_chart(browser):
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    console = Console(page)
    style = ("<style>svg { width: 640px; height: 320px; display: block; } "
             "svg text { font-size: 11px; font-family: Roboto, -apple-system, "
             "BlinkMacSystemFont, Helvetica, Arial, sans-serif; }</style>")
    page.set_content("<!doctype html><html><head>" + style + "</head><body>"
                     + "".join(charts()) + "</body></html>")
    boxes = page.evaluate("""() => [...document.querySelectorAll('svg')].map((svg) =>
      [...svg.querySelectorAll('text.tick')].map((t) => {
        const b = t.getBBox();
        return [t.textContent, b.x, b.x + b.width];
      }))""")
    assert len(boxes) == len(RANGES) + 1
    for chart in boxes:
        assert chart
        for label, left, right in chart:
            assert 0 <= left and right <= WIDTH, f"{label!r} drawn at {left:.1f}..{right:.1f}"
    # the charts' width estimate is an upper bound of the drawn width, and not a loose one
    ratios = [(right - left) / text_width(label) for chart in boxes
              for label, left, right in chart]
    assert max(ratios) <= 1.0, f"a label drawn wider than estimated: {max(ratios):.2f}"
    assert max(ratios) > 0.75
    print(f"drawn / estimated width: {min(ratios):.2f} .. {max(ratios):.2f}")
    assert HEIGHT == 320 and not console.errors
    page.context.close()

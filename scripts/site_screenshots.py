"""Screenshots of a built gallery site at a laptop's width (1400 px) and a narrow one (800 px):
the zoo, a model page and a comparison page, into docs/screenshots/ (pages-*.png).

    gallery build -m checkpoints.yaml -o site/        # or: bash scripts/demo.sh
    .venv/bin/python scripts/site_screenshots.py site/ [--out docs/screenshots]
        [--page zoo= --page model=models/ID/ --page training=compare/ID/ ...]

Serves the site on 127.0.0.1 and drives Debian's Chromium headless through Playwright
(as the browser tests do: tests/browser/harness.py). Model and comparison pages are
taken once their viewers have drawn their first frame, scrolled to the interface.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.harness import chromium, serve  # noqa: E402

WIDTHS = (1400, 800)


def first_page(site: Path, section: str) -> str | None:
    pages = sorted(p.parent.name for p in (site / section).glob("*/index.html"))
    return f"{section}/{pages[0]}/" if pages else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built site (gallery build -o)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--page", action="append", default=[], metavar="NAME=PATH",
                        help="take pages-NAME-<width>.png of the site's PATH (e.g. "
                             "training=compare/training/; 'zoo=' is the home page; "
                             "PATH#ID scrolls to the element with that id); "
                             "repeatable, replaces the default zoo, model and comparison")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        parser.error(f"{args.site} holds no built site (no index.html); run gallery build")
    pages = {"zoo": ""}
    for name, section in (("model", "models"), ("comparison", "compare")):
        path = first_page(args.site, section)
        if path:
            pages[name] = path
    if args.page:
        chosen = dict(item.split("=", 1) for item in args.page if "=" in item)
        if len(chosen) != len(args.page):
            parser.error("--page takes NAME=PATH, e.g. training=compare/training/")
        missing = [p for p in chosen.values()
                   if not (args.site / p.partition("#")[0] / "index.html").is_file()]
        if missing:
            parser.error(f"no page at {', '.join(missing)} in {args.site}")
        pages = chosen
    args.out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with serve(args.site) as base, chromium() as browser:
        for width in WIDTHS:
            context = browser.new_context(viewport={"width": width, "height": args.height})
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            for name, address in pages.items():
                path, _, anchor = address.partition("#")
                page.goto(base + path)
                viewers = page.locator("[data-gallery-viewer]").count()
                if viewers:
                    page.wait_for_function(
                        "n => document.querySelectorAll('[data-gallery-viewer][data-ready]')"
                        ".length === n", arg=viewers, timeout=120_000)
                if viewers or anchor:  # to PATH#ID's section, else to the first viewer
                    # one scroll down (scrolling up shows Material's back-to-top button)
                    page.evaluate("id => window.scrollTo(0, (id ? document.getElementById(id)"
                                  " : document.querySelector('[data-gallery-viewer]'))"
                                  ".getBoundingClientRect().top + window.scrollY - 60)", anchor)
                    page.wait_for_timeout(300)
                target = args.out / f"pages-{name}-{width}.png"
                page.screenshot(path=str(target))
                print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}"
                      f"  ({base}{path}, {viewers} viewer(s))")
            context.close()
    if errors:
        print("console errors:", *errors, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

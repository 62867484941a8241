"""Untrusted manifest text made safe for the site.

Titles, tags and labels are plain text: they are HTML-escaped wherever they appear (page
bodies, the navigation, <title>, meta tags). Descriptions are Markdown: rendered, then
sanitised with nh3 (an allow-list HTML sanitiser), so raw HTML in them cannot run script
(`<script>`, `onerror=`, `javascript:` URLs and the like are removed).
"""

from __future__ import annotations

import html
import re

import markdown
import nh3

_TAGS = set(nh3.ALLOWED_TAGS) | {"tfoot"}
_ATTRIBUTES = {**{k: set(v) for k, v in nh3.ALLOWED_ATTRIBUTES.items()},
               "a": {"href", "hreflang", "title"}, "img": {"alt", "src", "width", "height",
                                                          "title"},
               "code": {"class"}, "abbr": {"title"}}
_URL_SCHEMES = {"http", "https", "mailto"}
_EXTENSIONS = ["tables", "fenced_code", "sane_lists", "abbr", "def_list"]


def escape(text: object) -> str:
    """Plain text for any HTML context (element content or a quoted attribute)."""
    return html.escape(str(text), quote=True)


def render_markdown(text: str) -> str:
    """Markdown from the manifest as safe HTML (raw HTML in it is sanitised)."""
    rendered = markdown.markdown(text or "", extensions=_EXTENSIONS, output_format="html")
    # the page's own title is its only <h1>; the sanitiser runs after, so this is safe
    rendered = re.sub(r"<(/?)h1\b", r"<\1h2", rendered, flags=re.IGNORECASE)
    return sanitize_html(rendered)


def sanitize_html(fragment: str) -> str:
    """Keep only harmless tags, attributes and URL schemes; drop script and style contents."""
    return nh3.clean(fragment, tags=_TAGS, attributes=_ATTRIBUTES,
                     clean_content_tags={"script", "style"}, url_schemes=_URL_SCHEMES,
                     link_rel="noopener noreferrer nofollow")


def plain_text(text: str, limit: int = 300) -> str:
    """A one-paragraph plain-text summary of Markdown (meta descriptions, cards)."""
    stripped = nh3.clean(markdown.markdown(text or ""), tags=set())
    words = html.unescape(" ".join(stripped.split()))
    return words if len(words) <= limit else words[: limit - 1].rsplit(" ", 1)[0] + "…"

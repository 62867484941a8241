"""The pages of the site and its mkdocs.yml, computed from the manifest and the build results.

Pure: every function returns text (or a dict); `project.py` writes them. Manifest text is
untrusted: Jinja2 autoescapes everything placed in the pages, titles placed in mkdocs.yml
(navigation, <title>, meta tags: the theme does not escape them) are escaped here, and
descriptions go through `render_markdown` (sanitised).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from gallery.site import matching
from gallery.site.charts import Series, bar_chart, histogram_series, line_chart, scatter_chart
from gallery.site.results import ComparisonEntry, ModelEntry, ModelResult
from gallery.site.sanitize import escape, plain_text, render_markdown

#: Folder of a model page holding its legend thumbnails (one PNG per NMF feature).
LEGENDS_DIR = "features"
#: The viewer (gallery/viewer_dist), once per site, relative to the site's root.
VIEWER_JS, VIEWER_CSS = "viewer/viewer.js", "viewer/viewer.css"

PAPER_BIBTEX = """@article{hilton2020understanding,
  author = {Hilton, Jacob and Cammarata, Nick and Carter, Shan and Goh, Gabriel and Olah, Chris},
  title = {Understanding RL Vision},
  journal = {Distill},
  year = {2020},
  note = {https://distill.pub/2020/understanding-rl-vision},
  doi = {10.23915/distill.00029}
}"""

_env = Environment(loader=PackageLoader("gallery.site", "templates"), autoescape=True,
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                   undefined=StrictUndefined)


@dataclass(frozen=True)
class BuildInfo:
    """When and with what the site was built."""

    built: str
    """ISO date of the build."""
    version: str
    """gallery version."""


# --- formatting -----------------------------------------------------------------------------


def fmt_number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a (no episode completed)"
    return f"{value:.{digits}f}"


def fmt_steps(steps: int | None) -> str:
    if not steps:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if steps >= size:
            return f"{steps / size:.3g}{unit}"
    return str(steps)


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _environment_name(entry: ModelEntry) -> str:
    if entry.result:
        env = entry.result.environment
        mode = env.get("options", {}).get("distribution_mode")
        return f"{env.get('env_name', '?')}" + (f" ({mode})" if mode else "")
    return str(entry.spec.env.get("env_name", "unknown"))


def _training_steps(entry: ModelEntry) -> int | None:
    if entry.spec.training_steps:
        return int(entry.spec.training_steps)
    return entry.result.training_steps if entry.result else None


# --- the zoo --------------------------------------------------------------------------------


def zoo_page(site: Any, models: list[ModelEntry], comparisons: list[ComparisonEntry],
             info: BuildInfo) -> str:
    """index.md: one card per model, the tag filter, the list of comparisons."""
    tag_counts = Counter(tag for m in models for tag in m.spec.tags)
    cards = [{
        "id": m.spec.id, "title": m.spec.title, "tags": m.spec.tags,
        "tags_json": json.dumps(m.spec.tags), "failed": not m.ok,
        "thumbnail": m.result.thumbnail if m.result else None,
        "environment": _environment_name(m),
        "architecture": m.result.architecture if m.result else "unknown",
        "training_steps": fmt_steps(_training_steps(m)),
        "mean_return": fmt_number(m.result.episodes.mean_return) if m.result else "n/a",
    } for m in models]
    titles = {m.spec.id: m.spec.title for m in models}
    comparison_rows = [{"id": c.spec.id, "title": c.spec.title,
                        "models": [titles.get(i, i) for i in c.spec.models]}
                       for c in comparisons]
    body = _env.get_template("zoo.md.j2").render(
        site=site, intro=site.description or "", models=cards, comparisons=comparison_rows,
        tags=[{"name": t, "count": n} for t, n in sorted(tag_counts.items())],
        built=info.built, version=info.version)
    # no `title`: the theme then titles the home page with the site name alone
    return _front_matter(description=site.description or site.name) + body


# --- a model --------------------------------------------------------------------------------


def model_page(entry: ModelEntry, info: BuildInfo) -> str:
    """models/<id>/index.md: the interface and the model card."""
    spec, result = entry.spec, entry.result
    context: dict[str, Any] = {
        "title": spec.title, "tags": spec.tags, "error": entry.error,
        "description": Markup(render_markdown(spec.description)),
        "citation": Markup(render_markdown(spec.citation)) if spec.citation else None,
        "paper_bibtex": PAPER_BIBTEX, "result": result,
        "interface": result.interface if result else None,
        "thumbnail": result.thumbnail if result else None,
        "checkpoint": spec.checkpoint, "adapter": spec.adapter,
        "checkpoint_url": spec.checkpoint if spec.is_remote else None,
        "viewer_js": f"../../{VIEWER_JS}", "viewer_css": f"../../{VIEWER_CSS}",
    }
    if result:
        context.update(_model_card(entry, result))
    body = _env.get_template("model.md.j2").render(**context)
    summary = plain_text(spec.description) or spec.title
    # the viewer needs the width: the navigation stays in the header's drawer
    return _front_matter(title=spec.title, description=summary,
                         image=result.thumbnail if result else None,
                         hide=["navigation", "toc"] if context["interface"] else None) + body


def _model_card(entry: ModelEntry, result: ModelResult) -> dict[str, Any]:
    labels = entry.spec.features
    layer_names = {layer["name"] for layer in result.layers}
    layers = [{"name": layer["name"], "shape": layer["shape"],
               "features": [{"index": i, "label": label}
                            for i, label in sorted(labels.get(layer["name"], {}).items())]}
              for layer in result.layers]
    legends = [{"layer": name, "features": [
        {"index": k, "number": k + 1, "image": f"{LEGENDS_DIR}/{path.name}",
         "label": labels.get(name, {}).get(k)} for k, path in enumerate(paths)]}
        for name, paths in entry.legends.items()]
    return {
        "parameters": f"{result.parameters:,}",
        "training_steps": f"{_training_steps(entry):,}" if _training_steps(entry) else None,
        "mean_return": fmt_number(result.episodes.mean_return),
        "mean_length": fmt_number(result.episodes.mean_length, 1),
        # a duration differs from build to build: reproducible builds (SOURCE_DATE_EPOCH) omit it
        "build_seconds": (None if os.environ.get("SOURCE_DATE_EPOCH", "").strip()
                          else fmt_seconds(result.seconds)),
        "layers": layers, "legends": legends,
        "unknown_feature_layers": sorted(set(labels) - layer_names),
        "environment": _flatten(result.environment),
        "training_args": sorted((str(k), _value(v)) for k, v in result.training_args.items()),
        "settings_yaml": yaml.safe_dump(result.settings, sort_keys=True).rstrip(),
        "charts": {"value": Markup(_values_chart([entry])),
                   "advantages": Markup(_advantages_chart([entry]))},
    }


def _flatten(env: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(k, _value(v)) for k, v in env.items() if k != "options"]
    rows += [(k, _value(v)) for k, v in sorted(env.get("options", {}).items())]
    return rows


def _value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _values_chart(entries: list[ModelEntry]) -> str:
    series = [Series(e.spec.title, [p[1] for p in e.result.values_vs_returns],
                     [p[0] for p in e.result.values_vs_returns])
              for e in entries if e.result and e.result.values_vs_returns]
    return scatter_chart("Value against discounted return", series, "discounted return",
                         "value estimate", diagonal=True)


def _advantages_chart(entries: list[ModelEntry]) -> str:
    samples = {e.spec.title: e.result.advantages for e in entries if e.result}
    return line_chart("Advantage distribution", histogram_series(samples), "advantage",
                      "density")


# --- a comparison ---------------------------------------------------------------------------


def comparison_page(comparison: ComparisonEntry, models: dict[str, ModelEntry]) -> str:
    """compare/<id>/index.md: the models' statistics side by side."""
    spec = comparison.spec
    entries = [models[i] for i in spec.models]
    built = [e for e in entries if e.result]
    rows = [{
        "id": e.spec.id, "title": e.spec.title, "environment": _environment_name(e),
        "architecture": e.result.architecture if e.result else "n/a",
        "mean_return": fmt_number(e.result.episodes.mean_return) if e.result else "n/a",
        "mean_length": fmt_number(e.result.episodes.mean_length, 1) if e.result else "n/a",
        "episodes": e.result.episodes.count if e.result else "n/a",
        "interface": e.result.interface if e.result else None,
        "thumbnail": e.result.thumbnail if e.result else None,
    } for e in entries]
    charts = {
        "returns": Markup(bar_chart("Mean episode return", [e.spec.title for e in built],
                                    [e.result.episodes.mean_return for e in built],
                                    "mean return")),
        "value": Markup(_values_chart(built)),
        "advantages": Markup(_advantages_chart(built)),
        "shared": Markup(_shared_chart(comparison, models)),
    }
    shared, viewers, matched = None, [], []
    if comparison.shared:
        s = comparison.shared
        source_title = models[s.source_model].spec.title
        shared = {"frames": s.frames, "stride": s.stride,
                  "count": len(next(iter(s.values.values()), [])),
                  "source_title": source_title, "steps": s.shared_steps}
        viewers = [{"id": i, "title": models[i].spec.title, "folder": folder,
                    "group": f"compare-{spec.id}"}
                   for i, folder in s.interfaces.items() if i in models]
        matched = _matched_rows(s.matched, models)
    games = matching.by_game([e.result for e in built])
    across_games = len(games) > 1
    games_note, own_features = None, []
    if across_games:
        # nothing is shared but the statistics: each model's own interface (as on its page,
        # in a group of its own) and its own features, unmatched
        games_note = matching.different_games_note(
            {g: [built[i].spec.title for i in indices] for g, indices in games.items()})
        shared, matched = None, []
        viewers = [{"id": e.spec.id, "title": e.spec.title,
                    "folder": f"../../models/{e.spec.id}/{e.result.interface}",
                    "group": f"compare-{spec.id}-{e.spec.id}",
                    "game": matching.describe_game(matching.game(e.result))}
                   for e in built if e.ok and e.folder and e.result.interface]
        own_features = _own_features(built)
    training = getattr(spec, "kind", "models") == "training"
    if training:
        charts.update(_training_charts(comparison, built))
    body = _env.get_template("comparison.md.j2").render(training=training,
        title=spec.title, description=Markup(render_markdown(spec.description)),
        models=rows, failed=[e.spec.title for e in entries if not e.ok], charts=charts,
        shared=shared, shared_note=comparison.note, features=matched_features(entries),
        viewers=viewers, matched=matched, across_games=across_games,
        games_note=games_note, own_features=own_features, viewer_js=f"../../{VIEWER_JS}",
        viewer_css=f"../../{VIEWER_CSS}",
        same_checkpoint=len(built) > 1 and len({e.result.checkpoint_sha256
                                                for e in built}) == 1)
    summary = plain_text(spec.description) or spec.title
    return _front_matter(title=spec.title, description=summary,
                         hide=["navigation", "toc"] if viewers else None) + body


def _own_features(entries: list[ModelEntry]) -> list[dict[str, Any]]:
    """Each model's NMF features per layer, unmatched: the legend thumbnails its model page
    publishes (models/<id>/features/), numbered as in its interface's legend, with the
    manifest's labels."""
    out = []
    for e in entries:
        labels = e.spec.features
        layers = [{"layer": name, "features": [
            {"number": k + 1, "image": f"../../models/{e.spec.id}/{LEGENDS_DIR}/{path.name}",
             "label": labels.get(name, {}).get(k)} for k, path in enumerate(paths)]}
            for name, paths in e.legends.items() if paths]
        if layers:
            out.append({"id": e.spec.id, "title": e.spec.title, "layers": layers})
    return out


def _matched_rows(matched: list[dict[str, Any]], models: dict[str, ModelEntry]
                  ) -> list[dict[str, Any]]:
    """The matched features for the template: per layer, the models' titles and rows of
    cells (thumbnail, feature index, its label from the manifest, similarity)."""
    out = []
    for layer in matched:
        ids = [i for i in layer["models"] if i in models]
        if len(ids) != len(layer["models"]):
            continue
        rows = []
        for row in layer["rows"]:
            cells = []
            for cell in row["cells"]:
                labels = models[cell["model"]].spec.features.get(layer["layer"], {})
                similarity = cell["similarity"]
                cells.append({
                    "image": cell["image"], "feature": cell["feature"],
                    "label": labels.get(cell["feature"]) or labels.get(str(cell["feature"])),
                    "similarity": None if similarity is None else f"{similarity:.2f}",
                    "model": models[cell["model"]].spec.title})
            rows.append(cells)
        out.append({"layer": layer["layer"], "titles": [models[i].spec.title for i in ids],
                    "rows": rows})
    return out


def _training_charts(comparison: ComparisonEntry, built: list[ModelEntry]
                     ) -> dict[str, Markup]:
    """A training comparison's charts over its checkpoints (in the manifest's order): mean
    return, mean value on the shared observations, and per layer the mean similarity of the
    last checkpoint's features to their best matches in each checkpoint. The x axis is
    the training steps when every checkpoint states them, else the checkpoint's rank."""
    steps = [_training_steps(e) for e in built]
    if all(s is not None for s in steps) and steps == sorted(set(steps)):
        xs, x_label = [float(s) for s in steps], "training steps"
    else:
        xs, x_label = [float(i) for i in range(len(built))], "checkpoint (training order)"
    returns = [(x, e.result.episodes.mean_return) for x, e in zip(xs, built, strict=True)
               if e.result.episodes.mean_return is not None]
    out = {"over_returns": Markup(line_chart(
        "Mean episode return over training", [Series("mean return", [x for x, _ in returns],
                                                     [y for _, y in returns])],
        x_label, "mean return"))}
    shared = comparison.shared
    if shared:
        values = [(x, float(np.mean(shared.values[e.spec.id])))
                  for x, e in zip(xs, built, strict=True) if shared.values.get(e.spec.id)]
        out["over_values"] = Markup(line_chart(
            "Mean value on the shared observations", [Series(
                "mean value", [x for x, _ in values], [y for _, y in values])],
            x_label, "mean value estimate"))
        at = {e.spec.id: x for x, e in zip(xs, built, strict=True)}
        series = []
        for layer in shared.matched:
            ids = layer["models"]
            if layer.get("kind") != "training" or not layer["rows"] or \
                    any(i not in at for i in ids):
                continue
            means = [1.0 if k == len(ids) - 1 else float(np.mean(
                [row["cells"][k]["similarity"] for row in layer["rows"]]))
                for k in range(len(ids))]
            series.append(Series(f"layer {layer['layer']}", [at[i] for i in ids], means))
        if series:
            out["over_features"] = Markup(line_chart(
                "Features of the last checkpoint, found earlier", series, x_label,
                "mean similarity of the best match"))
    return out


def _shared_chart(comparison: ComparisonEntry, models: dict[str, ModelEntry]) -> str:
    if not comparison.shared:
        return ""
    series = [Series(models[i].spec.title, list(range(len(v))), v)
              for i, v in comparison.shared.values.items()]
    return line_chart("Value on shared observations", series, "observation", "value estimate")


def matched_features(entries: list[ModelEntry]) -> list[dict[str, Any]]:
    """Rows of (label, one cell per model: 'layer: index, ...'), for labels that appear in
    the manifest's `features` of any model of the comparison."""
    by_label: dict[str, list[list[str]]] = {}
    for column, entry in enumerate(entries):
        for layer, labels in entry.spec.features.items():
            for index, label in labels.items():
                cells = by_label.setdefault(label, [[] for _ in entries])
                cells[column].append(f"{layer}: {index}")
    return [{"label": label, "cells": [", ".join(c) for c in cells]}
            for label, cells in sorted(by_label.items(), key=lambda kv: kv[0].lower())]


# --- mkdocs.yml -----------------------------------------------------------------------------


def mkdocs_config(site: Any, models: list[ModelEntry], comparisons: list[ComparisonEntry],
                  info: BuildInfo, pages: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """The MkDocs configuration. The theme prints titles as given: they are escaped here.
    `pages`: the zoo's own pages (title, path in docs/), listed after the zoo."""
    nav: list[Any] = [{"Zoo": "index.md"}]
    nav += [{escape(title): path} for title, path in pages]
    nav.append({"Models": [{escape(m.spec.title): f"models/{m.spec.id}/index.md"}
                           for m in models]})
    if comparisons:
        nav.append({"Comparisons": [{escape(c.spec.title): f"compare/{c.spec.id}/index.md"}
                                    for c in comparisons]})
    config: dict[str, Any] = {
        "site_name": escape(site.name),
        "site_description": escape(site.description or f"{site.name}: a model zoo"),
        "docs_dir": "docs",
        "use_directory_urls": True,
        "theme": {
            "name": "material", "custom_dir": "overrides", "language": "en",
            "font": False,  # system fonts: no request to Google Fonts (offline, privacy)
            "icon": {"logo": "material/robot-outline"},
            # no navigation.tracking: the address's hash holds the viewer's deep link
            "features": ["navigation.top", "search.suggest",
                         "search.highlight", "content.code.copy", "toc.follow"],
            "palette": [
                {"media": "(prefers-color-scheme: light)", "scheme": "default",
                 "primary": "indigo", "accent": "amber",
                 "toggle": {"icon": "material/weather-night", "name": "Switch to dark mode"}},
                {"media": "(prefers-color-scheme: dark)", "scheme": "slate",
                 "primary": "indigo", "accent": "amber",
                 "toggle": {"icon": "material/weather-sunny", "name": "Switch to light mode"}},
            ],
        },
        "plugins": [{"search": {"lang": "en"}}],
        "markdown_extensions": ["attr_list", "admonition", "tables", {"toc": {"permalink": True}}],
        "extra_css": ["css/gallery.css"],
        "extra_javascript": ["js/zoo.js", "js/viewers.js"],
        "extra": {"generator": False, "gallery": {"version": info.version, "built": info.built}},
        "validation": {"omitted_files": "warn", "absolute_links": "warn",
                       "unrecognized_links": "warn", "anchors": "warn"},
        "nav": nav,
    }
    if site.url:
        config["site_url"] = site.url
    if site.repo_url:
        config["repo_url"] = site.repo_url
    if site.author:
        config["site_author"] = escape(site.author)
    return config


def _front_matter(**meta: Any) -> str:
    """YAML front matter; `title` and `description` are escaped (the theme prints them raw)."""
    cleaned = {k: escape(v) if k in ("title", "description") else v
               for k, v in meta.items() if v is not None}
    return "---\n" + yaml.safe_dump(cleaned, sort_keys=True, allow_unicode=True) + "---\n\n"

"""`generate_interface`: one checkpoint -> one interactive interface in a folder.

The folder is viewable from any static server:

    DIR/index.html        the page (says how to view it when opened from disk)
    DIR/viewer/           the built viewer (viewer.js, viewer.css), copied from the package
    DIR/bundle/           the data: bundle.json and the files it names (docs/bundle.md)

Stages: load the policy; record trajectories and extra observations (reused from the
cache when nothing changed, `gallery.rollouts.load_or_collect`); outputs, advantages and
bookmarks (method.md 2); per layer: NMF features fitted on value attribution of the extra
observations (5), attribution of every (trajectory, output) reduced to the features and
written to the bundle as it is computed (4, 6), and the feature visualisation (7).
Numerical work lives in gallery.attribution / nmf / advantages / dataset_examples; this
module only sequences it and writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import bundle as bundles
from .adapters import load_any
from .advantages import bookmarks as find_bookmarks
from .advantages import gae_advantages, policy_outputs
from .attribution import (INPUT_LAYER, MultiPath, action_groups, attribution_batches,
                          integrated_gradients, readout_matrix)
from .dataset_examples import assign_with_max_repetition, feature_thumbnail, resample_grid
from .environments import EnvSpec
from .errors import GalleryError
from .fetch import resolve_cache_dir, sha256_file
from .nmf import LayerNMF, NMFSettings, fit_nmf
from .rollouts import ObservationConfig, TrajectoryConfig, load_or_collect

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
VIEWER_DIR = "viewer"
VIEWER_FILES = ("viewer.js", "viewer.css")

Progress = Callable[[str], None]
"""Called with a one-line description of each stage as it starts."""


class InterfaceError(GalleryError):
    """Options or inputs an interface cannot be generated from."""


@dataclass(frozen=True)
class InterfaceOptions:
    """Everything that decides what an interface shows (method.md section 8 defaults)."""

    # trajectories (method.md 1)
    num_envs: int = 8
    """Trajectories recorded."""
    num_steps: int = 512
    """Steps per trajectory."""
    seed: int = 0
    """Seed of the environments and of the sampled actions."""
    env: dict[str, Any] = field(default_factory=dict)
    """Overrides of the checkpoint's environment options, e.g. {'distribution_mode': 'easy'}."""
    # extra observations for NMF and feature visualisation (method.md 1)
    obs_num_envs: int = 32
    """Environments that gather the extra observations."""
    num_obs: int = 128
    """Observations kept per environment."""
    obs_every: int = 128
    """Steps between two kept observations."""
    # bookmarks (method.md 2)
    bookmarks: int = 16
    """Bookmarks of each sign (highest and lowest advantage)."""
    # layers (method.md 3)
    layers: tuple[str, ...] | None = None
    """Keep only layers whose name contains one of these strings (None: all offered)."""
    discard_first_n: int = 0
    """Drop the first n layers (after `layers`)."""
    input_layer: bool = False
    """Also show gradients with respect to the observation (layer 'input')."""
    # attribution (method.md 4)
    integrate_steps: int = 10
    """Riemann steps of integrated gradients."""
    policy: bool = False
    """Also attribute every action's logit and every action group's logit sum."""
    single_features: bool = True
    """Offer single-feature views (legend hover isolates a feature)."""
    multi_path: bool = False
    """Average IG over paths in NMF feature space (method.md 4, option)."""
    max_paths: int | None = None
    """With multi_path: the number of paths drawn (None: all)."""
    # NMF (method.md 5)
    nmf_features: int = 8
    """K, features per layer."""
    nmf_integrate_steps: int = 10
    """Riemann steps of the value attribution the features are fitted on."""
    # feature visualisation (method.md 7)
    vis_subdiv_mults: tuple[float, ...] = (0.25, 0.5, 1, 2)
    vis_subdiv_mult_default: float = 1
    vis_expand_mults: tuple[float, ...] = (1, 2, 4, 8)
    vis_expand_mult_default: float = 4
    thumbnail_num_mult: int = 4
    thumbnail_expand_mult: float = 4
    # presentation (interface.md, reference defaults)
    scrub_range: tuple[float, float] = (42 / 64, 44 / 64)
    video_speed: float = 12
    attribution_weight: float = 0.9
    scrubber_visible_duration: int = 256
    # where and how
    title: str | None = None
    """Page title (default: the checkpoint's file name)."""
    model_id: str | None = None
    """Identifier carried in deep links (default: derived from the title)."""
    resample: bool = False
    """Record trajectories and observations again even if a saved copy matches."""
    cache_dir: str | None = None
    """Where rollouts are kept (default: $GALLERY_CACHE or the user cache folder)."""
    image_effort: str = "best"
    """Observation images: 'best' (smallest files, slow) or 'fast' (about twice the size,
    for previews and tests)."""

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise InterfaceError("invalid interface options: " + "; ".join(problems))


def _problems(o: InterfaceOptions) -> list[str]:
    out = []
    for name in ("num_envs", "num_steps", "obs_num_envs", "num_obs", "obs_every",
                 "integrate_steps", "nmf_features", "nmf_integrate_steps",
                 "thumbnail_num_mult", "scrubber_visible_duration"):
        value = getattr(o, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            out.append(f"{name} must be a positive integer, not {value!r}")
    for name in ("bookmarks", "discard_first_n"):
        value = getattr(o, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            out.append(f"{name} must be an integer >= 0, not {value!r}")
    if o.max_paths is not None and (not isinstance(o.max_paths, int) or o.max_paths < 1):
        out.append(f"max_paths must be a positive integer or None, not {o.max_paths!r}")
    for name in ("vis_subdiv_mults", "vis_expand_mults"):
        values = getattr(o, name)
        if not values or any(not isinstance(v, (int, float)) or not v > 0 for v in values):
            out.append(f"{name} must be a non-empty list of positive numbers, not {values!r}")
    if o.vis_subdiv_mult_default not in o.vis_subdiv_mults:
        out.append(f"vis_subdiv_mult_default {o.vis_subdiv_mult_default} is not one of "
                   f"vis_subdiv_mults {list(o.vis_subdiv_mults)}")
    if o.vis_expand_mult_default not in o.vis_expand_mults:
        out.append(f"vis_expand_mult_default {o.vis_expand_mult_default} is not one of "
                   f"vis_expand_mults {list(o.vis_expand_mults)}")
    a, b = o.scrub_range
    if not 0 <= a < b <= 1:
        out.append(f"scrub_range must be two fractions 0 <= a < b <= 1, not {o.scrub_range!r}")
    if not 0 <= o.attribution_weight <= 1:
        out.append(f"attribution_weight must be in [0, 1], not {o.attribution_weight}")
    if not o.video_speed > 0:
        out.append(f"video_speed must be > 0, not {o.video_speed}")
    if o.image_effort not in bundles.EFFORT:
        out.append(f"image_effort must be one of {sorted(bundles.EFFORT)}, not "
                   f"{o.image_effort!r}")
    if not isinstance(o.env, dict):
        out.append(f"env must be a mapping of environment options, not {o.env!r}")
    return out


def options_from(values: dict[str, Any]) -> InterfaceOptions:
    """InterfaceOptions from keyword values, with a clear error for unknown names."""
    known = {f.name for f in fields(InterfaceOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InterfaceError(f"unknown interface option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
    converted = dict(values)
    for name in ("layers", "vis_subdiv_mults", "vis_expand_mults", "scrub_range"):
        if converted.get(name) is not None and not isinstance(converted[name], tuple):
            converted[name] = tuple(converted[name])
    if converted.get("env") is None and "env" in converted:
        converted["env"] = {}
    return InterfaceOptions(**converted)


# --- the public entry point -------------------------------------------------------------


def generate_interface(checkpoint: str | Path, output_dir: str | Path, *,
                       adapter: str | None = None, config: InterfaceOptions | None = None,
                       progress: Progress | None = None,
                       num_envs: int | None = None, num_steps: int | None = None,
                       seed: int | None = None, env: dict[str, Any] | None = None,
                       obs_num_envs: int | None = None, num_obs: int | None = None,
                       obs_every: int | None = None, bookmarks: int | None = None,
                       layers: Sequence[str] | None = None, discard_first_n: int | None = None,
                       input_layer: bool | None = None, integrate_steps: int | None = None,
                       policy: bool | None = None, single_features: bool | None = None,
                       multi_path: bool | None = None, max_paths: int | None = None,
                       nmf_features: int | None = None, nmf_integrate_steps: int | None = None,
                       title: str | None = None, model_id: str | None = None,
                       resample: bool | None = None, cache_dir: str | None = None,
                       image_effort: str | None = None) -> dict[str, Any]:
    """Generate the interface of `checkpoint` (a .jd file, or module:factory with an
    adapter) into `output_dir`; returns a summary (sizes, timings, fidelity checks).

    Options are those of `InterfaceOptions` (given as `config`, or one keyword each, which
    override `config`). The folder is replaced.
    """
    given = {k: v for k, v in locals().items()
             if k in {f.name for f in fields(InterfaceOptions)} and v is not None}
    try:
        options = replace(config or InterfaceOptions(), **{
            k: (tuple(v) if k == "layers" else v) for k, v in given.items()})
    except TypeError as err:
        raise InterfaceError(str(err)) from None
    return InterfaceBuilder(str(checkpoint), Path(output_dir), options, adapter,
                            progress or _log_progress).run()


def _log_progress(message: str) -> None:
    log.info("%s", message)


# --- the pipeline -------------------------------------------------------------------------


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, start: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


class InterfaceBuilder:
    """Runs the stages for one checkpoint; `run` returns the summary."""

    def __init__(self, checkpoint: str, output_dir: Path, options: InterfaceOptions,
                 adapter: str | None, progress: Progress):
        self.checkpoint = checkpoint
        self.output_dir = output_dir
        self.options = options
        self.adapter = adapter
        self.say = progress
        self.timer = _Timer()

    def run(self) -> dict[str, Any]:
        o = self.options
        viewer = viewer_assets()
        start = time.perf_counter()
        self.say(f"loading {self.checkpoint}")
        policy = load_any(self.checkpoint, adapter=self.adapter)
        policy.eval()
        checkpoint_sha = getattr(policy, "sha256", "") or (
            sha256_file(self.checkpoint) if Path(self.checkpoint).is_file() else "")
        spec = EnvSpec.from_args(policy.args, o.env)
        layer_names = select_layers(policy.layer_names, o)
        self.timer.add("load", start)

        rollouts = self.collect(policy, spec, checkpoint_sha)
        recorded = rollouts.trajectories
        extra = rollouts.observations

        start = time.perf_counter()
        self.say("outputs, advantages and bookmarks")
        outputs = policy_outputs(policy, recorded.observations)
        dones = recorded.dones.astype(np.float32)
        advantages = gae_advantages(outputs.values, recorded.rewards, dones,
                                    gamma=policy.gamma, lam=policy.lam)
        high = find_bookmarks(advantages, dones, sign=1, num=o.bookmarks)
        low = find_bookmarks(advantages, dones, sign=-1, num=o.bookmarks)
        self.timer.add("outputs", start)

        names = list(policy.action_names)
        groups = action_groups(names)
        group_specs = [bundles.group_output(g.name, g.actions, names) for g in groups]
        output_specs = [bundles.value_output()]
        if o.policy:
            output_specs += bundles.action_outputs(names) + group_specs
        title = o.title or Path(self.checkpoint).stem
        model = {"id": o.model_id or _slug(title), "title": title,
                 "architecture": getattr(policy, "architecture", "unknown"),
                 "environment": spec.to_dict(), "environment_description": spec.describe(),
                 "observation_shape": list(policy.observation_shape),
                 "checkpoint": {"name": Path(self.checkpoint).name, "sha256": checkpoint_sha}}
        writer = bundles.BundleWriter(
            self.output_dir / BUNDLE_DIR, model=model, outputs=output_specs,
            action_names=names, action_groups=group_specs,
            presentation=bundles.Presentation(
                video_speed=o.video_speed, attribution_weight=o.attribution_weight,
                scrub_range=tuple(o.scrub_range),
                scrubber_visible_duration=o.scrubber_visible_duration,
                vis_subdiv_mult_default=o.vis_subdiv_mult_default,
                vis_expand_mult_default=o.vis_expand_mult_default),
            single_features=o.single_features, image_effort=o.image_effort)
        for e in range(recorded.num_envs):
            writer.add_trajectory(bundles.TrajectoryData(
                observations=recorded.observations[e], actions=recorded.actions[e],
                rewards=recorded.rewards[e], firsts=recorded.firsts[e], dones=dones[e],
                logits=outputs.logits[e], values=outputs.values[e],
                advantages=advantages[e]))
        writer.set_bookmarks([bundles.BookmarkEntry(b.trajectory, b.step, b.score) for b in high],
                             [bundles.BookmarkEntry(b.trajectory, b.step, b.score) for b in low])
        if extra is not None:
            writer.add_extra_observations(extra)

        if o.input_layer:
            self.input_layer(writer, policy, recorded.observations, output_specs)
        for name in layer_names:
            self.hidden_layer(writer, policy, name, recorded.observations, extra, output_specs)

        start = time.perf_counter()
        index = writer.finish(self.provenance(checkpoint_sha, spec, policy))
        write_page(self.output_dir, title, viewer)
        self.timer.add("write", start)
        sizes = bundles.bundle_sizes(self.output_dir / BUNDLE_DIR,
                                     viewer_bytes=sum(p.stat().st_size for p in viewer))
        return {"output_dir": str(self.output_dir),
                "layers": [la["name"] for la in index["layers"]],
                "outputs": [s.id for s in output_specs], "sizes": sizes,
                "seconds": self.timer.seconds, "fidelity": writer.fidelity_report}

    def collect(self, policy: torch.nn.Module, spec: EnvSpec, checkpoint_sha: str) -> Any:
        o = self.options
        start = time.perf_counter()
        trajectories = TrajectoryConfig(o.num_envs, o.num_steps)
        observations = ObservationConfig(o.obs_num_envs, o.num_obs, o.obs_every)
        key = hashlib.sha256(json.dumps(
            [checkpoint_sha or self.checkpoint, spec.to_dict(), asdict(trajectories),
             asdict(observations), o.seed], sort_keys=True, default=str).encode()).hexdigest()
        path = resolve_cache_dir(o.cache_dir) / "rollouts" / f"{key[:24]}.npz"
        self.say(f"rollouts: {o.num_envs} x {o.num_steps} steps and {o.obs_num_envs} x "
                 f"{o.num_obs} observations, {spec.describe()} (cached in {path.parent})")
        rollouts = load_or_collect(path, policy, spec, trajectories=trajectories,
                                   observations=observations, seed=o.seed,
                                   checkpoint_sha256=checkpoint_sha or None, force=o.resample)
        self.timer.add("rollouts", start)
        return rollouts

    def input_layer(self, writer: bundles.BundleWriter, policy: torch.nn.Module,
                    observations: np.ndarray, outputs: list[bundles.OutputSpec]) -> None:
        """Gradients with respect to the observation: features are its channels."""
        start = time.perf_counter()
        h, w, c = policy.observation_shape
        writer.add_layer(bundles.LayerSpec(INPUT_LAYER, (h, w, c), "gradients", c))
        self.say(f"layer {INPUT_LAYER}: gradients")
        for e in range(len(observations)):
            for spec, attr in self.attribute(policy, observations[e], INPUT_LAYER, outputs):
                self.add_attribution(writer, INPUT_LAYER, e, spec.id, attr,
                                     np.zeros(attr.shape[:-1], np.float32))
        self.timer.add("attribution", start)

    def hidden_layer(self, writer: bundles.BundleWriter, policy: torch.nn.Module, name: str,
                     observations: np.ndarray, extra: np.ndarray,
                     outputs: list[bundles.OutputSpec]) -> None:
        o = self.options
        h, w, c = policy.layer_shapes[name]
        k = min(o.nmf_features, c)
        start = time.perf_counter()
        self.say(f"layer {name}: NMF features on value attribution of {len(extra)} observations")
        nmf = fit_nmf(integrated_gradients(policy, extra, name, "value",
                                           steps=o.nmf_integrate_steps), NMFSettings(k))
        self.timer.add("nmf", start)
        writer.add_layer(bundles.LayerSpec(name, (h, w, c), "attribution", k))

        start = time.perf_counter()
        self.say(f"layer {name}: attribution of {len(observations)} trajectories to "
                 f"{len(outputs)} output(s)")
        multi = MultiPath(nmf, o.max_paths, o.seed) if o.multi_path else None
        for e in range(len(observations)):
            for spec, attr in self.attribute(policy, observations[e], name, outputs, multi):
                features, residual = nmf.reduce_attribution(attr)
                self.add_attribution(writer, name, e, spec.id, features, residual)
        self.timer.add("attribution", start)

        start = time.perf_counter()
        self.say(f"layer {name}: feature visualisation")
        self.features(writer, policy, name, nmf, extra)
        self.timer.add("features", start)

    def add_attribution(self, writer: bundles.BundleWriter, layer: str, trajectory: int,
                        output: str, features: np.ndarray, residual: np.ndarray) -> None:
        """Hand one (layer, trajectory, output) to the writer (a hook for benchmarks)."""
        writer.add_attribution(layer, trajectory, output, features, residual)

    def attribute(self, policy: torch.nn.Module, obs: np.ndarray, layer: str,
                  outputs: list[bundles.OutputSpec], multi: MultiPath | None = None):
        """(output, attribution (T, h, w, c)) for each output, a few outputs at a time so
        that memory stays bounded when every action is attributed."""
        o = self.options
        steps = 1 if layer == INPUT_LAYER else o.integrate_steps
        if multi is not None:
            for spec in outputs:
                target = _target(spec)
                yield spec, integrated_gradients(policy, obs, layer, target, steps,
                                                 multi_path=multi)
            return
        per_chunk = 4
        for first in range(0, len(outputs), per_chunk):
            chunk = outputs[first:first + per_chunk]
            readout = readout_matrix(policy, [_target(s) for s in chunk])
            parts = [batch for _, batch in attribution_batches(policy, obs, layer, readout, steps)]
            everything = np.concatenate(parts, axis=1)
            for i, spec in enumerate(chunk):
                yield spec, everything[i]

    def features(self, writer: bundles.BundleWriter, policy: torch.nn.Module, name: str,
                 nmf: LayerNMF, extra: np.ndarray) -> None:
        o = self.options
        with torch.inference_mode():
            acts = np.concatenate([
                policy.activations(torch.from_numpy(extra[i:i + 256]).float().div_(255),
                                   name).numpy()
                for i in range(0, len(extra), 256)])
        reduced = nmf.transform(acts)
        thumbnails = [feature_thumbnail(reduced[..., f], extra, num_mult=o.thumbnail_num_mult,
                                        expand_mult=o.thumbnail_expand_mult).image
                      for f in range(nmf.n_features)]
        writer.add_legend(name, np.stack(_same_size(thumbnails)))
        for f in range(nmf.n_features):
            grids = [feature_grid(reduced[..., f], s) for s in o.vis_subdiv_mults]
            writer.add_feature_views(name, f, grids, expand_mults=o.vis_expand_mults,
                                     observation_shape=tuple(extra.shape[1:3]))

    def provenance(self, checkpoint_sha: str, spec: EnvSpec, policy: Any) -> dict[str, Any]:
        settings = asdict(self.options)
        settings.pop("cache_dir", None)
        settings.pop("image_effort", None)
        return {
            "checkpoint": {"name": Path(self.checkpoint).name, "sha256": checkpoint_sha},
            "settings": settings,
            "environment": spec.to_dict(),
            "training_args": {k: v for k, v in dict(policy.args).items()
                              if isinstance(v, (str, int, float, bool)) or v is None},
            "gamma": policy.gamma, "lambda": policy.lam,
            "versions": dict(_versions()),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": {k: round(v, 1) for k, v in self.timer.seconds.items()},
        }


def _target(spec: bundles.OutputSpec) -> Any:
    if spec.kind == "value":
        return "value"
    return spec.actions[0] if spec.kind == "action" else list(spec.actions)


def feature_grid(acts: np.ndarray, subdiv_mult: float, top_frac: float = 0.1
                 ) -> bundles.FeatureGrid:
    """The grid of a full feature view (method.md 7) without its image: which extra
    observation each cell shows, how strongly, and the cells' centres. The viewer lays the
    patches out for every expand_mult (as gallery.dataset_examples.feature_view does)."""
    grid, centres = resample_grid(acts, subdiv_mult)
    n, gh, gw = grid.shape
    max_rep = math.ceil(gh * gw / (n * top_frac))
    chosen = assign_with_max_repetition(grid.reshape(n, gh * gw), max_rep=max_rep,
                                        strict=False).reshape(gh, gw)
    cell_acts = grid[chosen, np.arange(gh)[:, None], np.arange(gw)[None, :]]
    return bundles.FeatureGrid(subdiv_mult, chosen, cell_acts, centres[:, 0, 0], centres[0, :, 1],
                               acts.shape[1:3])


def _same_size(images: list[np.ndarray]) -> list[np.ndarray]:
    """Thumbnails cropped to the smallest height and width among them."""
    h = min(i.shape[0] for i in images)
    w = min(i.shape[1] for i in images)
    return [i[:h, :w] for i in images]


def select_layers(offered: Sequence[str], options: InterfaceOptions) -> list[str]:
    """The offered layers, filtered by name substrings, minus the first `discard_first_n`."""
    names = list(offered)
    if options.layers is not None:
        names = [n for n in names if any(s in n for s in options.layers)]
        if not names:
            raise InterfaceError(f"no layer matches {list(options.layers)}; the checkpoint "
                                 f"offers {', '.join(offered)}")
    names = names[options.discard_first_n:]
    if not names and not options.input_layer:
        raise InterfaceError(f"no layer left after discarding the first "
                             f"{options.discard_first_n} of {', '.join(offered)}")
    return names


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
    return "-".join(filter(None, out.split("-"))) or "model"


def _versions() -> Any:
    for name in ("gallery", "torch", "numpy", "scikit-learn", "procgen", "ale-py"):
        try:
            yield name, package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass


# --- the page and the viewer ----------------------------------------------------------------


def viewer_assets() -> list[Path]:
    """The built viewer files inside the package; a clear error if it was never built."""
    root = Path(str(resources.files("gallery"))) / "viewer_dist"
    paths = [root / name for name in VIEWER_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InterfaceError(f"the viewer is not built ({', '.join(missing)} missing in "
                             f"{root}); run `bash scripts/build_viewer.sh` (needs Node.js 20+)")
    return paths


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - interface</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{viewer}/viewer.css">
<style>
body {{ margin: 0; padding: 0.5em 1em; }}
#gallery-from-disk {{ font-family: system-ui, sans-serif; max-width: 40em; }}
</style>
</head>
<body>
<div id="app"><noscript>This interface needs JavaScript.</noscript></div>
<div id="gallery-from-disk" hidden>
<h1>{title}</h1>
<p>This interface was opened from disk, where browsers do not let a page load its data.
View it through any static web server instead, for example:</p>
<pre>cd {folder}
python3 -m http.server 8000</pre>
<p>then open <a href="http://localhost:8000/">http://localhost:8000/</a>.</p>
</div>
<script>
if (location.protocol === "file:") {{
  document.getElementById("app").hidden = true;
  document.getElementById("gallery-from-disk").hidden = false;
}} else {{
  const start = document.createElement("script");
  start.type = "module";
  start.textContent = 'import {{ mountViewer }} from "./{viewer}/viewer.js";' +
    'window.galleryViewer = mountViewer(document.getElementById("app"), ' +
    '{{ bundleUrl: "./{bundle}/bundle.json", syncUrl: true }});';
  document.body.appendChild(start);
}}
</script>
</body>
</html>
"""


def write_page(output_dir: Path, title: str, viewer: Sequence[Path]) -> None:
    """index.html and the viewer's files."""
    target = output_dir / VIEWER_DIR
    target.mkdir(parents=True, exist_ok=True)
    for path in viewer:
        shutil.copyfile(path, target / path.name)
    page = PAGE.format(title=_html_escape(title), viewer=VIEWER_DIR, bundle=BUNDLE_DIR,
                       folder=_html_escape(str(output_dir.resolve())))
    (output_dir / "index.html").write_text(page)


def _html_escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))

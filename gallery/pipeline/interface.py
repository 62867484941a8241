"""`generate_interface`: one checkpoint -> one interactive interface in a folder.

The folder is viewable from any static server:

    DIR/index.html        the page (says how to view it when opened from disk)
    DIR/viewer/           the built viewer (viewer.js, viewer.css), copied from the package
    DIR/bundle/           the data: bundle.json and the files it names (docs/bundle.md)

Stages: load the policy; record trajectories and extra observations (reused from the
cache when nothing changed, `gallery.environments.rollouts.load_or_collect`); outputs, advantages
and
bookmarks (method.md 2); per layer: NMF features fitted on value attribution of the extra
observations (5), attribution of every (trajectory, output) reduced to the features and
written to the bundle as it is computed (4, 6), and the feature visualisation (7).
Numerical work lives in gallery.method.attribution / nmf / advantages / dataset_examples; this
module only sequences it and writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
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

from gallery import bundle as bundles
from gallery.bundle import codec as attribution_codec
from gallery.environments import EnvSpec
from gallery.environments.rollouts import FORMAT_VERSION as ROLLOUTS_FORMAT
from gallery.environments.rollouts import (
    ObservationConfig,
    TrajectoryConfig,
    load_rollouts,
    metadata_path,
    policy_fingerprint,
)
from gallery.environments.rollouts import collect as collect_rollouts
from gallery.errors import GalleryError
from gallery.method.advantages import bookmarks as find_bookmarks
from gallery.method.advantages import gae_advantages, policy_outputs
from gallery.method.attribution import (
    INPUT_LAYER,
    MultiPath,
    action_groups,
    attribution_batches,
    integrated_gradients,
    prepare_observations,
    readout_matrix,
)
from gallery.method.dataset_examples import (
    assign_with_max_repetition,
    feature_thumbnail,
    resample_grid,
)
from gallery.method.nmf import LayerNMF, NMFSettings, fit_nmf
from gallery.models.fetch import resolve_cache_dir, sha256_file
from gallery.models.policy import action_names_in
from gallery.pipeline import distributed
from gallery.pipeline import progress as progress_bars
from gallery.pipeline.distributed import cached_policy
from gallery.pipeline.units import (
    RunSummary,
    StopFlag,
    Unit,
    UnitResult,
    UnitStore,
    current_pool,
    run_units,
    unit_key,
)

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
    rollouts: str | None = None
    """A saved rollouts file (`gallery.environments.rollouts.save_rollouts`: .npz with its .json
    sidecar,
    holding trajectories and extra observations) to show instead of recording new ones, e.g.
    the same frames for every model of a comparison. The trajectory and observation options
    are then those of the file."""
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
                       image_effort: str | None = None, rollouts: str | Path | None = None,
                       device: str | None = None) -> dict[str, Any]:
    """Generate the interface of `checkpoint` (a .jd file, or module:factory with an
    adapter) into `output_dir`; returns a summary (sizes, timings, fidelity checks).

    Options are those of `InterfaceOptions` (given as `config`, or one keyword each, which
    override `config`). The folder is replaced.

    The work is split into units kept in `<cache>/units` (gallery.pipeline.units): a second call
    reuses them, a killed one resumes, and under `mpiexec -n N` (gallery.pipeline.distributed) they
    are spread over the ranks; the bundle's bytes are the same in every case.
    `device`: 'cpu' (default).
    """
    given = {k: v for k, v in locals().items()
             if k in {f.name for f in fields(InterfaceOptions)} and v is not None}
    context = distributed.current()
    builder = interface_builder(checkpoint, output_dir, adapter=adapter, config=config,
                                progress=progress, device=device, **given)
    return builder.run(context)


def interface_builder(checkpoint: str | Path, output_dir: str | Path, *,
                      adapter: str | None = None, config: InterfaceOptions | None = None,
                      progress: Progress | None = None, device: str | None = None,
                      **values: Any) -> InterfaceBuilder:
    """The builder `generate_interface` runs (options as there): `plan().units` lists
    the interface's units, e.g. to pool the units of many models (gallery build)."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        options = replace(config or InterfaceOptions(), **{
            k: (tuple(v) if k == "layers" else str(v) if k == "rollouts" else v)
            for k, v in given.items()})
    except TypeError as err:
        raise InterfaceError(str(err)) from None
    return InterfaceBuilder(str(checkpoint), Path(output_dir), options, adapter,
                            progress or _log_progress,
                            device=check_device(device, distributed.current().local_rank))


def check_device(name: str | None, local_rank: int = 0) -> str:
    """The torch device units run on: 'cpu' (default), 'cuda' (under MPI the GPU
    local_rank % GPUs) or 'cuda:N'; an error for unknown names or invisible GPUs."""
    try:
        return distributed.resolve_device(name, local_rank)
    except GalleryError as err:
        raise InterfaceError(str(err)) from None


def _log_progress(message: str) -> None:
    log.info("%s", message)


# --- the pipeline -------------------------------------------------------------------------
#
# An interface is built from units (gallery.pipeline.units), each persisted in the unit store of the
# cache (`<cache>/units`) as soon as it is finished, so that a killed build resumes where it
# stopped and a build spread over MPI ranks (gallery.pipeline.distributed) gives the same bytes:
#
#   rollouts                          trajectories and extra observations
#   outputs                           logits, values, advantages, bookmarks      <- rollouts
#   nmf <layer>                       value attribution of the extras, NMF fit   <- rollouts
#   attribution <layer> T<e> <chunk>  IG of up to 4 outputs, reduced, encoded    <- nmf
#   features <layer>                  legend thumbnails and feature-view grids   <- nmf
#
# then rank 0 alone assembles the bundle from the store (`InterfaceBuilder.assemble`). A
# unit's batch composition (one trajectory, a fixed chunk of outputs) never depends on the
# number of ranks, so neither do the floating-point results.

UNITS_DIR = "units"
UNIT_VERSION = 1
"""Bump when the computation of any unit changes (it is part of every unit key)."""
OUTPUTS_PER_UNIT = 4
"""Outputs attributed together (one readout batch), as in the single-process pipeline."""


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, start: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class _Plan:
    """The units of one interface and where the assembly finds their results."""

    units: list[Unit]
    rollouts: str
    outputs: str
    nmf: dict[str, str]
    attribution: dict[str, list[list[tuple[list[str], str]]]]
    """layer -> trajectory -> [(output ids, unit key)]."""
    features: dict[str, str]


class InterfaceBuilder:
    """Plans the units of one checkpoint's interface, runs them (here or on MPI ranks),
    assembles the bundle; `run` returns the summary."""

    def __init__(self, checkpoint: str, output_dir: Path, options: InterfaceOptions,
                 adapter: str | None, progress: Progress, device: str = "cpu"):
        self.checkpoint = checkpoint
        self.output_dir = output_dir
        self.options = options
        self.adapter = adapter
        self.say = progress
        self.device = device
        self.timer = _Timer()
        self.store = UnitStore(resolve_cache_dir(options.cache_dir) / UNITS_DIR)
        self.run_summary: RunSummary | None = None
        self._plan: _Plan | None = None

    # --- planning ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the policy (once per process) and everything the plan depends on."""
        o = self.options
        start = time.perf_counter()
        self.say(f"loading {self.checkpoint}")
        policy = cached_policy(self.checkpoint, self.adapter, self.device)
        self.policy = policy
        self.checkpoint_sha = getattr(policy, "sha256", "") or (
            sha256_file(self.checkpoint) if Path(self.checkpoint).is_file() else "")
        self.fingerprint = policy_fingerprint(policy, self.checkpoint_sha or None)
        self.spec = EnvSpec.from_args(policy.args, o.env)
        self.layer_names = select_layers(policy.layer_names, o)
        # the environment a file does not name (SB3 zips) gives the action names; the
        # cached policy stays as loaded (several models may share it)
        names = self.action_names = action_names_in(policy, dict(o.env))
        self.group_specs = [bundles.group_output(g.name, g.actions, names)
                            for g in action_groups(names)]
        self.output_specs = [bundles.value_output()]
        if o.policy:
            self.output_specs += bundles.action_outputs(names) + self.group_specs
        self.timer.add("load", start)

    def plan(self) -> _Plan:
        """The units of this interface, dependencies first."""
        if self._plan is not None:
            return self._plan
        if not hasattr(self, "policy"):
            self.prepare()
        o = self.options
        policy = self.policy
        common = {"checkpoint": self.checkpoint, "adapter": self.adapter,
                  "device": self.device}
        base = {"policy": self.fingerprint, "unit_version": UNIT_VERSION,
                "gallery": _gallery_version()}
        units: list[Unit] = []
        title = o.title or Path(self.checkpoint).stem
        # a subclass that overrides add_attribution (benchmarks) gets the reduced arrays
        keep = type(self).add_attribution is not InterfaceBuilder.add_attribution

        if o.rollouts is not None:
            file_sha = sha256_file(o.rollouts)
            rollouts_key = unit_key("rollouts-file", sha256=file_sha, **base)
            num_envs = _saved_num_envs(o.rollouts)
            task = {"path": str(o.rollouts), "observation_shape": list(
                policy.observation_shape)}
            units.append(Unit(rollouts_key, "rollouts", f"{title}: rollouts (given)", (),
                              ("gallery.pipeline.interface:unit_given_rollouts", task)))
        else:
            trajectories = asdict(TrajectoryConfig(o.num_envs, o.num_steps))
            observations = asdict(ObservationConfig(o.obs_num_envs, o.num_obs, o.obs_every))
            rollouts_key = unit_key("rollouts", env=self.spec.to_dict(),
                                    trajectories=trajectories, observations=observations,
                                    seed=o.seed, rollouts_format=ROLLOUTS_FORMAT, **base)
            num_envs = o.num_envs
            units.append(Unit(rollouts_key, "rollouts", f"{title}: rollouts", (), (
                "gallery.pipeline.interface:unit_rollouts",
                {**common, "env": dict(o.env), "trajectories": trajectories,
                 "observations": observations, "seed": o.seed})))
        outputs_key = unit_key("outputs", rollouts=rollouts_key, bookmarks=o.bookmarks, **base)
        units.append(Unit(outputs_key, "outputs", f"{title}: outputs, advantages, bookmarks",
                          (rollouts_key,), ("gallery.pipeline.interface:unit_outputs", {
                              **common, "rollouts": rollouts_key, "bookmarks": o.bookmarks})))

        chunks = [self.output_specs[i:i + OUTPUTS_PER_UNIT]
                  for i in range(0, len(self.output_specs), OUTPUTS_PER_UNIT)]
        nmf_keys: dict[str, str] = {}
        feature_keys: dict[str, str] = {}
        attribution: dict[str, list[list[tuple[list[str], str]]]] = {}
        layers = ([INPUT_LAYER] if o.input_layer else []) + list(self.layer_names)
        for name in layers:
            nmf_key = None
            if name != INPUT_LAYER:
                c = policy.layer_shapes[name][-1]
                k = min(o.nmf_features, c)
                nmf_key = unit_key("nmf", rollouts=rollouts_key, layer=name, features=k,
                                   steps=o.nmf_integrate_steps, **base)
                nmf_keys[name] = nmf_key
                units.append(Unit(nmf_key, "nmf", f"{title}: NMF {name}", (rollouts_key,), (
                    "gallery.pipeline.interface:unit_nmf",
                    {**common, "rollouts": rollouts_key, "layer": name, "features": k,
                     "steps": o.nmf_integrate_steps})))
            steps = 1 if name == INPUT_LAYER else o.integrate_steps
            multi = o.multi_path and name != INPUT_LAYER
            per_trajectory = []
            for e in range(num_envs):
                row = []
                for chunk in chunks:
                    ids = [s.id for s in chunk]
                    targets = [_target(s) for s in chunk]
                    key = unit_key("attribution", rollouts=rollouts_key, nmf=nmf_key,
                                   layer=name, trajectory=e, targets=targets, steps=steps,
                                   multi_path=multi, max_paths=o.max_paths if multi else None,
                                   path_seed=o.seed if multi else None,
                                   single_features=o.single_features,
                                   codec=attribution_codec.CODEC_VERSION,
                                   **({"keep_reduced": True} if keep else {}), **base)
                    deps = (rollouts_key,) + ((nmf_key,) if nmf_key else ())
                    units.append(Unit(key, "attribution",
                                      f"{title}: attribution {name} T{e} {ids[0]}..", deps, (
                                          "gallery.pipeline.interface:unit_attribution",
                                          {**common, "rollouts": rollouts_key, "nmf": nmf_key,
                                           "layer": name, "trajectory": e,
                                           "targets": targets, "steps": steps,
                                           "multi_path": multi, "max_paths": o.max_paths,
                                           "seed": o.seed,
                                           "single_features": o.single_features,
                                           "keep_reduced": keep})))
                    row.append((ids, key))
                per_trajectory.append(row)
            attribution[name] = per_trajectory
            if nmf_key is not None:
                feature_settings = {"subdiv_mults": list(o.vis_subdiv_mults),
                                    "num_mult": o.thumbnail_num_mult,
                                    "expand_mult": o.thumbnail_expand_mult}
                feature_key = unit_key("features", rollouts=rollouts_key, nmf=nmf_key,
                                       layer=name, **feature_settings, **base)
                feature_keys[name] = feature_key
                units.append(Unit(feature_key, "features", f"{title}: features {name}",
                                  (rollouts_key, nmf_key), (
                                      "gallery.pipeline.interface:unit_features",
                                      {**common, "rollouts": rollouts_key, "nmf": nmf_key,
                                       "layer": name, **feature_settings})))
        # the order of the list is a valid order of work: dependencies first, and the
        # expensive attribution after every layer's NMF so that all ranks find work early
        order = {"rollouts": 0, "outputs": 1, "nmf": 1, "features": 2, "attribution": 3}
        units.sort(key=lambda u: order[u.kind])
        self._plan = _Plan(units, rollouts_key, outputs_key, nmf_keys, attribution,
                           feature_keys)
        return self._plan

    # --- running ----------------------------------------------------------------------
    def run(self, context: distributed.Context | None = None) -> dict[str, Any]:
        """Plan, compute what the store lacks (on the MPI pool when there is one), then
        assemble. Raises units.Interrupted on SIGINT/SIGTERM (finished units are kept)."""
        context = context or distributed.current()
        plan = self.plan()
        if self.options.resample:
            for unit in plan.units:
                self.store.delete(unit.key)
        self.compute(plan.units, context)
        return self.assemble()

    def compute(self, units: list[Unit], context: distributed.Context) -> RunSummary:
        start = time.perf_counter()
        executor, workers = context.executor, context.workers
        if executor is not None:
            where = f"{context.size} MPI ranks"
        else:
            executor, workers = current_pool()
            where = f"this process and {workers} worker(s)" if workers else "this process"
        self.say(f"{len(units)} units ({', '.join(_count_kinds(units))}) on {where}; "
                 f"store {self.store.root}")
        stages = _UnitStages(units, self.store) if progress_bars.active() else None

        def progress(unit: Unit, computed: bool, done: int, total: int) -> None:
            if stages is not None:
                stages.finished(unit)
            else:
                self.say(f"[{done}/{total}] {unit.label}{'' if computed else ' (reused)'}")

        try:
            with StopFlag().installed() as stop:
                summary = run_units(units, self.store, executor=executor, workers=workers,
                                    progress=progress, stop=stop,
                                    started=stages.started if stages else None)
        finally:
            if stages is not None:
                stages.close()
        self.run_summary = summary
        self.timer.seconds.update(summary.seconds)  # compute seconds of the units run now
        self.say(summary.describe())
        self.timer.add("compute", start)
        return summary

    # --- assembling ------------------------------------------------------------------
    def assemble(self) -> dict[str, Any]:
        """Write the bundle and the page from the stored units (rank 0)."""
        o = self.options
        plan = self.plan()
        viewer = viewer_assets()
        start = time.perf_counter()
        self.say(f"writing {self.output_dir}")
        stage_seconds: dict[str, float] = {}

        def get(key: str, kind: str) -> UnitResult:
            found = self.store.load(key)
            if found is None:
                raise InterfaceError(f"unit {key[:12]} ({kind}) is missing from "
                                     f"{self.store.root}; run the build again")
            stage_seconds[kind] = stage_seconds.get(kind, 0.0) + found.seconds
            return found

        rollouts = _rollout_arrays(get(plan.rollouts, "rollouts"))
        observations = rollouts["trajectories.observations"]
        extra = rollouts.get("observations")
        outputs = get(plan.outputs, "outputs")
        names = self.action_names
        title = o.title or Path(self.checkpoint).stem
        model = {"id": o.model_id or _slug(title), "title": title,
                 "architecture": getattr(self.policy, "architecture", "unknown"),
                 "environment": self.spec.to_dict(),
                 "environment_description": self.spec.describe(),
                 "observation_shape": list(self.policy.observation_shape),
                 "checkpoint": {"name": Path(self.checkpoint).name,
                                "sha256": self.checkpoint_sha}}
        writer = bundles.BundleWriter(
            self.output_dir / BUNDLE_DIR, model=model, outputs=self.output_specs,
            action_names=names, action_groups=self.group_specs,
            presentation=bundles.Presentation(
                video_speed=o.video_speed, attribution_weight=o.attribution_weight,
                scrub_range=tuple(o.scrub_range),
                scrubber_visible_duration=o.scrubber_visible_duration,
                vis_subdiv_mult_default=o.vis_subdiv_mult_default,
                vis_expand_mult_default=o.vis_expand_mult_default),
            single_features=o.single_features, image_effort=o.image_effort)
        a = outputs.arrays
        writing = progress_bars.current().stage(
            "writing", len(observations) + (extra is not None) + len(plan.features)
            + sum(len(row) for rows in plan.attribution.values() for row in rows) + 1,
            "parts")
        for e in range(len(observations)):
            writer.add_trajectory(bundles.TrajectoryData(
                observations=observations[e], actions=rollouts["trajectories.actions"][e],
                rewards=rollouts["trajectories.rewards"][e],
                firsts=rollouts["trajectories.firsts"][e], dones=a["dones"][e],
                logits=a["logits"][e], values=a["values"][e], advantages=a["advantages"][e]))
            writing.update()
        writer.set_bookmarks(
            [bundles.BookmarkEntry(*b) for b in outputs.value["high"]],
            [bundles.BookmarkEntry(*b) for b in outputs.value["low"]])
        if extra is not None:
            writer.add_extra_observations(extra)
            writing.update()
        for name, per_trajectory in plan.attribution.items():
            if name == INPUT_LAYER:
                h, w, c = self.policy.observation_shape
                writer.add_layer(bundles.LayerSpec(INPUT_LAYER, (h, w, c), "gradients", c))
            else:
                h, w, c = self.policy.layer_shapes[name]
                writer.add_layer(bundles.LayerSpec(name, (h, w, c), "attribution",
                                                   min(o.nmf_features, c)))
            for e, row in enumerate(per_trajectory):
                for ids, key in row:
                    encoded = get(key, "attribution").arrays
                    for i, output in enumerate(ids):
                        if f"features{i}" in encoded:  # a subclass hooks the arrays
                            self.add_attribution(writer, name, e, output,
                                                 encoded[f"features{i}"],
                                                 encoded[f"residual{i}"])
                        else:
                            writer.add_encoded_attribution(name, e, output,
                                                           encoded[f"gatr{i}"].tobytes())
                    writing.update()
            if name in plan.features:
                self.add_features(writer, name, get(plan.features[name], "features"),
                                  observation_shape=tuple(extra.shape[1:3]))
                writing.update()
        for kind, seconds in stage_seconds.items():
            self.timer.seconds.setdefault(kind, seconds)
        index = writer.finish(self.provenance(self.checkpoint_sha, self.spec, self.policy))
        write_page(self.output_dir, title, viewer)
        writing.update()
        writing.close()
        self.timer.add("write", start)
        sizes = bundles.bundle_sizes(self.output_dir / BUNDLE_DIR,
                                     viewer_bytes=sum(p.stat().st_size for p in viewer))
        return {"output_dir": str(self.output_dir),
                "layers": [la["name"] for la in index["layers"]],
                "outputs": [s.id for s in self.output_specs], "sizes": sizes,
                "seconds": self.timer.seconds, "fidelity": writer.fidelity_report,
                "units": None if self.run_summary is None else {
                    "total": self.run_summary.total, "computed": self.run_summary.computed,
                    "reused": self.run_summary.reused + self.run_summary.waited}}

    def add_attribution(self, writer: bundles.BundleWriter, layer: str, trajectory: int,
                        output: str, features: np.ndarray, residual: np.ndarray) -> None:
        """A hook for benchmarks: overriding it makes the attribution units keep the
        reduced arrays (features, residual), handed here at assembly; the default encodes
        them as the units do."""
        writer.add_attribution(layer, trajectory, output, features, residual)

    def add_features(self, writer: bundles.BundleWriter, name: str, stored: UnitResult,
                     observation_shape: tuple[int, int]) -> None:
        o = self.options
        arrays = stored.arrays
        writer.add_legend(name, arrays["thumbnails"])
        h, w = stored.value["layer_hw"]
        for f in range(stored.value["features"]):
            grids = [bundles.FeatureGrid(
                float(s), arrays[f"f{f}s{i}_indices"], arrays[f"f{f}s{i}_acts"],
                arrays[f"f{f}s{i}_rows"], arrays[f"f{f}s{i}_cols"], (h, w))
                for i, s in enumerate(o.vis_subdiv_mults)]
            writer.add_feature_views(name, f, grids, expand_mults=o.vis_expand_mults,
                                     observation_shape=observation_shape)

    def provenance(self, checkpoint_sha: str, spec: EnvSpec, policy: Any) -> dict[str, Any]:
        """What the bundle was made from. With SOURCE_DATE_EPOCH set (reproducible builds),
        `created` is that date and the timings, which differ from run to run, are left out."""
        settings = asdict(self.options)
        settings.pop("cache_dir", None)
        settings.pop("image_effort", None)
        if settings.get("rollouts"):  # a local path: keep only the file's name
            settings["rollouts"] = Path(settings["rollouts"]).name
        out = {
            "checkpoint": {"name": Path(self.checkpoint).name, "sha256": checkpoint_sha},
            "settings": settings,
            "environment": spec.to_dict(),
            "training_args": {k: v for k, v in dict(policy.args).items()
                              if isinstance(v, (str, int, float, bool)) or v is None},
            "gamma": policy.gamma, "lambda": policy.lam,
            "versions": dict(_versions()),
        }
        when = source_date()
        if when is not None:
            out["created"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            out["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            out["seconds"] = {k: round(v, 1) for k, v in self.timer.seconds.items()}
        return out


def source_date() -> datetime | None:
    """SOURCE_DATE_EPOCH as a UTC date (reproducible builds: the date a build states), or
    None when it is not set."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return None
    try:
        return datetime.fromtimestamp(int(epoch), timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise InterfaceError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, not "
                             f"{epoch!r}") from None


class _UnitStages:
    """A progress stage per kind of unit (rollouts, NMF, ...), opened when its first unit
    starts; units already in the store are not counted."""

    NAMES = {"rollouts": "rollouts", "outputs": "outputs", "nmf": "NMF",
             "features": "feature views", "attribution": "attribution"}

    def __init__(self, units: Sequence[Unit], store: UnitStore):
        self.totals: dict[str, int] = {}
        for u in units:
            if not store.has(u.key):
                self.totals[u.kind] = self.totals.get(u.kind, 0) + 1
        self.open: dict[str, Any] = {}

    def stage(self, kind: str) -> Any:
        found = self.open.get(kind)
        if found is None:
            found = self.open[kind] = progress_bars.current().stage(
                self.NAMES.get(kind, kind), self.totals.get(kind), "units")
        return found

    def started(self, unit: Unit) -> None:
        self.stage(unit.kind).begin(unit.label)

    def finished(self, unit: Unit) -> None:
        stage = self.stage(unit.kind)
        stage.end(unit.label)
        stage.update()
        if stage.total is not None and stage.done >= stage.total:
            stage.close()

    def close(self) -> None:
        for stage in self.open.values():
            stage.close()


def _count_kinds(units: Sequence[Unit]) -> list[str]:
    counts: dict[str, int] = {}
    for u in units:
        counts[u.kind] = counts.get(u.kind, 0) + 1
    return [f"{n} {k}" for k, n in counts.items()]


def _gallery_version() -> str:
    from gallery import __version__

    return __version__


def _saved_num_envs(path: str) -> int:
    meta = json.loads(metadata_path(path).read_text()) if metadata_path(path).is_file() else {}
    recorded = (meta.get("trajectories") or {}).get("num_envs")
    if isinstance(recorded, int):
        return recorded
    return int(load_rollouts(path).trajectories.num_envs)


# --- the units' work (run in any process: arguments are plain values) -------------------

_ROLLOUTS_CACHE: dict[str, dict[str, np.ndarray]] = {}


def _rollout_arrays(stored: UnitResult) -> dict[str, np.ndarray]:
    return stored.arrays


def _stored_rollouts(store: UnitStore, key: str) -> dict[str, np.ndarray]:
    """The rollouts of `key`, read from the store once per process (the last two kept)."""
    arrays = _ROLLOUTS_CACHE.get(key)
    if arrays is None:
        found = store.load(key)
        if found is None:
            raise InterfaceError(f"rollouts unit {key[:12]} is missing from {store.root}")
        arrays = found.arrays
        while len(_ROLLOUTS_CACHE) >= 2:
            _ROLLOUTS_CACHE.pop(next(iter(_ROLLOUTS_CACHE)))
        _ROLLOUTS_CACHE[key] = arrays
    return arrays


def _stored_nmf(store: UnitStore, key: str, device: str = "cpu") -> LayerNMF:
    found = store.load(key)
    if found is None:
        raise InterfaceError(f"NMF unit {key[:12]} is missing from {store.root}")
    return LayerNMF(found.arrays["components"], settings=NMFSettings(found.value["features"]),
                    n_iter=found.value["n_iter"], converged=found.value["converged"],
                    device=device)


def unit_rollouts(store: UnitStore, *, checkpoint: str, adapter: str | None, device: str,
                  env: dict[str, Any], trajectories: dict[str, Any],
                  observations: dict[str, Any], seed: int) -> UnitResult:
    policy = cached_policy(checkpoint, adapter, device)
    spec = EnvSpec.from_args(policy.args, env)
    recorded = collect_rollouts(policy, spec, TrajectoryConfig(**trajectories),
                                ObservationConfig(**observations), seed,
                                progress_bars.counter("rollouts", {
                                    "trajectories": "steps", "observations": "policy steps"}))
    arrays = {f"trajectories.{k}": v for k, v in recorded.trajectories.arrays().items()
              if k != "observations_full"}
    if recorded.observations is not None:
        arrays["observations"] = recorded.observations
    return UnitResult(arrays, {"num_envs": recorded.trajectories.num_envs})


def unit_given_rollouts(store: UnitStore, *, path: str,
                        observation_shape: list[int]) -> UnitResult:
    recorded = load_rollouts(path)
    shape = tuple(recorded.trajectories.observations.shape[2:])
    if shape != tuple(observation_shape) or recorded.observations is None:
        raise InterfaceError(
            f"{path}: its observations are {shape}, the checkpoint takes "
            f"{tuple(observation_shape)}; the file must also hold extra "
            "observations (record it with gallery.environments.rollouts.load_or_collect)")
    arrays = {f"trajectories.{k}": v for k, v in recorded.trajectories.arrays().items()
              if k != "observations_full"}
    arrays["observations"] = recorded.observations
    return UnitResult(arrays, {"num_envs": recorded.trajectories.num_envs})


def unit_outputs(store: UnitStore, *, checkpoint: str, adapter: str | None, device: str,
                 rollouts: str, bookmarks: int) -> UnitResult:
    policy = cached_policy(checkpoint, adapter, device)
    recorded = _stored_rollouts(store, rollouts)
    outputs = policy_outputs(policy, recorded["trajectories.observations"])
    dones = recorded["trajectories.dones"].astype(np.float32)
    advantages = gae_advantages(outputs.values, recorded["trajectories.rewards"], dones,
                                gamma=policy.gamma, lam=policy.lam)
    high = find_bookmarks(advantages, dones, sign=1, num=bookmarks)
    low = find_bookmarks(advantages, dones, sign=-1, num=bookmarks)
    return UnitResult(
        {"logits": np.asarray(outputs.logits), "values": np.asarray(outputs.values),
         "advantages": np.asarray(advantages), "dones": dones},
        {"high": [[int(b.trajectory), int(b.step), float(b.score)] for b in high],
         "low": [[int(b.trajectory), int(b.step), float(b.score)] for b in low]})


def unit_nmf(store: UnitStore, *, checkpoint: str, adapter: str | None, device: str,
             rollouts: str, layer: str, features: int, steps: int) -> UnitResult:
    policy = cached_policy(checkpoint, adapter, device)
    extra = _stored_rollouts(store, rollouts)["observations"]
    nmf = fit_nmf(integrated_gradients(policy, extra, layer, "value", steps=steps),
                  NMFSettings(features))
    return UnitResult({"components": nmf.components},
                      {"features": features, "n_iter": int(nmf.n_iter),
                       "converged": bool(nmf.converged)})


def unit_attribution(store: UnitStore, *, checkpoint: str, adapter: str | None, device: str,
                     rollouts: str, nmf: str | None, layer: str, trajectory: int,
                     targets: list[Any], steps: int, multi_path: bool,
                     max_paths: int | None, seed: int, single_features: bool,
                     keep_reduced: bool = False) -> UnitResult:
    """Attribution of one trajectory to a chunk of outputs, reduced to the layer's features
    and encoded (attribution_codec): the files as they go into the bundle."""
    policy = cached_policy(checkpoint, adapter, device)
    obs = _stored_rollouts(store, rollouts)["trajectories.observations"][trajectory]
    layer_nmf = _stored_nmf(store, nmf, device) if nmf is not None else None
    targets = [t if not isinstance(t, list) else list(t) for t in targets]
    if multi_path and layer_nmf is not None:
        multi = MultiPath(layer_nmf, max_paths, seed)
        attributions = [integrated_gradients(policy, obs, layer, t, steps, multi_path=multi)
                        for t in targets]
    else:
        readout = readout_matrix(policy, targets)
        parts = [batch for _, batch in attribution_batches(policy, obs, layer, readout, steps)]
        everything = np.concatenate(parts, axis=1)
        attributions = [everything[i] for i in range(len(targets))]
    arrays = {}
    for i, attr in enumerate(attributions):
        if layer_nmf is None:
            features, residual = attr, np.zeros(attr.shape[:-1], np.float32)
        else:
            features, residual = layer_nmf.reduce_attribution(attr)
        data = attribution_codec.encode(features, residual, single_features=single_features,
                                        target=attribution_codec.FidelityTarget())
        arrays[f"gatr{i}"] = np.frombuffer(data, dtype=np.uint8)
        if keep_reduced:
            arrays[f"features{i}"] = np.asarray(features, np.float32)
            arrays[f"residual{i}"] = np.asarray(residual, np.float32)
    return UnitResult(arrays, {"outputs": len(targets)})


def unit_features(store: UnitStore, *, checkpoint: str, adapter: str | None, device: str,
                  rollouts: str, nmf: str, layer: str, subdiv_mults: list[float],
                  num_mult: int, expand_mult: float) -> UnitResult:
    """Legend thumbnails and the feature-view grids of one layer (method.md 7)."""
    policy = cached_policy(checkpoint, adapter, device)
    extra = _stored_rollouts(store, rollouts)["observations"]
    layer_nmf = _stored_nmf(store, nmf, device)
    with torch.inference_mode():
        acts = np.concatenate([
            policy.activations(prepare_observations(policy, extra[i:i + 256]), layer)
            .cpu().numpy() for i in range(0, len(extra), 256)])
    reduced = layer_nmf.transform(acts)
    thumbnails = [feature_thumbnail(reduced[..., f], extra, num_mult=num_mult,
                                    expand_mult=expand_mult).image
                  for f in range(layer_nmf.n_features)]
    arrays = {"thumbnails": np.stack(_same_size(thumbnails))}
    layer_hw = [int(x) for x in reduced.shape[1:3]]
    for f in range(layer_nmf.n_features):
        for i, s in enumerate(subdiv_mults):
            g = feature_grid(reduced[..., f], s)
            arrays[f"f{f}s{i}_indices"] = np.asarray(g.indices)
            arrays[f"f{f}s{i}_acts"] = np.asarray(g.acts)
            arrays[f"f{f}s{i}_rows"] = np.asarray(g.centre_rows)
            arrays[f"f{f}s{i}_cols"] = np.asarray(g.centre_cols)
    return UnitResult(arrays, {"features": layer_nmf.n_features, "layer_hw": layer_hw})


def _target(spec: bundles.OutputSpec) -> Any:
    if spec.kind == "value":
        return "value"
    return spec.actions[0] if spec.kind == "action" else list(spec.actions)


def feature_grid(acts: np.ndarray, subdiv_mult: float, top_frac: float = 0.1
                 ) -> bundles.FeatureGrid:
    """The grid of a full feature view (method.md 7) without its image: which extra
    observation each cell shows, how strongly, and the cells' centres. The viewer lays the
    patches out for every expand_mult (as gallery.method.dataset_examples.feature_view does)."""
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
View it through any static web server instead, for example, in the folder that holds this
page:</p>
<pre>cd <span id="gallery-folder">FOLDER</span>
python3 -m http.server 8000</pre>
<p>then open <a href="http://localhost:8000/">http://localhost:8000/</a>.</p>
</div>
<script>
if (location.protocol === "file:") {{
  document.getElementById("app").hidden = true;
  document.getElementById("gallery-from-disk").hidden = false;
  // the folder as this browser sees it: the page itself holds no path of the machine
  // that built it
  document.getElementById("gallery-folder").textContent =
    decodeURIComponent(location.pathname.replace(/[^/]*$/, ""));
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
    page = PAGE.format(title=_html_escape(title), viewer=VIEWER_DIR, bundle=BUNDLE_DIR)
    (output_dir / "index.html").write_text(page)


def _html_escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))

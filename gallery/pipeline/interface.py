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
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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
    Trajectories,
    TrajectoryConfig,
    collect_observations,
    collect_trajectories,
    load_rollouts,
    metadata_path,
    policy_fingerprint,
)
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
    FeatureVisualisationError,
    feature_thumbnail,
    grid_choices,
    resample_grid,
)
from gallery.method.nmf import LayerNMF, NMFSettings, fit_nmf
from gallery.models.fetch import resolve_cache_dir, sha256_file
from gallery.models.policy import action_names_in
from gallery.pipeline import distributed
from gallery.pipeline import progress as progress_bars
from gallery.pipeline.distributed import cached_policy
from gallery.pipeline.options import (
    AttributionOptions,
    InterfaceOptions,
    LayerSelection,
    OptionsError,
    from_flags,
    validate,
)
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


# --- the public entry point -------------------------------------------------------------


def generate_interface(checkpoint: str | Path | None, output_dir: str | Path,
                       options: InterfaceOptions | Mapping[str, Any] | None = None,
                       **arguments: Any) -> dict[str, Any]:
    """Generate the interface of `checkpoint` (an rl-clarity checkpoint, a Stable-Baselines3
    zip, or the weights an adapter reads) into `output_dir`; returns a summary (sizes,
    timings, fidelity checks). The folder is replaced. Options and arguments as
    `interface_builder` takes them.

    The work is split into units kept in `<cache>/units` (gallery.pipeline.units): a second
    call reuses them, a killed one resumes, and under `mpiexec -n N`
    (gallery.pipeline.distributed) they are spread over the ranks; the bundle's bytes are
    the same in every case.
    """
    builder = interface_builder(checkpoint, output_dir, options, **arguments)
    return builder.run(distributed.current())


def interface_builder(checkpoint: str | Path | None, output_dir: str | Path,
                      options: InterfaceOptions | Mapping[str, Any] | None = None, *,
                      adapter: str | None = None, env: Mapping[str, Any] | None = None,
                      title: str | None = None, model_id: str | None = None,
                      rollouts: str | Path | InterfaceBuilder | None = None,
                      cache_dir: str | Path | None = None, resample: bool = False,
                      device: str | None = None, progress: Progress | None = None,
                      **flags: Any) -> InterfaceBuilder:
    """The builder of an interface (`generate_interface` runs it): `plan().units` lists
    its units, e.g. to pool the units of many models (gallery build).

    `options`: an `InterfaceOptions` (gallery.pipeline.options), or its nested values as a
    manifest's `defaults` has them; keyword options named as `gallery interface`'s flags
    (`num_envs=2`, `policy=True`, `nmf_features=4`, `layers=["2b"]`, ...) override it.
    `adapter`: `module:factory` reading the checkpoint (docs/adapters.md). `env`: the
    environment where the file does not name it, or overrides of its options. `title` and
    `model_id`: the page's title and the id in deep links. `rollouts`: trajectories to show
    instead of recording new ones (the same frames for every model of a comparison): a
    saved rollouts file, or another interface's builder, whose rollouts units this
    interface's units then depend on (so that both plans can run in one pool).
    `cache_dir`: where units are kept (default: $GALLERY_CACHE or the user cache folder);
    `resample`: compute every unit again. `device`: 'cpu' (default), 'cuda' or 'cuda:N'.
    """
    try:
        if options is not None and not isinstance(options, InterfaceOptions):
            options = validate(options)
        options = from_flags(flags, options)
    except OptionsError as err:
        raise InterfaceError(str(err)) from None
    if env is not None and not isinstance(env, Mapping):
        raise InterfaceError(f"env must be a mapping of environment options, not {env!r}")
    if checkpoint is None and adapter is None:
        raise InterfaceError("give a checkpoint, or an adapter that builds its network")
    return InterfaceBuilder(
        None if checkpoint is None else str(checkpoint), Path(output_dir), options,
        adapter=adapter, env=dict(env or {}),
        title=title, model_id=model_id,
        rollouts=rollouts if rollouts is None or isinstance(rollouts, InterfaceBuilder)
        else str(rollouts),
        cache_dir=cache_dir, resample=resample, progress=progress or _log_progress,
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
UNIT_VERSION = 3
"""Bump when the computation of any unit changes (it is part of every unit key)."""
OUTPUTS_PER_UNIT = 4
"""Outputs attributed together (one readout batch), as in the single-process pipeline."""
ENVS_PER_OBSERVATION_UNIT = 8
"""Environments whose extra observations one unit collects (each group with its own seeds),
so that the collection, the longest unit of an interface, spreads over the cores."""


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
    """The unit of the trajectories."""
    observations: list[str]
    """The units of the extra observations, in order (a given file's: its one unit)."""
    outputs: str
    nmf: dict[str, str]
    attribution: dict[str, list[list[tuple[list[str], str]]]]
    """layer -> trajectory -> [(output ids, unit key)]."""
    features: dict[str, str]
    frames: list[str]
    """Per trajectory, the unit holding its frame atlases."""
    extra_images: str | None
    """The unit holding the atlases of the extra observations the feature views show."""


class InterfaceBuilder:
    """Plans the units of one checkpoint's interface, runs them (here or on MPI ranks),
    assembles the bundle; `run` returns the summary."""

    def __init__(self, checkpoint: str | None, output_dir: Path, options: InterfaceOptions, *,
                 adapter: str | None = None, env: dict[str, Any] | None = None,
                 title: str | None = None, model_id: str | None = None,
                 rollouts: str | InterfaceBuilder | None = None,
                 cache_dir: str | Path | None = None, resample: bool = False,
                 progress: Progress = lambda message: None,
                 device: str = "cpu"):
        self.checkpoint = checkpoint
        # what the page names as the source: the file, or the adapter building the network
        self.source_name = Path(checkpoint).name if checkpoint else str(adapter)
        self.output_dir = output_dir
        self.options = options
        self.adapter = adapter
        self.env = env or {}
        self.title = title or (Path(checkpoint).stem if checkpoint else str(adapter))
        self.model_id = model_id or _slug(self.title)
        self.rollouts = rollouts
        self.resample = resample
        self.say = progress
        self.device = device
        self.timer = _Timer()
        self.store = UnitStore(resolve_cache_dir(cache_dir) / UNITS_DIR)
        self.run_summary: RunSummary | None = None
        self._plan: _Plan | None = None

    # --- planning ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the policy (once per process) and everything the plan depends on."""
        o = self.options
        start = time.perf_counter()
        self.say(f"loading {self.checkpoint or self.adapter}")
        policy = cached_policy(self.checkpoint, self.adapter, self.device)
        self.policy = policy
        self.checkpoint_sha = getattr(policy, "sha256", "") or (
            sha256_file(self.checkpoint) if self.checkpoint and Path(self.checkpoint).is_file()
            else "")
        self.fingerprint = policy_fingerprint(policy, self.checkpoint_sha or None)
        self.spec = EnvSpec.from_args(policy.args, self.env)
        self.layer_names = select_layers(policy.layer_names, o.layers)
        self.policy_layers = policy_layers(
            ([INPUT_LAYER] if o.layers.input_layer else []) + self.layer_names, o.attribution)
        # the environment a file does not name (SB3 zips) gives the action names; the
        # cached policy stays as loaded (several models may share it)
        names = self.action_names = action_names_in(policy, self.env)
        self.group_specs = [bundles.group_output(g.name, g.actions, names)
                            for g in action_groups(names)]
        self.output_specs = [bundles.value_output()]
        if self.policy_layers:
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
        title = self.title
        t = o.trajectories

        if isinstance(self.rollouts, InterfaceBuilder):  # another interface's trajectories
            source, given = self.rollouts.plan(), self.rollouts.policy.observation_shape
            if tuple(given) != tuple(policy.observation_shape):
                raise InterfaceError(
                    f"{self.rollouts.title}'s observations are {tuple(given)}, {title} "
                    f"takes {tuple(policy.observation_shape)}: they cannot share trajectories")
            rollouts_key, num_envs = source.rollouts, len(source.frames)
            observation_keys = source.observations
            units += [u for u in source.units if u.key in {rollouts_key, *observation_keys}]
        elif self.rollouts is not None:
            file_sha = sha256_file(self.rollouts)
            rollouts_key = unit_key("rollouts-file", sha256=file_sha, **base)
            num_envs = _saved_num_envs(self.rollouts)
            task = {"path": self.rollouts, "observation_shape": list(
                policy.observation_shape)}
            units.append(Unit(rollouts_key, "rollouts", f"{title}: rollouts (given)", (),
                              (unit_given_rollouts, task)))
            observation_keys = [rollouts_key]  # the file holds both
        else:
            trajectories = asdict(TrajectoryConfig(t.num_envs, t.num_steps))
            rollouts_key = unit_key("rollouts", env=self.spec.to_dict(),
                                    trajectories=trajectories, seed=t.seed,
                                    rollouts_format=ROLLOUTS_FORMAT, **base)
            num_envs = t.num_envs
            units.append(Unit(rollouts_key, "rollouts", f"{title}: trajectories", (), (
                unit_rollouts, {**common, "env": self.env, "trajectories": trajectories,
                                "seed": t.seed})))
            # the extra observations, in groups of environments collected at once
            observation_keys = []
            x = o.observations
            for group, start in enumerate(range(0, x.num_envs, ENVS_PER_OBSERVATION_UNIT)):
                config = asdict(ObservationConfig(
                    min(ENVS_PER_OBSERVATION_UNIT, x.num_envs - start), x.num_obs,
                    x.obs_every))
                key = unit_key("observations", env=self.spec.to_dict(), observations=config,
                               group=group, seed=t.seed, rollouts_format=ROLLOUTS_FORMAT,
                               **base)
                observation_keys.append(key)
                units.append(Unit(key, "rollouts", f"{title}: observations {group}", (), (
                    unit_observations, {**common, "env": self.env, "observations": config,
                                        "group": group, "seed": t.seed})))
        outputs_key = unit_key("outputs", rollouts=rollouts_key, bookmarks=t.bookmarks, **base)
        units.append(Unit(outputs_key, "outputs", f"{title}: outputs, advantages, bookmarks",
                          (rollouts_key,), (unit_outputs, {
                              **common, "rollouts": rollouts_key, "bookmarks": t.bookmarks})))

        # the frames' images, encoded beside the analysis (they need only the rollouts, and
        # a comparison showing the same trajectories reuses them)
        frame_keys = []
        for e in range(num_envs):
            key = unit_key("frames", rollouts=rollouts_key, trajectory=e,
                           effort=o.presentation.image_effort, unit_version=UNIT_VERSION,
                           gallery=base["gallery"])
            frame_keys.append(key)
            units.append(Unit(key, "frames", f"{title}: frames T{e}", (rollouts_key,), (
                unit_frames, {"rollouts": rollouts_key, "trajectory": e,
                              "effort": o.presentation.image_effort})))
        value_only = [s for s in self.output_specs if s.kind == "value"]
        nmf_keys: dict[str, str] = {}
        feature_keys: dict[str, str] = {}
        attribution: dict[str, list[list[tuple[list[str], str]]]] = {}
        a, v = o.attribution, o.visualisation
        layers = ([INPUT_LAYER] if o.layers.input_layer else []) + list(self.layer_names)
        for name in layers:
            nmf_key = None
            if name != INPUT_LAYER:
                c = policy.layer_shapes[name][-1]
                k = min(o.nmf.features, c)
                nmf_key = unit_key("nmf", observations=observation_keys, layer=name,
                                   features=k, steps=o.nmf.integrate_steps, **base)
                nmf_keys[name] = nmf_key
                units.append(Unit(nmf_key, "nmf", f"{title}: NMF {name}",
                                  tuple(observation_keys), (
                    unit_nmf, {**common, "observations": observation_keys, "layer": name,
                               "features": k, "steps": o.nmf.integrate_steps})))
            steps = 1 if name == INPUT_LAYER else a.integrate_steps
            multi = a.multi_path and name != INPUT_LAYER
            specs = self.output_specs if name in self.policy_layers else value_only
            chunks = [specs[i:i + OUTPUTS_PER_UNIT] for i in range(0, len(specs),
                                                                   OUTPUTS_PER_UNIT)]
            per_trajectory = []
            for e in range(num_envs):
                row = []
                for chunk in chunks:
                    ids = [s.id for s in chunk]
                    targets = [_target(s) for s in chunk]
                    key = unit_key("attribution", rollouts=rollouts_key, nmf=nmf_key,
                                   layer=name, trajectory=e, targets=targets, steps=steps,
                                   multi_path=multi, max_paths=a.max_paths if multi else None,
                                   path_seed=t.seed if multi else None,
                                   single_features=a.single_features,
                                   codec=attribution_codec.CODEC_VERSION,
                                   **base)
                    deps = (rollouts_key,) + ((nmf_key,) if nmf_key else ())
                    units.append(Unit(key, "attribution",
                                      f"{title}: attribution {name} T{e} {ids[0]}..", deps, (
                                          unit_attribution,
                                          {**common, "rollouts": rollouts_key, "nmf": nmf_key,
                                           "layer": name, "trajectory": e,
                                           "targets": targets, "steps": steps,
                                           "multi_path": multi, "max_paths": a.max_paths,
                                           "seed": t.seed,
                                           "single_features": a.single_features})))
                    row.append((ids, key))
                per_trajectory.append(row)
            attribution[name] = per_trajectory
            if nmf_key is not None:
                feature_settings = {"subdiv_mults": list(v.subdiv_mults),
                                    "num_mult": v.thumbnail_num_mult,
                                    "expand_mult": v.thumbnail_expand_mult}
                feature_key = unit_key("features", observations=observation_keys,
                                       nmf=nmf_key, layer=name, **feature_settings, **base)
                feature_keys[name] = feature_key
                units.append(Unit(feature_key, "features", f"{title}: features {name}",
                                  (*observation_keys, nmf_key), (
                                      unit_features,
                                      {**common, "observations": observation_keys,
                                       "nmf": nmf_key, "layer": name, **feature_settings})))
        extra_key = None
        if feature_keys:  # the extra observations the feature views show, as images
            extra_key = unit_key("extra images", observations=observation_keys,
                                 features=list(feature_keys.values()),
                                 encoding=bundles.extra_encoding(),
                                 unit_version=UNIT_VERSION, gallery=base["gallery"])
            units.append(Unit(extra_key, "frames", f"{title}: extra observations' images",
                              (*observation_keys, *feature_keys.values()), (
                                  unit_extra_images, {"observations": observation_keys,
                                                      "features": list(feature_keys.values())})))
        # the order of the list is a valid order of work: dependencies first, and the
        # expensive attribution after every layer's NMF so that all ranks find work early
        order = {"rollouts": 0, "outputs": 1, "nmf": 1, "features": 2, "frames": 2,
                 "attribution": 3}
        units.sort(key=lambda u: order[u.kind])
        self._plan = _Plan(units, rollouts_key, observation_keys, outputs_key, nmf_keys,
                           attribution, feature_keys, frame_keys, extra_key)
        return self._plan

    # --- running ----------------------------------------------------------------------
    def run(self, context: distributed.Context | None = None) -> dict[str, Any]:
        """Plan, compute what the store lacks (on the MPI pool when there is one), then
        assemble. Raises units.Interrupted on SIGINT/SIGTERM (finished units are kept)."""
        context = context or distributed.current()
        plan = self.plan()
        if self.resample:
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

    def recorded(self) -> tuple[Trajectories, np.ndarray | None, np.ndarray]:
        """The interface's trajectories, its extra observations and the values of the
        trajectories' frames, as stored by its units (after `run`)."""
        plan = self.plan()
        arrays = _stored_rollouts(self.store, plan.rollouts)
        prefix = "trajectories."
        trajectories = Trajectories(**{k[len(prefix):]: v for k, v in arrays.items()
                                       if k.startswith(prefix)})
        outputs = self.store.load(plan.outputs)
        if outputs is None:
            raise InterfaceError(f"outputs unit {plan.outputs[:12]} is missing from "
                                 f"{self.store.root}; run the build again")
        return trajectories, _stored_observations(self.store, plan.observations), \
            outputs.arrays["values"]

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
        # read once, and counted once in the stage timings (a given file's one unit holds
        # both the trajectories and the extra observations)
        extra = _concatenated_observations(
            [rollouts if key == plan.rollouts else _rollout_arrays(get(key, "rollouts"))
             for key in plan.observations])
        outputs = get(plan.outputs, "outputs")
        names = self.action_names
        title, p, v = self.title, o.presentation, o.visualisation
        model = {"id": self.model_id, "title": title,
                 "architecture": getattr(self.policy, "architecture", "unknown"),
                 "environment": self.spec.to_dict(),
                 "environment_description": self.spec.describe(),
                 "observation_shape": list(self.policy.observation_shape),
                 "checkpoint": {"name": self.source_name,
                                "sha256": self.checkpoint_sha}}
        writer = bundles.BundleWriter(
            self.output_dir / BUNDLE_DIR, model=model, outputs=self.output_specs,
            action_names=names, action_groups=self.group_specs,
            presentation=bundles.Presentation(
                video_speed=p.video_speed, attribution_weight=p.attribution_weight,
                scrub_range=tuple(p.scrub_range),
                scrubber_visible_duration=p.scrubber_visible_duration,
                vis_subdiv_mult_default=v.subdiv_mult_default,
                vis_expand_mult_default=v.expand_mult_default),
            single_features=o.attribution.single_features, image_effort=p.image_effort)
        a = outputs.arrays
        writing = progress_bars.current().stage(
            "writing", len(observations) + (extra is not None) + len(plan.features)
            + sum(len(row) for rows in plan.attribution.values() for row in rows) + 1,
            "parts")
        for e in range(len(observations)):
            images = get(plan.frames[e], "frames")
            writer.add_trajectory(bundles.TrajectoryData(
                observations=observations[e], actions=rollouts["trajectories.actions"][e],
                rewards=rollouts["trajectories.rewards"][e],
                firsts=rollouts["trajectories.firsts"][e], dones=a["dones"][e],
                logits=a["logits"][e], values=a["values"][e], advantages=a["advantages"][e]),
                [images.arrays[f"atlas{i}"].tobytes() for i in range(images.value["atlases"])])
            writing.update()
        writer.set_bookmarks(
            [bundles.BookmarkEntry(*b) for b in outputs.value["high"]],
            [bundles.BookmarkEntry(*b) for b in outputs.value["low"]])
        if extra is not None:
            atlases = None
            if plan.extra_images is not None:
                stored = get(plan.extra_images, "frames")
                atlases = bundles.ExtraAtlases(stored.arrays["indices"], [
                    (stored.arrays[f"atlas{i}"].tobytes(), extension)
                    for i, extension in enumerate(stored.value["extensions"])])
            writer.add_extra_observations(extra, atlases)
            writing.update()
        for name, per_trajectory in plan.attribution.items():
            if name == INPUT_LAYER:
                h, w, c = self.policy.observation_shape
                writer.add_layer(bundles.LayerSpec(INPUT_LAYER, (h, w, c), "gradients", c))
            else:
                h, w, c = self.policy.layer_shapes[name]
                writer.add_layer(bundles.LayerSpec(name, (h, w, c), "attribution",
                                                   min(o.nmf.features, c)))
            for e, row in enumerate(per_trajectory):
                for ids, key in row:
                    encoded = get(key, "attribution").arrays
                    for i, output in enumerate(ids):
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

    def add_features(self, writer: bundles.BundleWriter, name: str, stored: UnitResult,
                     observation_shape: tuple[int, int]) -> None:
        o = self.options
        arrays = stored.arrays
        writer.add_legend(name, arrays["thumbnails"])
        h, w = stored.value["layer_hw"]
        mults = o.visualisation.subdiv_mults
        kept = stored.value.get("subdiv_mults", range(len(mults)))
        for f in range(stored.value["features"]):
            grids = [bundles.FeatureGrid(
                float(mults[i]), arrays[f"f{f}s{i}_indices"], arrays[f"f{f}s{i}_acts"],
                arrays[f"f{f}s{i}_rows"], arrays[f"f{f}s{i}_cols"], (h, w)) for i in kept]
            writer.add_feature_views(name, f, grids,
                                     expand_mults=o.visualisation.expand_mults,
                                     observation_shape=observation_shape)

    def provenance(self, checkpoint_sha: str, spec: EnvSpec, policy: Any) -> dict[str, Any]:
        """What the bundle was made from. With SOURCE_DATE_EPOCH set (reproducible builds),
        `created` is that date and the timings, which differ from run to run, are left out."""
        settings = self.options.model_dump(mode="json")
        settings["presentation"].pop("image_effort")  # how images are encoded, not what
        settings["attribution"]["policy_layers"] = self.policy_layers
        if isinstance(self.rollouts, InterfaceBuilder):
            settings["rollouts"] = f"recorded by {self.rollouts.model_id}"
        elif self.rollouts:  # a local path: keep only the file's name
            settings["rollouts"] = Path(self.rollouts).name
        out = {
            "checkpoint": {"name": self.source_name, "sha256": checkpoint_sha},
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
             "features": "feature views", "frames": "frame images",
             "attribution": "attribution"}

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


def _stored_observations(store: UnitStore, keys: list[str]) -> np.ndarray | None:
    """The extra observations of the units `keys`, concatenated in order."""
    return _concatenated_observations([_stored_rollouts(store, key) for key in keys])


def _concatenated_observations(units: list[dict[str, np.ndarray]]) -> np.ndarray | None:
    """The extra observations of rollouts units' arrays, in order (None where one has none)."""
    parts = [arrays.get("observations") for arrays in units]
    if any(part is None for part in parts):
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _stored_nmf(store: UnitStore, key: str, device: str = "cpu") -> LayerNMF:
    found = store.load(key)
    if found is None:
        raise InterfaceError(f"NMF unit {key[:12]} is missing from {store.root}")
    return LayerNMF(found.arrays["components"], settings=NMFSettings(found.value["features"]),
                    n_iter=found.value["n_iter"], converged=found.value["converged"],
                    device=device)


def unit_rollouts(store: UnitStore, *, checkpoint: str | None, adapter: str | None, device: str,
                  env: dict[str, Any], trajectories: dict[str, Any], seed: int) -> UnitResult:
    """The trajectories the interface shows."""
    policy = cached_policy(checkpoint, adapter, device)
    spec = EnvSpec.from_args(policy.args, env)
    recorded = collect_trajectories(policy, spec, TrajectoryConfig(**trajectories), seed,
                                    progress_bars.counter("rollouts", {"trajectories": "steps"}))
    arrays = {f"trajectories.{k}": v for k, v in recorded.arrays().items()
              if k != "observations_full"}
    return UnitResult(arrays, {"num_envs": recorded.num_envs})


def unit_observations(store: UnitStore, *, checkpoint: str | None, adapter: str | None,
                      device: str, env: dict[str, Any], observations: dict[str, Any],
                      group: int, seed: int) -> UnitResult:
    """One group of environments' extra observations (NMF and feature visualisation)."""
    policy = cached_policy(checkpoint, adapter, device)
    spec = EnvSpec.from_args(policy.args, env)
    extra, _ = collect_observations(policy, spec, ObservationConfig(**observations), seed,
                                    progress_bars.counter("rollouts", {
                                        "observations": "policy steps"}), group=group)
    return UnitResult({"observations": extra}, {"num_envs": observations["num_envs"]})


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


def unit_outputs(store: UnitStore, *, checkpoint: str | None, adapter: str | None, device: str,
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


def unit_nmf(store: UnitStore, *, checkpoint: str | None, adapter: str | None, device: str,
             observations: list[str], layer: str, features: int, steps: int) -> UnitResult:
    policy = cached_policy(checkpoint, adapter, device)
    extra = _stored_observations(store, observations)
    nmf = fit_nmf(integrated_gradients(policy, extra, layer, "value", steps=steps),
                  NMFSettings(features))
    return UnitResult({"components": nmf.components},
                      {"features": features, "n_iter": int(nmf.n_iter),
                       "converged": bool(nmf.converged)})


def unit_attribution(store: UnitStore, *, checkpoint: str | None, adapter: str | None, device: str,
                     rollouts: str, nmf: str | None, layer: str, trajectory: int,
                     targets: list[Any], steps: int, multi_path: bool,
                     max_paths: int | None, seed: int, single_features: bool,
                     ) -> UnitResult:
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
    return UnitResult(arrays, {"outputs": len(targets)})


def unit_frames(store: UnitStore, *, rollouts: str, trajectory: int, effort: str
                ) -> UnitResult:
    """The frame atlases of one trajectory, as the bundle stores them."""
    observations = _stored_rollouts(store, rollouts)["trajectories.observations"][trajectory]
    atlases = bundles.encode_frames(observations, effort)
    return UnitResult({f"atlas{i}": np.frombuffer(data, np.uint8)
                       for i, data in enumerate(atlases)}, {"atlases": len(atlases)})


def unit_extra_images(store: UnitStore, *, observations: list[str], features: list[str]
                      ) -> UnitResult:
    """The atlases of the extra observations that the feature views of every layer show
    (`features`: the layers' features units), as the bundle stores them."""
    shown: set[int] = set()
    for key in features:
        found = store.load(key)
        if found is None:
            raise InterfaceError(f"features unit {key[:12]} is missing from {store.root}")
        for name, array in found.arrays.items():
            if name.endswith("_indices"):
                shown.update(np.unique(array).tolist())
    extra = _stored_observations(store, observations)
    atlases = bundles.encode_extra_atlases(extra, np.array(sorted(shown), np.int64))
    return UnitResult({"indices": atlases.indices,
                       **{f"atlas{i}": np.frombuffer(data, np.uint8)
                          for i, (data, _) in enumerate(atlases.images)}},
                      {"extensions": [extension for _, extension in atlases.images]})


def unit_features(store: UnitStore, *, checkpoint: str | None, adapter: str | None, device: str,
                  observations: list[str], nmf: str, layer: str,
                  subdiv_mults: list[float], num_mult: int, expand_mult: float) -> UnitResult:
    """Legend thumbnails and the feature-view grids of one layer (method.md 7)."""
    policy = cached_policy(checkpoint, adapter, device)
    extra = _stored_observations(store, observations)
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
    # a small layer (4x4) has no cell left at the coarsest patch counts: those are left out
    # of its views (the viewer's slider offers the counts a feature file holds)
    kept = [i for i, s in enumerate(subdiv_mults) if _grid_fits(layer_hw, s)]
    if not kept:
        raise InterfaceError(f"layer {layer}: no feature-view patch count of "
                             f"{list(subdiv_mults)} fits its {layer_hw[0]}x{layer_hw[1]} "
                             "positions; add 1 to visualisation.subdiv_mults")
    # each feature's amounts with the observations last, contiguous: resampled as they are
    cells = np.ascontiguousarray(reduced.transpose(3, 1, 2, 0))
    for f in range(layer_nmf.n_features):
        for i in kept:
            g = feature_grid(cells[f], subdiv_mults[i])
            arrays[f"f{f}s{i}_indices"] = np.asarray(g.indices)
            arrays[f"f{f}s{i}_acts"] = np.asarray(g.acts)
            arrays[f"f{f}s{i}_rows"] = np.asarray(g.centre_rows)
            arrays[f"f{f}s{i}_cols"] = np.asarray(g.centre_cols)
    return UnitResult(arrays, {"features": layer_nmf.n_features, "layer_hw": layer_hw,
                               "subdiv_mults": kept})


def _grid_fits(layer_hw: Sequence[int], subdiv_mult: float) -> bool:
    try:
        resample_grid(np.zeros((1, *layer_hw), np.float32), subdiv_mult)
    except FeatureVisualisationError:
        return False
    return True


def _target(spec: bundles.OutputSpec) -> Any:
    if spec.kind == "value":
        return "value"
    return spec.actions[0] if spec.kind == "action" else list(spec.actions)


def feature_grid(cells: np.ndarray, subdiv_mult: float, top_frac: float = 0.1
                 ) -> bundles.FeatureGrid:
    """The grid of a full feature view (method.md 7) without its image, from a feature's
    amounts with the observations last (h, w, N): which extra observation each cell shows,
    how strongly, and the cells' centres. The viewer lays the patches out for every
    expand_mult (as gallery.method.dataset_examples.feature_view does)."""
    chosen, cell_acts, centres = grid_choices(cells, subdiv_mult, top_frac)
    return bundles.FeatureGrid(subdiv_mult, chosen, cell_acts, centres[:, 0, 0],
                               centres[0, :, 1], cells.shape[:2])


def _same_size(images: list[np.ndarray]) -> list[np.ndarray]:
    """Thumbnails cropped to the smallest height and width among them."""
    h = min(i.shape[0] for i in images)
    w = min(i.shape[1] for i in images)
    return [i[:h, :w] for i in images]


def select_layers(offered: Sequence[str], options: LayerSelection) -> list[str]:
    """The offered layers, filtered by name substrings, minus the first `discard_first_n`."""
    names = list(offered)
    if options.include is not None:
        names = [n for n in names if any(s in n for s in options.include)]
        if not names:
            raise InterfaceError(f"no layer matches {list(options.include)}; the checkpoint "
                                 f"offers {', '.join(offered)}")
    names = names[options.discard_first_n:]
    if not names and not options.input_layer:
        raise InterfaceError(f"no layer left after discarding the first "
                             f"{options.discard_first_n} of {', '.join(offered)}")
    return names


def policy_layers(shown: Sequence[str], options: AttributionOptions) -> list[str]:
    """The layers, among those the interface shows (`input` included when it does), whose
    attribution covers every action and action group: none without `policy`; those named
    (names or parts of them); by default one, the default layer of the bundle (the middle
    attribution layer)."""
    if not options.policy:
        return []
    hidden = [n for n in shown if n != INPUT_LAYER]
    if options.policy_layers is None:
        return [hidden[len(hidden) // 2]] if hidden else list(shown[:1])
    names = [n for n in shown if any(s == n or (s in n and n != INPUT_LAYER)
                                     for s in options.policy_layers)]
    if not names:
        raise InterfaceError(f"no layer shown matches policy layers "
                             f"{list(options.policy_layers)}; the interface shows "
                             f"{', '.join(shown)}")
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

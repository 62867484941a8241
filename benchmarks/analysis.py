"""Everything an interface shows, computed from a policy and recorded arrays.

A pure orchestration of the numerical modules (no files, no printing; progress through an
optional callback):

1. `analyze_trajectories`: outputs (logits, values), advantages and bookmarks.
2. `layer_features`, per layer: value attribution on the extra observations, NMF features
   (directions, colours), legend thumbnails and full feature views with index grids.
3. `trajectory_attributions`, per (layer, trajectory): for every output (the value, and
   with policy attribution every action and action group) the reduced attribution
   (features and residual), its totals over positions and its scale, and the attribution
   scrubber strips; yielded one output at a time so that a writer can store each and let
   it go (with policy attribution the whole set is many GB).

`analyze` runs all three and keeps everything in memory: convenient for the defaults
(about 1 GB for 8 x 512 frames and the five clear layers) and for tests. With policy
attribution that would be about 20 GB, so `analyze` refuses above `max_bytes`; bundle
writers call the stages themselves and consume `iter_attributions` one item at a time.

Inputs are plain arrays: trajectory observations (E, T, H, W, C) and extra observations
(N, H, W, C), uint8 or float in [0, 1]; firsts, actions, rewards (E, T).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import torch

from gallery.method import rendering
from gallery.method.advantages import (
    Bookmark,
    bookmarks,
    dones_from_firsts,
    gae_advantages,
    policy_outputs,
)
from gallery.method.attribution import (
    INPUT_LAYER,
    ActionGroup,
    AnalysisError,
    MultiPath,
    ObservationError,
    action_groups,
    attribution_batches,
    check_layer,
    integrated_gradients,
    layer_shape,
    prepare_observations,
    readout_matrix,
)
from gallery.method.dataset_examples import (
    FeatureImage,
    feature_grid,
    feature_thumbnail,
    render_grid,
)
from gallery.method.nmf import LayerNMF, NMFSettings, fit_nmf

Progress = Callable[[str, int, int], None]
"""Called as progress(stage, done, total); stages are 'outputs', 'nmf <layer>' (value
attribution of the extra observations), 'fit <layer>' (NMF), 'transform <layer>' (feature
amounts of the observations), 'features <layer>' (images) and 'attribution <layer>'
(observations of a trajectory)."""


@dataclass(frozen=True)
class AnalysisConfig:
    """What to compute; defaults are the reference tool's (method.md section 8)."""

    layers: tuple[str, ...] | None = None
    """Layers to analyse, in order; None: every layer the policy offers."""
    include: tuple[str, ...] | None = None
    """Keep only layers whose name contains one of these substrings; None: all."""
    discard_first_n: int = 0
    """Drop this many of the first (highest-resolution, slowest) layers."""
    input_layer: bool = False
    """Also show gradients with respect to the observation, as the layer 'input'."""
    integrate_steps: int = 10
    """Riemann steps of the integrated gradients shown for trajectories."""
    nmf_integrate_steps: int = 10
    """Riemann steps of the value attribution that NMF is fitted on."""
    policy_attribution: bool = False
    """Attribution for every action and action group too, not only the value."""
    multi_path: bool = False
    """Average attribution over paths through NMF feature space (trajectories only)."""
    multi_path_max_paths: int | None = None
    """Paths drawn for multi-path attribution; None: all of them."""
    nmf_features: int = 8
    """K, features per layer."""
    nmf_random_state: int = 0
    """Seed of the NMF initialisation."""
    single_feature_views: bool = True
    """Offer views of one feature alone and of the residual alone."""
    subdiv_mults: tuple[float, ...] = (0.25, 0.5, 1, 2)
    """Grid refinements of the full feature views."""
    expand_mults: tuple[float, ...] = (1, 2, 4, 8)
    """Patch sizes (in cells) of the full feature views."""
    thumbnail_num_mult: int = 4
    """Thumbnails show num_mult x num_mult patches."""
    thumbnail_expand_mult: float = 4
    """Patch size (in cells) of the thumbnails."""
    bookmarks: int = 16
    """Bookmarks of each sign (high and low advantages)."""
    gamma: float | None = None
    """GAE discount; None: the checkpoint's (policy.gamma)."""
    lam: float | None = None
    """GAE lambda; None: the checkpoint's (policy.lam)."""
    scrub_range: tuple[float, float] = rendering.SCRUB_RANGE
    """Columns of a frame shown in the scrubber, as fractions of its width."""
    attribution_scrubs: bool = True
    """Render the scrubber strips of every attribution view."""

    def __post_init__(self) -> None:
        for name in ("integrate_steps", "nmf_integrate_steps", "nmf_features",
                     "thumbnail_num_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AnalysisError(f"{name} must be an integer >= 1, not {value!r}")
        if self.discard_first_n < 0 or self.bookmarks < 0:
            raise AnalysisError("discard_first_n and bookmarks must be >= 0")
        if any(not m > 0 for m in self.subdiv_mults + self.expand_mults) or \
                not self.thumbnail_expand_mult > 0:
            raise AnalysisError("subdiv and expand multipliers must be > 0")
        if not 0 <= self.scrub_range[0] < self.scrub_range[1] <= 1:
            raise AnalysisError(f"scrub_range must be 0 <= a < b <= 1, not {self.scrub_range}")


@dataclass(frozen=True)
class TrajectoryArrays:
    """Recorded trajectories: observations (E, T, H, W, C); firsts, actions, rewards (E, T).

    `dones` (E, T) if known, else `dones[:, t] = firsts[:, t + 1]` (last step 0).
    """

    observations: np.ndarray
    firsts: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray | None = None

    @classmethod
    def from_object(cls, source: Any) -> TrajectoryArrays:
        """From any object with these attributes (e.g.
        gallery.environments.rollouts.Trajectories)."""
        if isinstance(source, TrajectoryArrays):
            return source
        return cls(source.observations, source.firsts, source.actions, source.rewards,
                   getattr(source, "dones", None))

    def check(self) -> None:
        obs = np.asarray(self.observations)
        if obs.ndim != 5:
            raise ObservationError(f"trajectory observations must be (E, T, H, W, C), got "
                                   f"shape {obs.shape}")
        for name in ("firsts", "actions", "rewards") + (("dones",) if self.dones is not None
                                                        else ()):
            shape = np.shape(getattr(self, name))
            if shape != obs.shape[:2]:
                raise AnalysisError(f"trajectory {name} has shape {shape}, expected "
                                    f"{obs.shape[:2]} (E, T) like the observations")


@dataclass(frozen=True)
class TrajectoryAnalysis:
    """Outputs, advantages and bookmarks of the trajectories, all (E, T) [x A]."""

    logits: np.ndarray
    values: np.ndarray
    dones: np.ndarray
    advantages: np.ndarray
    bookmarks_high: list[Bookmark]
    bookmarks_low: list[Bookmark]
    observation_scrubs: np.ndarray
    """(E, T, H, w_s, C) the scrubber columns of every observation"""


@dataclass(frozen=True)
class Output:
    """A network output attribution is computed for."""

    kind: Literal["value", "action", "action_group"]
    index: int | None
    """action index, or action group index (in `AnalysisResult.action_groups`)"""
    name: str
    actions: tuple[int, ...] = ()
    """the actions whose logits are summed (action groups)"""


@dataclass
class LayerFeatures:
    """A layer's NMF features and their dataset-example visualisations."""

    layer: str
    shape: tuple[int, int, int]
    nmf: LayerNMF
    colours: np.ndarray
    """(K, 3) legend colours in [0, 1]"""
    thumbnails: list[FeatureImage]
    """one per feature: RGBA float32"""
    views: dict[tuple[float, float], list[FeatureImage]] = field(default_factory=dict)
    """(subdiv_mult, expand_mult) -> one image per feature"""

    @property
    def directions(self) -> np.ndarray:
        """(K, C) feature directions in channel space."""
        return self.nmf.feature_directions


@dataclass
class OutputAttribution:
    """Attribution of one output to one layer along one trajectory, reduced to features.

    For the input layer `features` holds the gradient (T, H, W, C) and `residual` zeros.
    """

    layer: str
    trajectory: int
    output: Output
    features: np.ndarray
    """(T, h, w, K) unscaled, already multiplied by the features' norms"""
    residual: np.ndarray
    """(T, h, w)"""
    feature_totals: np.ndarray
    """(T, K) features summed over positions"""
    residual_totals: np.ndarray
    """(T,)"""
    scale: float
    """m of method.md 6: the viewer divides features and residual by it"""
    scrubs: dict[tuple[str, rendering.View], np.ndarray] = field(default_factory=dict)
    """(direction, view) -> (T, h, w_s, 4) uint8 RGBA scrubber columns"""


@dataclass
class AnalysisResult:
    """Everything an interface needs."""

    config: AnalysisConfig
    layers: list[str]
    """analysed layers in order ('input' first when included)"""
    action_names: list[str]
    action_groups: list[ActionGroup]
    outputs: list[Output]
    trajectories: TrajectoryAnalysis
    features: dict[str, LayerFeatures]
    attributions: list[OutputAttribution]
    feature_colours: np.ndarray
    """(K, 3) legend colours, the same for every layer"""


def select_layers(policy: torch.nn.Module, config: AnalysisConfig) -> list[str]:
    """The hidden layers to analyse (without 'input'), validated."""
    names = list(policy.layer_names)
    if config.layers is not None:
        for layer in config.layers:
            check_layer(policy, layer)
        names = [n for n in config.layers if n != INPUT_LAYER]
    if config.include is not None:
        names = [n for n in names if any(s in n for s in config.include)]
    return names[config.discard_first_n:]


def outputs_for(policy: torch.nn.Module, config: AnalysisConfig) -> list[Output]:
    """The outputs attribution is computed for: the value, then (policy attribution)
    every action and every action group."""
    outputs = [Output("value", None, "value")]
    if config.policy_attribution:
        outputs += [Output("action", i, name, (i,)) for i, name in enumerate(policy.action_names)]
        outputs += [Output("action_group", i, g.name, g.actions)
                    for i, g in enumerate(action_groups(policy.action_names))]
    return outputs


#: Attribution elements per output reduced to features in one go (16 MB of float32).
REDUCE_ELEMENTS = 1 << 22
#: `analyze` keeps every attribution in memory only below this many bytes.
MAX_IN_MEMORY_BYTES = 4 * 1024**3


def analyze(policy: torch.nn.Module, trajectories: Any, observations: np.ndarray,
            config: AnalysisConfig = AnalysisConfig(), *, progress: Progress | None = None,
            max_bytes: int = MAX_IN_MEMORY_BYTES) -> AnalysisResult:
    """Compute everything an interface needs, in memory (see the module docstring)."""
    arrays = TrajectoryArrays.from_object(trajectories)
    arrays.check()
    prepare_observations(policy, np.asarray(observations)[:1])
    layers = select_layers(policy, config)
    needed = attribution_bytes(policy, arrays.observations.shape[:2], config)
    if needed > max_bytes:
        raise AnalysisError(
            f"keeping every attribution in memory needs about {needed / 1024**3:.1f} GB "
            f"(limit {max_bytes / 1024**3:.1f} GB): consume iter_attributions() one item "
            "at a time instead, or analyse fewer layers or frames")
    trajectory_analysis = analyze_trajectories(policy, arrays, config, progress=progress)
    features = {layer: layer_features(policy, observations, layer, config, progress=progress)
                for layer in layers}
    attributions = list(iter_attributions(policy, arrays, features, config, progress=progress))
    shown = ([INPUT_LAYER] if config.input_layer else []) + layers
    return AnalysisResult(config, shown, list(policy.action_names),
                          action_groups(policy.action_names), outputs_for(policy, config),
                          trajectory_analysis, features, attributions,
                          rendering.legend_colours(config.nmf_features))


def attribution_bytes(policy: torch.nn.Module, trajectory_shape: tuple[int, int],
                      config: AnalysisConfig) -> int:
    """About how many bytes the reduced attributions of every output take (float32)."""
    k = config.nmf_features
    per_frame = sum(h * w * (k + 1) for h, w, _ in
                    (layer_shape(policy, layer) for layer in select_layers(policy, config)))
    if config.input_layer:
        h, w, c = layer_shape(policy, INPUT_LAYER)
        per_frame += h * w * (c + 1)
    e, t = trajectory_shape
    return 4 * per_frame * e * t * len(outputs_for(policy, config))


def iter_attributions(policy: torch.nn.Module, trajectories: Any,
                      features: dict[str, LayerFeatures], config: AnalysisConfig, *,
                      progress: Progress | None = None) -> Iterator[OutputAttribution]:
    """Every (layer, trajectory, output) attribution, one at a time: the input layer
    first when configured, then the layers of `features` in order."""
    arrays = TrajectoryArrays.from_object(trajectories)
    arrays.check()
    shown = ([INPUT_LAYER] if config.input_layer else []) + list(features)
    for layer in shown:
        for e in range(arrays.observations.shape[0]):
            yield from trajectory_attributions(policy, arrays.observations[e], e, layer,
                                               features.get(layer), config, progress=progress)


def analyze_trajectories(policy: torch.nn.Module, trajectories: Any, config: AnalysisConfig,
                         *, progress: Progress | None = None) -> TrajectoryAnalysis:
    """Logits, values, advantages (GAE) and bookmarks of recorded trajectories."""
    arrays = TrajectoryArrays.from_object(trajectories)
    arrays.check()
    report = _stage(progress, "outputs")
    outputs = policy_outputs(policy, arrays.observations, progress=report)
    dones = (dones_from_firsts(arrays.firsts) if arrays.dones is None
             else np.asarray(arrays.dones, dtype=np.float32))
    gamma = policy.gamma if config.gamma is None else config.gamma
    lam = policy.lam if config.lam is None else config.lam
    advantages = gae_advantages(outputs.values, arrays.rewards, dones, gamma=gamma, lam=lam)
    obs = np.asarray(arrays.observations)
    scrubs = obs[:, :, :, rendering.scrub_columns(obs.shape[3], config.scrub_range), :]
    return TrajectoryAnalysis(
        outputs.logits, outputs.values, dones, advantages,
        bookmarks(advantages, dones, sign=1, num=config.bookmarks),
        bookmarks(advantages, dones, sign=-1, num=config.bookmarks),
        np.ascontiguousarray(scrubs))


def layer_features(policy: torch.nn.Module, observations: np.ndarray, layer: str,
                   config: AnalysisConfig, *, progress: Progress | None = None
                   ) -> LayerFeatures:
    """NMF features of a layer fitted on the value attribution of `observations`, with
    their legend thumbnails and full views."""
    check_layer(policy, layer)
    if layer == INPUT_LAYER:
        raise AnalysisError("the input layer has no NMF features")
    report = _stage(progress, f"nmf {layer}")
    attr = integrated_gradients(policy, observations, layer, "value",
                                config.nmf_integrate_steps, progress=report)
    nmf = fit_nmf(attr, NMFSettings(config.nmf_features, config.nmf_random_state))
    del attr
    if progress is not None:
        progress(f"fit {layer}", 1, 1)
    acts = _activations(policy, observations, layer)
    amounts = nmf.transform(acts)
    del acts
    if progress is not None:
        progress(f"transform {layer}", 1, 1)
    k = config.nmf_features
    total = k * (1 + len(config.subdiv_mults) * len(config.expand_mults))
    done = 0
    thumbnails = []
    for feature in range(k):
        thumbnails.append(feature_thumbnail(amounts[..., feature], observations,
                                            num_mult=config.thumbnail_num_mult,
                                            expand_mult=config.thumbnail_expand_mult))
        done += 1
        if progress is not None:
            progress(f"features {layer}", done, total)
    views: dict[tuple[float, float], list[FeatureImage]] = {
        (subdiv, expand): [] for subdiv in config.subdiv_mults for expand in config.expand_mults}
    for subdiv in config.subdiv_mults:
        for feature in range(k):
            grid = feature_grid(amounts[..., feature], observations, subdiv_mult=subdiv)
            for expand in config.expand_mults:
                views[(subdiv, expand)].append(render_grid(grid, observations,
                                                           expand_mult=expand))
                done += 1
                if progress is not None:
                    progress(f"features {layer}", done, total)
    return LayerFeatures(layer, layer_shape(policy, layer), nmf, rendering.legend_colours(k),
                         thumbnails, views)


def trajectory_attributions(policy: torch.nn.Module, observations: np.ndarray, trajectory: int,
                            layer: str, features: LayerFeatures | None, config: AnalysisConfig,
                            *, progress: Progress | None = None
                            ) -> Iterator[OutputAttribution]:
    """Reduced attribution of every output to `layer` along one trajectory (T, H, W, C).

    `features` are the layer's (None for the input layer).
    """
    outputs = outputs_for(policy, config)
    report = _stage(progress, f"attribution {layer}")
    if layer == INPUT_LAYER:
        reduced = _input_gradients(policy, observations, outputs, report)
    elif features is None:
        raise AnalysisError(f"layer {layer!r} needs its NMF features (layer_features)")
    elif config.multi_path:
        reduced = _multi_path_reduced(policy, observations, layer, features, config, report)
    else:
        reduced = _reduced_attributions(policy, observations, layer, outputs, features.nmf,
                                        config.integrate_steps, report)
    for output, (attr_r, residual) in zip(outputs, reduced):
        yield _output_attribution(layer, trajectory, output, attr_r, residual, config)


def _reduced_attributions(policy: torch.nn.Module, observations: np.ndarray, layer: str,
                          outputs: Sequence[Output], nmf: LayerNMF, steps: int,
                          progress: Callable[[int, int], None] | None
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(features, residual) per output, reducing a batch of frames at a time."""
    t = len(observations)
    h, w, _ = layer_shape(policy, layer)
    k = nmf.n_features
    # Groups are not computed: IG is linear in the output, so a group's attribution is
    # the sum of its actions' (the reduction to features is not linear: it comes after).
    direct = [o for o in outputs if o.kind != "action_group"]
    readout = readout_matrix(policy, ["value" if o.kind == "value" else o.index
                                      for o in direct])
    row_of_action = {o.index: r for r, o in enumerate(direct) if o.kind == "action"}
    rows = [[0] if o.kind == "value" else [row_of_action[a] for a in o.actions]
            for o in outputs]
    features = [np.zeros((t, h, w, k), np.float32) for _ in outputs]
    residuals = [np.zeros((t, h, w), np.float32) for _ in outputs]
    # The reduction runs on several batches at once (scikit-learn's transform has a fixed
    # cost per call that, per batch of a few frames, was most of its time).
    pending: list[np.ndarray] = []
    first = 0

    def reduce_pending() -> None:
        batch = np.concatenate(pending, axis=1)
        frames = slice(first, first + batch.shape[1])
        for o, output_rows in enumerate(rows):
            raw = batch[output_rows[0]] if len(output_rows) == 1 else \
                batch[output_rows].sum(axis=0)
            features[o][frames], residuals[o][frames] = nmf.reduce_attribution(raw)
        pending.clear()

    for frames, batch in attribution_batches(policy, observations, layer, readout, steps,
                                             progress=progress):
        if not pending:
            first = frames.start
        pending.append(batch)
        if sum(p[0].size for p in pending) >= REDUCE_ELEMENTS:
            reduce_pending()
    if pending:
        reduce_pending()
    return list(zip(features, residuals))


def _multi_path_reduced(policy: torch.nn.Module, observations: np.ndarray, layer: str,
                        features: LayerFeatures, config: AnalysisConfig,
                        progress: Callable[[int, int], None] | None
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    paths = MultiPath(features.nmf, config.multi_path_max_paths)
    out = []
    for output in outputs_for(policy, config):
        target = "value" if output.kind == "value" else list(output.actions)
        attr = integrated_gradients(policy, observations, layer, target,
                                    config.integrate_steps, multi_path=paths, progress=progress)
        out.append(features.nmf.reduce_attribution(attr))
    return out


def _input_gradients(policy: torch.nn.Module, observations: np.ndarray,
                     outputs: Sequence[Output], progress: Callable[[int, int], None] | None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gradients (T, H, W, C) per output, with zero residuals (there is no NMF)."""
    readout = readout_matrix(policy, ["value" if o.kind == "value" else list(o.actions)
                                      for o in outputs])
    parts = [batch for _, batch in attribution_batches(policy, observations, INPUT_LAYER,
                                                       readout, 1, progress=progress)]
    grads = np.concatenate(parts, axis=1)
    return [(g, np.zeros(g.shape[:-1], np.float32)) for g in grads]


def _output_attribution(layer: str, trajectory: int, output: Output, features: np.ndarray,
                        residual: np.ndarray, config: AnalysisConfig) -> OutputAttribution:
    scale = rendering.attribution_scale(features)
    is_input = layer == INPUT_LAYER
    item = OutputAttribution(layer, trajectory, output, features, residual,
                             features.sum(axis=(1, 2)), residual.sum(axis=(1, 2)), scale)
    if config.attribution_scrubs:
        views = rendering.views(features.shape[-1], config.single_feature_views and not is_input)
        strips = rendering.render_attribution_scrubs(features, residual, scale=scale,
                                                     views=views,
                                                     scrub_range=config.scrub_range)
        for direction in rendering.DIRECTIONS:
            for view in views:
                item.scrubs[(direction, view)] = rendering.to_uint8(strips[(direction, view)])
    return item


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    """progress(done, total) reporting as `stage`."""
    return None if progress is None else partial(progress, stage)


def _activations(policy: torch.nn.Module, observations: np.ndarray, layer: str,
                 batch_size: int = 512) -> np.ndarray:
    """(N, h, w, c) float32 activations of a layer."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(observations), batch_size):
            obs = prepare_observations(policy, observations[start:start + batch_size])
            parts.append(policy.activations(obs, layer).float().numpy())
    return np.concatenate(parts) if parts else np.zeros((0,) + layer_shape(policy, layer),
                                                        np.float32)

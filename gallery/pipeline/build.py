"""`gallery build`: manifest -> fetched checkpoints -> one result per model -> MkDocs site.

Stages, per model: **fetch** (gallery.models.fetch: cache, sha256) then **model** (the per-model
step, `build_model`, cached under a key of the checkpoint's sha256, the model's effective
settings and the result/bundle format versions). Then, once: **compare** (comparison data),
**site** (gallery.site: pages, mkdocs.yml, `mkdocs build --strict`) and a **size** check
against GitHub Pages' limits.

Failures are isolated: a model whose fetch or build fails is reported in the summary and on
its page, the other models and the site are still built, and the exit code is 1.

The per-model step is any `ModelBuilder`:

    build_model(spec, checkpoint_path, settings, out_dir, *, progress=None,
                interfaces=False) -> ModelResult

It writes its files (thumbnail, interface) into `out_dir`, a fresh folder that is renamed
into the cache only when the step succeeds. The default one below describes the policy
and, with `interfaces`, generates the interactive interface (`build_interface`), whose
trajectories give the card's statistics; without, it records the trajectories alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gallery import __version__
from gallery.models.fetch import Cache, Fetched, FetchPolicy, fetch_checkpoint, sha256_file
from gallery.pipeline.manifest import ComparisonSpec, Manifest, ModelSpec
from gallery.pipeline.options import InterfaceOptions
from gallery.site import (
    BuildInfo,
    ComparisonEntry,
    EpisodeSummary,
    ModelEntry,
    ModelResult,
    SharedObservations,
    build_site,
    check_output_dir,
    plan_project,
    write_project,
)
from gallery.site.budget import (  # noqa: F401 (PAGES_*, WARN_FRACTION: re-exported)
    PAGES_FILE_LIMIT,
    PAGES_SITE_LIMIT,
    WARN_FRACTION,
    SizeReport,
    measure_site,
)
from gallery.site.results import RESULT_FORMAT_VERSION

if TYPE_CHECKING:
    from gallery.pipeline.interface import InterfaceBuilder

log = logging.getLogger(__name__)

ROLLOUTS_FILE = "rollouts.npz"
THUMBNAIL_FILE = "thumbnail.png"
INTERFACE_DIR = "interface"
#: Observations every model of a comparison is evaluated on (every STRIDE-th recorded frame).
SHARED_FRAMES, SHARED_STRIDE = 32, 4
COMPARISON_FORMAT_VERSION = 4
MATCHED_DIR = "matched"


def bundle_format_version() -> int:
    """The interface bundle format version (gallery.bundle): part of every model's key."""
    from gallery import bundle

    return bundle.FORMAT_VERSION


# --- settings and keys --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings:
    """What a model's result depends on besides its checkpoint."""

    options: InterfaceOptions
    env: dict[str, Any]
    """Overrides of the checkpoint's environment args."""
    adapter: str | None = None
    """`module:factory` that reads the checkpoint (docs/adapters.md), if any."""

    @classmethod
    def of(cls, manifest: Manifest, spec: ModelSpec) -> ModelSettings:
        return cls(manifest.settings(spec.id), dict(spec.env), spec.adapter)

    def to_dict(self) -> dict[str, Any]:
        described = {"options": self.options.model_dump(), "env": self.env}
        if self.adapter:  # the same weights read by another adapter are another model
            described["adapter"] = self.adapter
        return described


def model_key(checkpoint_sha256: str, settings: ModelSettings, interfaces: bool = False) -> str:
    """The cache key of a model's result: checkpoint, settings and format versions."""
    described = {"checkpoint_sha256": checkpoint_sha256, "settings": settings.to_dict(),
                 "result_format": RESULT_FORMAT_VERSION,
                 "bundle_format": bundle_format_version()}
    if interfaces:
        described["interfaces"] = True
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


StageProgress = Callable[[str], None]


class ModelBuilder(Protocol):
    def __call__(self, spec: ModelSpec, checkpoint_path: Path, settings: ModelSettings,
                 out_dir: Path, *, progress: StageProgress | None = None,
                 interfaces: bool = False) -> ModelResult: ...


# --- the per-model step -------------------------------------------------------------------


def build_model(spec: ModelSpec, checkpoint_path: Path, settings: ModelSettings, out_dir: Path,
                *, progress: StageProgress | None = None, interfaces: bool = False
                ) -> ModelResult:
    """Describe the policy, record its trajectories, make the interface (when asked)."""
    from gallery.environments import EnvSpec
    from gallery.environments.rollouts import (
        Rollouts,
        TrajectoryConfig,
        load_or_collect,
        save_rollouts,
    )
    from gallery.pipeline import progress as progress_bars
    from gallery.pipeline.interface import source_date
    from gallery.site.stats import chart_samples

    say = progress or (lambda message: None)
    start = time.perf_counter()
    policy = _load_on_device(checkpoint_path, settings.adapter, settings.env)
    sha256 = policy.sha256 or (sha256_file(checkpoint_path) if checkpoint_path else "")
    described = policy.describe()
    env_spec = EnvSpec.from_args(policy.args, settings.env)
    interface = None
    if interfaces:  # the card shows the interface's own trajectories, recorded once
        builder = build_interface(checkpoint_path, out_dir / INTERFACE_DIR, settings, say,
                                  title=spec.title, model_id=spec.id)
        recorded, _, values = builder.recorded()
        interface = INTERFACE_DIR
        # the comparisons evaluate every model on these frames: kept beside the card
        save_rollouts(out_dir / ROLLOUTS_FILE, Rollouts(recorded, metadata={
            "recorded_by": spec.id, "checkpoint_sha256": sha256}))
    else:
        options = settings.options.trajectories
        say(f"rollouts {options.num_envs} x {options.num_steps} steps, "
            f"{env_spec.describe()}")
        recorded = load_or_collect(
            out_dir / ROLLOUTS_FILE, policy, env_spec,
            trajectories=TrajectoryConfig(options.num_envs, options.num_steps),
            observations=None, seed=options.seed, checkpoint_sha256=sha256,
            progress=progress_bars.counter("rollouts")).trajectories
        say("values and advantages")
        values = policy_values(policy, recorded.observations)
    stats = recorded.episodes()
    pairs, advantages = chart_samples(recorded.rewards, values, recorded.dones, policy.gamma,
                                      policy.lam)
    save_thumbnail(recorded.observations[0, 0], out_dir / THUMBNAIL_FILE)
    return ModelResult(
        model_id=spec.id, key="", checkpoint_sha256=sha256,
        architecture=described["architecture"], parameters=described["parameters"],
        observation_shape=described["observation_shape"], actions=described["actions"],
        layers=described["layers"], environment=env_spec.to_dict(),
        environment_description=env_spec.describe(),
        training_args=_jsonable(dict(policy.args)),
        training_steps=policy.training_steps,
        settings=settings.options.model_dump(),
        episodes=EpisodeSummary(**stats.to_dict()),
        steps_recorded=[recorded.num_envs, recorded.num_steps],
        gamma=policy.gamma, lam=policy.lam, values_vs_returns=pairs, advantages=advantages,
        thumbnail=THUMBNAIL_FILE, interface=interface,
        built_at=(source_date() or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        seconds=time.perf_counter() - start, versions={"gallery": __version__})


def build_interface(checkpoint_path: Path, out_dir: Path, settings: ModelSettings,
                    say: StageProgress, *, title: str | None = None,
                    model_id: str | None = None) -> InterfaceBuilder:
    """Generate a model's interactive interface into `out_dir` (its index.html is embedded
    in the model page); returns the builder, whose unit store holds the rollouts and
    outputs the model card reads."""
    from gallery.pipeline.interface import interface_builder

    say("interface")
    builder = interface_builder(checkpoint_path, out_dir, settings.options,
                                adapter=settings.adapter, env=settings.env, title=title,
                                model_id=model_id, progress=say)
    builder.run()
    return builder


def policy_values(policy: Any, observations: np.ndarray, batch: int = 512) -> np.ndarray:
    """The value estimate of uint8 observations (E, T, H, W, C), as (E, T) float64."""
    import torch

    from gallery.environments.rollouts import TORCH_THREADS, torch_threads
    from gallery.method.attribution import prepare_observations

    flat = observations.reshape(-1, *observations.shape[2:])
    out = []
    with torch.inference_mode(), torch_threads(TORCH_THREADS):
        for i in range(0, len(flat), batch):
            obs = prepare_observations(policy, flat[i:i + batch])
            out.append(policy(obs)[1].double().cpu().numpy())
    return np.concatenate(out).reshape(observations.shape[:2])


def save_thumbnail(observation: np.ndarray, path: Path, size: int = 256) -> None:
    """A frame (H, W, C) uint8 as a PNG, enlarged without smoothing (the agent's view)."""
    from PIL import Image

    frame = observation[..., -3:] if observation.shape[-1] >= 3 else observation[..., -1]
    image = Image.fromarray(np.ascontiguousarray(frame))
    image.resize((size, size), Image.NEAREST).save(path, optimize=True)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item")
                                 else str(v)))


# --- the orchestrator ---------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    """Where a build reads and writes, and how."""

    output: Path
    """The built site (replaced when the build succeeds)."""
    cache_dir: Path
    """Downloads, model results and the generated MkDocs project."""
    force: bool = False
    """Recompute every model even if its result is cached."""
    fetch: FetchPolicy = FetchPolicy()
    strict: bool = True
    """`mkdocs build --strict`: any warning (a broken link, ...) fails the site."""
    project_dir: Path | None = None
    """The generated MkDocs project; default: a folder in the cache for this manifest."""
    interfaces: bool = True
    """Generate each model's interactive interface, and each comparison's interfaces on
    shared trajectories with its matched features (`gallery build --no-interfaces`: off).
    At the method's default settings an interface costs minutes of CPU per model: choose
    the manifest's `defaults` accordingly (checkpoints.yaml states reduced ones)."""


@dataclass
class ModelOutcome:
    """How one model's build went."""

    model_id: str
    status: str = "pending"
    """'built', 'cached' or 'failed'."""
    stage: str = ""
    """The stage that failed, when it did."""
    error: str | None = None
    seconds: float = 0.0
    fetched: str = ""
    """'cache', 'download' or 'local'."""
    mean_return: float | None = None


@dataclass
class BuildReport:
    """What `build_gallery` did."""

    models: list[ModelOutcome]
    output: Path | None = None
    project: Path | None = None
    size: SizeReport | None = None
    site_error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        failed = any(m.status == "failed" for m in self.models) or self.site_error
        too_big = self.size is not None and self.size.problems()[0]
        return 1 if failed or too_big else 0


class Reporter:
    """Progress lines on stderr: `[2/5] model-id  stage  message`."""

    def __init__(self, total: int, stream: Any = None, width: int = 12):
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width

    def __call__(self, index: int, model_id: str, stage: str, message: str) -> None:
        self.width = max(self.width, len(model_id))
        prefix = f"[{index + 1}/{self.total}] " if index >= 0 else "      "
        print(f"{prefix}{model_id:<{self.width}}  {stage:<8} {message}", file=self.stream,
              flush=True)


def project_dir_for(manifest: Manifest, cache_dir: Path) -> Path:
    digest = hashlib.sha256(str(manifest.path.resolve()).encode()).hexdigest()[:16]
    return cache_dir / "projects" / digest


def build_gallery(manifest: Manifest, config: BuildConfig, *,
                  builder: ModelBuilder = build_model, reporter: Reporter | None = None
                  ) -> BuildReport:
    """Build every model (reusing cached results), the comparisons and the site."""
    start = time.perf_counter()
    check_output_dir(config.output, protected=[manifest.root, config.cache_dir])
    report_line = reporter or Reporter(len(manifest.models), width=max(
        len(name) for name in [m.id for m in manifest.models] + [c.id for c in
                                                                 manifest.comparisons]))
    project = config.project_dir or project_dir_for(manifest, config.cache_dir)
    report = BuildReport([], project=project)
    site_start = time.perf_counter()
    try:
        written, report.models = generate_project(manifest, config, project, builder,
                                                  report_line)
        report_line(-1, "site", "site", f"{written} project file(s) changed; mkdocs build")
        site_start = time.perf_counter()
        build_site(project, config.output, strict=config.strict)
    except Exception as err:  # the site is one unit: report it, as a model failure would be
        report.site_error = _describe(err)
        report_line(-1, "site", "site", f"FAILED: {report.site_error}")
    else:
        report.output = config.output
        report.size = measure_site(config.output)
        report_line(-1, "site", "site", f"built in {time.perf_counter() - site_start:.1f} s: "
                    f"{report.size.files} files, {_mb(report.size.total_bytes)}")
    report.seconds = time.perf_counter() - start
    return report


def generate_project(manifest: Manifest, config: BuildConfig, project: Path,
                     builder: ModelBuilder, report: Reporter
                     ) -> tuple[int, list[ModelOutcome]]:
    """Models, comparisons, then the MkDocs project; returns (files changed, outcomes)."""
    entries, fetched, outcomes = prepare_models(manifest, config, builder, report)
    for entry in entries:  # legend thumbnails, shown with the feature labels on model pages
        if entry.ok and entry.result.interface and entry.folder:
            from gallery.site.matching import model_legends

            try:
                entry.legends = model_legends(entry.folder / entry.result.interface,
                                              config.cache_dir / "legends" / entry.result.key)
            except (OSError, ValueError, KeyError) as err:
                log.warning("%s: no legend thumbnails (%s)", entry.spec.id, err)
    comparisons = prepare_comparisons(manifest, entries, fetched, config.cache_dir, report,
                                      interfaces=config.interfaces)
    info = BuildInfo(built=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                     version=__version__)
    written = write_project(plan_project(manifest.site, entries, comparisons, info,
                                         zoo_dir=manifest.root), project)
    return written, outcomes


def refresh_project(manifest: str, cache_dir: str, project: str, retries: int = 3,
                    interfaces: bool = True) -> int:
    """Bring a generated project up to date with its manifest (for `gallery serve`)."""
    from gallery.pipeline.manifest import load_manifest

    loaded = load_manifest(manifest)
    config = BuildConfig(output=Path(project) / "unused", cache_dir=Path(cache_dir),
                         fetch=FetchPolicy(retries=retries), interfaces=interfaces)
    written, _ = generate_project(loaded, config, Path(project), build_model,
                                  Reporter(len(loaded.models)))
    return written


def prepare_models(manifest: Manifest, config: BuildConfig, builder: ModelBuilder,
                   report: Reporter) -> tuple[list[ModelEntry], dict[str, Fetched],
                                              list[ModelOutcome]]:
    """Fetch and build each model in turn; a failure stays with its model.

    With a worker pool or under MPI (`mpiexec -n N gallery build`,
    gallery.pipeline.distributed), the interface units of every model to build are first
    computed together (`pool_interface_units`); each model's build then only assembles its
    bundle from the unit store (on rank 0)."""
    cache = Cache(config.cache_dir)
    entries, fetched, outcomes = [], {}, []
    if config.interfaces and builder is build_model:
        pool_interface_units(manifest, config, report)
    for index, spec in enumerate(manifest.models):
        outcome = ModelOutcome(spec.id)
        entry = ModelEntry(spec)
        start = time.perf_counter()

        def say(stage: str, message: str, index: int = index, spec: ModelSpec = spec) -> None:
            report(index, spec.id, stage, message)

        try:
            outcome.stage = "fetch"
            got = fetch_model(spec, manifest, cache, config)
            fetched[spec.id] = got
            outcome.fetched = got.origin
            say("fetch", f"{got.origin}: sha256 {got.sha256[:12]}")
            outcome.stage = "model"
            entry.result, entry.folder, outcome.status = model_result(
                spec, got, ModelSettings.of(manifest, spec), config, builder, say)
            outcome.stage, outcome.mean_return = "", entry.result.episodes.mean_return
        except Exception as err:  # isolate the failure: the other models still build
            outcome.status, outcome.error = "failed", _describe(err)
            entry.error = f"{outcome.stage}: {outcome.error}"
            _save_traceback(config.cache_dir, spec.id, err)
            say(outcome.stage, f"FAILED: {outcome.error}")
        outcome.seconds = time.perf_counter() - start
        entries.append(entry)
        outcomes.append(outcome)
    return entries, fetched, outcomes


def fetch_model(spec: ModelSpec, manifest: Manifest, cache: Cache, config: BuildConfig
                ) -> Fetched:
    """The model's checkpoint, fetched and verified (gallery.models.fetch); for an adapter
    without one, no file and the adapter's own digest."""
    if spec.checkpoint is None:
        from gallery.models.adapters import adapter_digest

        return Fetched(None, adapter_digest(spec.adapter or ""), "adapter")
    return fetch_checkpoint(spec.checkpoint, spec.sha256, cache, root=manifest.root,
                            policy=config.fetch)


def pool_interface_units(manifest: Manifest, config: BuildConfig, report: Reporter,
                         context: Any = None) -> Any:
    """Compute the interface units of every model still to build, pooled: spread over the
    MPI ranks, or over the local worker processes (gallery.pipeline.units.current_pool),
    dependencies respected, any worker taking the next ready unit, so that the units of
    one model run beside those of another. A no-op in a single process, where each model
    computes its own units in turn. Returns the RunSummary, or None when there was nothing
    to pool. A model whose units cannot be planned or computed is left to its own build,
    which reports the failure."""
    from gallery.pipeline import distributed
    from gallery.pipeline.interface import interface_builder
    from gallery.pipeline.units import Interrupted, StopFlag, current_pool, run_units, unique_units

    context = context or distributed.current()
    executor, workers = context.executor, context.workers
    where = f"{context.size} MPI ranks"
    if executor is None:
        executor, workers = current_pool()
        where = f"this process and {workers} worker(s)"
    if executor is None:
        return None
    cache = Cache(config.cache_dir)
    units, store, made, builders = [], None, {}, {}

    def make(model_id: str, rollouts: InterfaceBuilder | None = None) -> InterfaceBuilder:
        got, settings, title = made[model_id]
        return interface_builder(got.path, config.cache_dir / "unused", settings.options,
                                 adapter=settings.adapter, env=settings.env, title=title,
                                 model_id=model_id, rollouts=rollouts)

    for index, spec in enumerate(manifest.models):
        try:
            got = fetch_model(spec, manifest, cache, config)
            settings = ModelSettings.of(manifest, spec)
            made[spec.id] = got, settings, spec.title
            builders[spec.id] = planned = make(spec.id)
            store = planned.store  # the store build_interface's builders read
            key = model_key(got.sha256, settings, config.interfaces)
            if not config.force and ModelResult.load(config.cache_dir / "models" / key):
                continue
            units += planned.plan().units
        except Exception as err:  # reported by the model's own build below
            report(index, spec.id, "model", f"not pooled ({_describe(err)})")
    # the comparisons' interfaces on shared trajectories (side_by_side) join the pool: their
    # units depend on the source model's rollouts unit, not on the finished model
    comparisons = 0
    for spec in manifest.comparisons:
        ids = side_by_side_order(spec.kind == "training",
                                 [i for i in spec.models if i in builders])
        try:
            if len(ids) > 1 and len({_game(builders[i]) for i in ids}) == 1:
                for i in ids[1:]:
                    units += make(i, rollouts=builders[ids[0]]).plan().units
                comparisons += 1
        except Exception as err:  # reported by the comparison itself
            report(-1, spec.id, "compare", f"not pooled ({_describe(err)})")
    if not units:
        return None
    units = unique_units(units)
    report(-1, "units", "model", f"{len(units)} interface units of {len(manifest.models)} "
           f"model(s) and {comparisons} comparison(s) on {where}")
    try:
        with StopFlag().installed() as stop:
            summary = run_units(units, store, executor=executor, workers=workers, stop=stop)
    except Interrupted as stop:
        report(-1, "units", "model", f"stopped: {stop.summary.describe()}; run the build "
               "again to finish (finished units are kept)")
        raise
    except Exception as err:  # each model retries its own units and reports
        report(-1, "units", "model", f"pooled units stopped: {_describe(err)}")
        return None
    report(-1, "units", "model", summary.describe())
    return summary


def model_result(spec: ModelSpec, got: Fetched, settings: ModelSettings, config: BuildConfig,
                 builder: ModelBuilder, say: Callable[[str, str], None]
                 ) -> tuple[ModelResult, Path, str]:
    """The cached result for (checkpoint, settings), or build it now and cache it."""
    key = model_key(got.sha256, settings, config.interfaces)
    folder = config.cache_dir / "models" / key
    cached = None if config.force else ModelResult.load(folder)
    if cached is not None:
        say("model", f"cached ({key[:12]})")
        return cached, folder, "cached"
    partial = folder.with_name(f".{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    say("model", f"building ({key[:12]})")
    try:
        result = builder(spec, got.path, settings, partial,
                         progress=lambda message: say("model", message),
                         interfaces=config.interfaces)
        result.key = key
        result.save(partial)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    say("model", f"built in {result.seconds:.1f} s: mean return "
        f"{_number(result.episodes.mean_return)} over {result.episodes.count} episode(s)")
    return result, folder, "built"


def _describe(err: BaseException) -> str:
    from gallery.errors import GalleryError

    if isinstance(err, GalleryError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _save_traceback(cache_dir: Path, model_id: str, err: BaseException) -> None:
    path = cache_dir / "logs" / f"{model_id}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(err)))
        log.debug("traceback of %s in %s", model_id, path)
    except OSError:
        pass


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mb(size: int) -> str:
    return f"{size / (1 << 20):.1f} MB"


# --- comparisons --------------------------------------------------------------------------


def prepare_comparisons(manifest: Manifest, entries: list[ModelEntry],
                        fetched: dict[str, Fetched], cache_dir: Path,
                        report: Reporter, interfaces: bool = False) -> list[ComparisonEntry]:
    """Each comparison, with its models evaluated on shared observations when possible, and
    (with `interfaces`) their interfaces on shared trajectories and matched features."""
    by_id = {e.spec.id: e for e in entries}
    out = []
    for spec in manifest.comparisons:
        entry = ComparisonEntry(spec)
        try:
            entry.shared, entry.folder, entry.note = shared_observations(
                spec, by_id, fetched, cache_dir, manifest=manifest if interfaces else None,
                say=lambda message, spec=spec: report(-1, spec.id, "compare", message))
        except Exception as err:  # a comparison's extra never stops the site
            entry.note = f"The models could not be evaluated on shared observations: " \
                         f"{_describe(err)}"
        report(-1, spec.id, "compare", entry.note or "shared observations ready")
        out.append(entry)
    return out


def shared_observations(spec: ComparisonSpec, models: dict[str, ModelEntry],
                        fetched: dict[str, Fetched], cache_dir: Path, *,
                        manifest: Manifest | None = None,
                        say: StageProgress | None = None
                        ) -> tuple[SharedObservations | None, Path | None, str | None]:
    """Every model of `spec` on frames recorded by its first built model (cached by the
    models' keys). With `manifest` (interfaces on), also every model's interface on one
    shared set of trajectories, and their features matched (see `side_by_side`).

    Models of different games (gallery.site.matching.game: environment or observation
    shape) share nothing of this: none is evaluated, and the note says so; the page shows
    each model's own interface and features instead."""
    from gallery.site import matching

    built = [models[i] for i in spec.models if models[i].ok and i in fetched]
    if len(built) < 2:
        return None, None, "Fewer than two of these models were built."
    games = matching.by_game([e.result for e in built])
    if len(games) > 1:
        # one model's frames mean nothing to a model of another game (and mostly do not
        # fit its input): each is shown on its own trajectories (gallery.site.pages)
        return None, None, matching.different_games_note(
            {g: [built[i].spec.title for i in indices] for g, indices in games.items()})
    training = spec.kind == "training"
    # a training run's trajectories are those of its last (trained) checkpoint: an
    # untrained agent's would show little of the game
    source = next((e for e in (built[::-1] if training else built)
                   if (e.folder / ROLLOUTS_FILE).is_file()), None)
    if source is None:
        return None, None, "No model of this comparison has recorded observations."
    key = hashlib.sha256(json.dumps(
        {"models": [e.result.key for e in built], "source": source.spec.id,
         "format": COMPARISON_FORMAT_VERSION, "interfaces": manifest is not None,
         "bundle_format": bundle_format_version(),
         **({"kind": spec.kind} if training else {})}, sort_keys=True).encode()).hexdigest()
    folder = cache_dir / "comparisons" / key
    saved = folder / "shared.json"
    if saved.is_file():
        return SharedObservations(**json.loads(saved.read_text())), folder, None
    frames = _shared_frames(source.folder / ROLLOUTS_FILE)
    values, actions = {}, {}
    for e in built:
        values[e.spec.id], actions[e.spec.id] = _evaluate(fetched[e.spec.id].path, frames,
                                                          e.spec)
    partial = folder.with_name(f".{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _save_strip(frames, partial / "frames.png")
        shared = SharedObservations(source.spec.id, "frames.png", values, actions, SHARED_STRIDE)
        note = None
        if manifest is not None:
            try:
                side_by_side(manifest, built, fetched, partial, shared, cache_dir,
                             say or (lambda message: None), training=training)
            except Exception as err:  # the statistics stay; the interfaces are reported
                log.debug("side-by-side interfaces of %s failed", spec.id, exc_info=True)
                note = f"The interfaces on shared trajectories could not be built: " \
                       f"{_describe(err)}"
                shutil.rmtree(partial / INTERFACE_DIR, ignore_errors=True)
                shared.interfaces, shared.matched = {}, []
        (partial / "shared.json").write_text(json.dumps(asdict(shared)))
        if note is None:  # a failure is retried on the next build
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
        else:
            folder = partial.with_name(f".{key}.failed")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return shared, folder, note


def side_by_side(manifest: Manifest, built: list[ModelEntry], fetched: dict[str, Fetched],
                 folder: Path, shared: SharedObservations, cache_dir: Path,
                 say: StageProgress, training: bool = False) -> None:
    """Every model's interface on ONE set of trajectories and extra observations, into
    `folder/interface/<model id>/`: those recorded (once, one environment seed) by the first
    model's own interface -- rebuilt here from the cached units for free -- which the other
    models' interfaces are given (`generate_interface`'s `rollouts`). Then the features of every
    layer present in all models are matched by the correlation of their activations on the
    shared frames (gallery.site.matching), with legend thumbnails in `folder/matched/`.

    With `training` (checkpoints of one run, in order), the LAST model records the shared
    trajectories and its features are the ones matched in every earlier checkpoint; the
    cells of each row stay in checkpoint order."""
    from gallery.pipeline.interface import interface_builder
    from gallery.site import matching

    del cache_dir  # the interfaces keep their units where the models' interfaces do
    activations, thumbnails = {}, {}
    frames, source = None, None
    by_id = {e.spec.id: e for e in built}
    for model_id in side_by_side_order(training, list(by_id)):
        entry = by_id[model_id]
        settings = ModelSettings.of(manifest, entry.spec)
        target = folder / INTERFACE_DIR / model_id
        builder = interface_builder(
            fetched[model_id].path, target, settings.options, adapter=settings.adapter,
            env=settings.env, title=entry.spec.title, model_id=model_id, rollouts=source,
            progress=lambda message, model_id=model_id: say(f"{model_id}: {message}"))
        builder.run()
        if source is None:  # the shared trajectories: those of the first model's interface
            source = builder
            recorded, observations, _ = builder.recorded()
            frames = matching.sample_frames(recorded.observations)
            shared.shared_steps = [recorded.num_envs, recorded.num_steps]
            say(f"shared trajectories: {recorded.num_envs} x {recorded.num_steps} steps and "
                f"{len(observations)} observations, recorded by {model_id}")
        shared.interfaces[model_id] = f"{INTERFACE_DIR}/{model_id}"
        activations[model_id] = matching.feature_activations(builder, frames)
        thumbnails[model_id] = matching.legend_thumbnails(target, folder / MATCHED_DIR,
                                                          model_id)
    ids = [e.spec.id for e in built]
    say("matching features")
    if training:
        shared.interfaces = {i: shared.interfaces[i] for i in ids}  # checkpoint order
    layers = matching.common_layers([list(activations[i]) for i in ids])
    if not layers and all(activations[i] for i in ids):
        # architectures that name their layers differently: pair the layers nearest the
        # outputs (each model's last analysed layer)
        last = {i: list(activations[i])[-1] for i in ids}
        label = " / ".join(dict.fromkeys(last.values()))
        activations = {i: {label: activations[i][last[i]]} for i in ids}
        thumbnails = {i: {label: thumbnails.get(i, {}).get(last[i], [])} for i in ids}
        layers = [label]
    for layer in layers:
        if training:
            rows = matching.match_training([activations[i][layer] for i in ids])
            shared.matched.append({"layer": layer, "models": ids, "kind": "training",
                                   "rows": [{"cells": [
                {"model": i, "feature": m["feature"], "similarity": m["similarity"],
                 "image": _thumb(thumbnails, i, layer, m["feature"])}
                for i, m in zip(ids[:-1], row["matches"], strict=True)]
                + [{"model": ids[-1], "feature": row["feature"], "similarity": None,
                    "image": _thumb(thumbnails, ids[-1], layer, row["feature"])}]}
                for row in rows]})
            continue
        rows = matching.match_layer([activations[i][layer] for i in ids])
        shared.matched.append({"layer": layer, "models": ids, "rows": [
            {"cells": [{"model": ids[0], "feature": row["feature"], "similarity": None,
                        "image": _thumb(thumbnails, ids[0], layer, row["feature"])}]
             + [{"model": i, "feature": m["feature"], "similarity": m["similarity"],
                 "image": _thumb(thumbnails, i, layer, m["feature"])}
                for i, m in zip(ids[1:], row["matches"], strict=True)]}
            for row in rows]})


def side_by_side_order(training: bool, ids: list[str]) -> list[str]:
    """The models of a comparison in the order `side_by_side` builds their interfaces: the
    one whose trajectories they share first (a training run's last checkpoint, otherwise the
    first model)."""
    return ids[::-1] if training else ids


def _game(builder: InterfaceBuilder) -> tuple[str, str, tuple[int, ...]]:
    from gallery.site import matching

    builder.plan()  # prepares the policy and the environment
    return matching.game_of(builder.spec.to_dict(), builder.policy.observation_shape)


def _thumb(thumbnails: dict[str, dict[str, list[str]]], model_id: str, layer: str,
           feature: int) -> str | None:
    names = thumbnails.get(model_id, {}).get(layer, [])
    return f"{MATCHED_DIR}/{names[feature]}" if feature < len(names) else None


def _shared_frames(rollouts_path: Path) -> np.ndarray:
    with np.load(rollouts_path, allow_pickle=False) as data:
        observations = data["trajectories.observations"]
    return observations[0, ::SHARED_STRIDE][:SHARED_FRAMES]


def _load_on_device(checkpoint_path: Path | None, adapter: str | None, env: Any) -> Any:
    """The model (gallery.load_policy) on the build's device ($GALLERY_DEVICE, set by
    `gallery build --device`; under MPI the rank's GPU)."""
    from gallery.models.policy import load_policy
    from gallery.pipeline.distributed import current, resolve_device

    return load_policy(checkpoint_path, adapter=adapter, env=env).to(
        resolve_device(None, current().local_rank))


def _evaluate(checkpoint_path: Path | None, frames: np.ndarray, spec: ModelSpec
              ) -> tuple[list[float], list[str]]:
    import torch

    from gallery.method.attribution import prepare_observations

    policy = _load_on_device(checkpoint_path, spec.adapter, spec.env)
    if tuple(policy.observation_shape) != tuple(frames.shape[1:]):
        raise ValueError(f"{spec.id} takes {tuple(policy.observation_shape)} "
                         f"observations, the shared ones are {tuple(frames.shape[1:])}")
    with torch.inference_mode():
        logits, value = policy(prepare_observations(policy, frames))
    names = [policy.action_names[i] for i in logits.argmax(-1).tolist()]
    return [round(float(v), 4) for v in value], names


def _save_strip(frames: np.ndarray, path: Path, per_row: int = 8) -> None:
    """The frames as a grid, `per_row` to a row, in order (empty cells stay black)."""
    from PIL import Image

    rgb = frames[..., -3:] if frames.shape[-1] >= 3 else np.repeat(frames[..., -1:], 3, -1)
    rows = -(-len(rgb) // per_row)
    padded = np.zeros((rows * per_row, *rgb.shape[1:]), np.uint8)
    padded[:len(rgb)] = rgb
    grid = np.concatenate([np.concatenate(list(padded[r * per_row:(r + 1) * per_row]), axis=1)
                           for r in range(rows)], axis=0)
    Image.fromarray(grid).save(path, optimize=True)


# --- size, summary -----------------------------------------------------------------------


def format_summary(report: BuildReport) -> str:
    """The table printed at the end of a build."""
    width = max([len(m.model_id) for m in report.models] + [5])
    lines = [f"{'model':<{width}}  {'status':<7} {'fetch':<8} {'time':>8}  {'return':>7}  "
             "problem"]
    for m in report.models:
        problem = f"{m.stage}: {m.error}" if m.error else ""
        status = m.status.upper() if m.status == "failed" else m.status
        lines.append(f"{m.model_id:<{width}}  {status:<7} {m.fetched or '-':<8} "
                     f"{m.seconds:>7.1f}s  {_number(m.mean_return):>7}  {problem}")
    built = sum(m.status == "built" for m in report.models)
    cached = sum(m.status == "cached" for m in report.models)
    failed = sum(m.status == "failed" for m in report.models)
    lines.append(f"models: {built} built, {cached} cached, {failed} failed; "
                 f"total {report.seconds:.1f} s")
    if report.site_error:
        lines.append(f"site: FAILED: {report.site_error}")
    elif report.size:
        size = report.size
        lines.append(f"site: {report.output} ({size.files} files, {_mb(size.total_bytes)}; "
                     f"largest {size.largest_path}, {_mb(size.largest_bytes)})")
        lines += ["size by model (its page, interface and comparison interfaces):",
                  *size.share_lines()]
        errors, warnings = size.problems()
        lines += [f"size: ERROR: {e}" for e in errors] + [f"size: warning: {w}"
                                                           for w in warnings]
    lines += report.notes
    return "\n".join(lines)

"""NMF stages of an interface: scikit-learn's public NMF against gallery.method.nmf, on real frames.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_nmf.py [--frames 128] [--repeats 3]
        [--layers 1a 2a 2b 3a 4a] [--paper | --checkpoint PATH] [--device cuda]
        [--rev GIT-REVISION] [--stages fit transform reduce] [--observations ROLLOUTS.npz]

The data is what an interface feeds NMF: CoinRun frames recorded with the policy
(gallery.environments.rollouts, extra observations of 32 environments, one every 128 steps; saved in
.cache/bench/ and reused), the value attribution of those frames at each layer
(integrated gradients, 10 steps) and the layer's activations. The checkpoint is the
project's demo, gallery/demo/coinrun-clear.jd; `--paper` takes ../shared's coinrun.jd.

Per layer, three stages, each side timed on the same arrays, the sides alternating, best
of `--repeats` (wall time, and the process's CPU time, which a shared machine inflates
less):

- fit: `NMF(n_components=8, init='nndsvd', solver='cd', beta_loss='frobenius',
  tol=1e-4, max_iter=200, random_state=0).fit(signed_rows(attr))` ("plain"), the same
  with BLAS on one thread ("plain, 1 BLAS thread"), and `gallery.method.nmf.fit_nmf(attr)`;
  the components' relative difference from plain's and each one's relative
  reconstruction loss ||X - W H|| / ||X|| (W by scikit-learn's transform).
- transform (feature views): the activations through `NMF.transform` with plain's
  components, and through `LayerNMF.transform` (also on `--device` when given).
- reduce (attribution): `reduce_attribution` of the attribution written with two
  `NMF.transform` calls, against `LayerNMF.reduce_attribution` (and on `--device`).

`--rev` adds gallery/method/nmf.py at a git revision as further sides (for example 18a1591, the
hand-organised fit and transform this file was written to judge).
An interface at its defaults fits on 4096 extra observations: 2 x 4096 x h x w rows
(1a: 33.6M x 16; 2a and 2b: 8.4M x 32; 3a: 2.1M x 32; 4a: 0.5M x 32).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from analysis import _activations
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from gallery.environments import EnvSpec
from gallery.environments.rollouts import (
    ObservationConfig,
    TrajectoryConfig,
    load_or_collect,
    load_rollouts,
)
from gallery.method.attribution import integrated_gradients
from gallery.models.policy import load_policy

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "gallery" / "demo" / "coinrun-clear.jd"
PAPER = REPO.parent / "shared" / "checkpoints" / "coinrun.jd"
K = 8


def plain_model(components: np.ndarray | None = None) -> NMF:
    model = NMF(n_components=K, init="nndsvd", solver="cd", beta_loss="frobenius", tol=1e-4,
                max_iter=200, random_state=0)
    if components is not None:  # a fitted model with these components, for transform
        model.components_ = components
        model.n_components_ = components.shape[0]
        model.n_features_in_ = components.shape[1]
    return model


def signed_rows(attr: np.ndarray) -> np.ndarray:
    c = attr.shape[-1]
    return np.concatenate([np.maximum(attr, 0).reshape(-1, c),
                           np.maximum(-attr, 0).reshape(-1, c)])


def plain_reduce(model: NMF, attr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """method.md 5.4 with scikit-learn's transform."""
    flat = attr.reshape(-1, attr.shape[-1])
    reduced = model.transform(np.maximum(flat, 0)) - model.transform(np.maximum(-flat, 0))
    norms = model.components_.sum(axis=1)
    residual = flat.sum(axis=-1, dtype=np.float64) - reduced.astype(np.float64) @ norms
    return ((reduced * norms).reshape(attr.shape[:-1] + (K,)),
            residual.astype(np.float32).reshape(attr.shape[:-1]))


def nmf_module(rev: str | None) -> types.ModuleType:
    """gallery.method.nmf, or its text at git revision `rev` loaded as a module of gallery."""
    if rev is None:
        import gallery.method.nmf
        return gallery.method.nmf
    # before and after the move into gallery/method
    return module_at(rev, ("gallery/method/nmf.py", "gallery/nmf.py"), "gallery.method")


def module_at(rev: str, paths: tuple[str, ...], package: str) -> types.ModuleType:
    """The first of `paths` that exists at git revision `rev`, loaded as a module of
    `package` (its imports resolve in this tree)."""
    for path in paths:
        show = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"],
                              capture_output=True, check=False)
        if show.returncode == 0:
            break
    else:
        raise SystemExit(f"none of {', '.join(paths)} at {rev}")
    module = types.ModuleType(f"{package}._{Path(path).stem}_{rev}")
    module.__package__ = package
    sys.modules[module.__name__] = module
    exec(compile(show.stdout, f"{rev}:{path}", "exec"), module.__dict__)  # noqa: S102 (this repository's own code)
    return module


def timed_alternating(repeats: int, sides: dict[str, Callable[[], object]]
                      ) -> tuple[dict[str, tuple[float, float]], dict[str, object]]:
    """Best (wall, CPU) seconds of each side over `repeats` rounds, the order of the sides
    reversed every other round; the last result of each."""
    names = list(sides)
    best = {n: (math.inf, math.inf) for n in names}
    results: dict[str, object] = {}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = sides[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best, results


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def loss(rows: np.ndarray, amounts: np.ndarray, components: np.ndarray) -> float:
    """||X - W H|| / ||X||, in float64, a block of rows at a time."""
    err = total = 0.0
    h = components.astype(np.float64)
    for s in range(0, len(rows), 1 << 20):
        x = rows[s:s + (1 << 20)].astype(np.float64)
        err += float(np.sum((x - amounts[s:s + (1 << 20)] @ h) ** 2))
        total += float(np.sum(x ** 2))
    return math.sqrt(err / total)


def record_frames(policy: torch.nn.Module, checkpoint: Path, frames: int) -> np.ndarray:
    envs = min(32, frames)
    per_env = math.ceil(frames / envs)
    path = REPO / ".cache" / "bench" / f"nmf-{checkpoint.stem}-{envs}x{per_env}.npz"
    rollouts = load_or_collect(path, policy, EnvSpec.from_args(policy.args, {}),
                               trajectories=TrajectoryConfig(1, 1),
                               observations=ObservationConfig(envs, per_env, 128), seed=0)
    return rollouts.observations[:frames]


def row(label: str, times: tuple[float, float], base: tuple[float, float] | None,
        extra: str = "") -> None:
    ratio = "" if base is None else f"{base[0] / times[0]:7.2f}x {base[1] / times[1]:6.2f}x"
    print(f"  {label:<30}{times[0]:9.3f} s {times[1]:9.3f} s  {ratio:<17}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", nargs="+", default=None)
    parser.add_argument("--checkpoint", type=Path, default=DEMO)
    parser.add_argument("--paper", action="store_true", help=f"use {PAPER}")
    parser.add_argument("--device", default=None,
                        help="also run gallery.method.nmf's transforms there")
    parser.add_argument("--rev", default=None,
                        help="also gallery/method/nmf.py at this git revision")
    parser.add_argument("--observations", type=Path, default=None,
                        help="take the frames from this saved rollouts file's extra "
                        "observations (for example .cache/bench/coinrun-hard-rollouts.npz, "
                        "which benchmarks/bench_analysis.py saves) instead of recording them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", nargs="+", default=["fit", "transform", "reduce"],
                        choices=["fit", "transform", "reduce"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ConvergenceWarning)
    checkpoint = PAPER if args.paper else args.checkpoint
    modules = {"gallery.method.nmf": nmf_module(None)}
    if args.rev:
        modules[f"gallery.method.nmf@{args.rev}"] = nmf_module(args.rev)
    policy = load_policy(checkpoint)
    frames = (load_rollouts(args.observations).observations[:args.frames] if args.observations
              else record_frames(policy, checkpoint, args.frames))
    print(f"{checkpoint.name}, {len(frames)} frames, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}); best of {args.repeats}, wall "
          "and CPU seconds, plain/side time ratios (wall, CPU)")
    for layer in args.layers or list(policy.layer_names):
        start = time.perf_counter()
        attr = integrated_gradients(policy, frames, layer, "value", 10)
        seconds = time.perf_counter() - start  # the rest of an interface's NMF unit
        acts = _activations(policy, frames, layer)
        rows = signed_rows(attr)
        print(f"\n{layer}: attribution {attr.shape} ({seconds:.1f} s, once), "
              f"{len(rows):,} signed rows")

        if "fit" in args.stages:
            h = fit_stage(args.repeats, rows, attr, modules)
        else:  # the components the other stages use
            with threadpool_limits(1, user_api="blas"):
                h = plain_model().fit(rows).components_
        model = plain_model(h)
        layer_nmfs = {label: module.LayerNMF(h) for label, module in modules.items()}
        if "transform" in args.stages:
            transform_stage(args, acts, model, layer_nmfs)
        if "reduce" in args.stages:
            reduce_stage(args, attr, model, layer_nmfs)


def fit_stage(repeats: int, rows: np.ndarray, attr: np.ndarray,
              modules: dict[str, types.ModuleType]) -> np.ndarray:
    """Times and compares the fits; plain's components."""
    def fit_one_thread() -> NMF:
        with threadpool_limits(1, user_api="blas"):
            return plain_model().fit(rows)

    sides = {"plain": lambda: plain_model().fit(rows), "plain, 1 BLAS thread": fit_one_thread}
    for label, module in modules.items():
        sides[f"{label}.fit_nmf"] = lambda module=module: module.fit_nmf(attr)
    times, done = timed_alternating(repeats, sides)
    h = done["plain"].components_
    print("  fit")
    for name, result in done.items():
        components = result.components_ if isinstance(result, NMF) else result.components
        n_iter = result.n_iter_ if isinstance(result, NMF) else result.n_iter
        amounts = plain_model(components).transform(rows)
        row(name, times[name], None if name == "plain" else times["plain"],
            f"{n_iter:3d} it, H vs plain {relative(components, h):.1e}, "
            f"loss {loss(rows, amounts, components):.6f}")
    return h


def transform_stage(args: argparse.Namespace, acts: np.ndarray, model: NMF,
                    layer_nmfs: dict[str, object]) -> None:
    flat = acts.reshape(-1, acts.shape[-1])
    sides = {"plain": lambda: model.transform(flat)}
    for label, layer_nmf in layer_nmfs.items():
        sides[label] = lambda layer_nmf=layer_nmf: layer_nmf.transform(acts)
    if args.device:
        ours = layer_nmfs["gallery.method.nmf"]
        sides[f"gallery.method.nmf {args.device}"] = lambda: ours.transform(
            acts, device=args.device)
    times, done = timed_alternating(args.repeats, sides)
    print("  transform (activations)")
    for name, result in done.items():
        result = result.reshape(-1, K)
        row(name, times[name], None if name == "plain" else times["plain"],
            f"vs plain {relative(result, done['plain']):.1e}, "
            f"loss {loss(flat, result, model.components_):.6f}")


def reduce_stage(args: argparse.Namespace, attr: np.ndarray, model: NMF,
                 layer_nmfs: dict[str, object]) -> None:
    sides = {"plain": lambda: plain_reduce(model, attr)}
    for label, layer_nmf in layer_nmfs.items():
        sides[label] = lambda layer_nmf=layer_nmf: layer_nmf.reduce_attribution(attr)
    if args.device:
        sides[f"gallery.method.nmf {args.device}"] = lambda: layer_nmfs[
            "gallery.method.nmf"].reduce_attribution(attr, device=args.device)
    times, done = timed_alternating(args.repeats, sides)
    print("  reduce (attribution)")
    for name, (features, residual) in done.items():
        row(name, times[name], None if name == "plain" else times["plain"],
            f"features vs plain {relative(features, done['plain'][0]):.1e}, "
            f"residual {relative(residual, done['plain'][1]):.1e}")


if __name__ == "__main__":
    main()

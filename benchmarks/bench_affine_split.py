"""Integrated gradients after the convolution that reads a layer, against the plain passes.

    .venv/bin/python benchmarks/bench_affine_split.py
        [--checkpoint ../shared/checkpoints/coinrun.jd] [--observations 1024] [--frames 512]
        [--repeats 2]

Where a layer is read only by a convolution (clear's 2a, Nature's c1 and c2),
`gallery.method.attribution` pushes the 10 scaled copies through that convolution once and
the summed gradients back through it once (`policy.affine_split`). This prints, for each
such layer, the two units of an interface that run integrated gradients there, with the
split ("after") and without it ("plain": `affine_split` turned off), the sides
alternating, best of `--repeats` (wall seconds on one torch thread, as a worker runs):

- **nmf**: value IG of `--observations` extra observations and the NMF fit (`unit_nmf`);
- **attribution**: value IG of one `--frames`-frame trajectory, reduced to the NMF features
  and encoded (`unit_attribution`);

with the IG alone beside each, and the largest difference of the two sides' attribution
relative to its largest value. The frames are the method's default rollouts cached by
benchmarks/bench_analysis.py (.cache/bench/coinrun-hard-rollouts.npz; recorded there when
absent).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from gallery.bundle import codec
from gallery.environments import EnvSpec
from gallery.environments.rollouts import ObservationConfig, TrajectoryConfig, load_or_collect
from gallery.method.attribution import integrated_gradients
from gallery.method.nmf import fit_nmf
from gallery.models.policy import load_policy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "checkpoints" / "coinrun.jd"
ROLLOUTS = REPO / ".cache" / "bench" / "coinrun-hard-rollouts.npz"


def best(repeats: int, sides: dict[str, Callable[[], object]]) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(repeats):
        names = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for name in names:
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--observations", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint)
    spec = EnvSpec.from_args(policy.args, {"distribution_mode": "hard", "num_levels": 0})
    rollouts = load_or_collect(ROLLOUTS, policy, spec, trajectories=TrajectoryConfig(8, 512),
                               observations=ObservationConfig(32, 128, 128), seed=0)
    extra = rollouts.observations[:args.observations]
    frames = rollouts.trajectories.observations[0][:args.frames]
    split = [layer for layer in policy.layer_names if policy.affine_split(layer)]
    print(f"{args.checkpoint.name}: layers read by one convolution: {', '.join(split) or 'none'}"
          f"\n{len(extra)} extra observations, a {len(frames)}-frame trajectory, one thread, "
          f"best of {args.repeats} alternating (s)")
    print(f"{'layer':<7}{'unit':<13}{'plain':>9}{'after':>9}{'ratio':>8}"
          f"{'IG plain':>10}{'IG after':>10}{'ratio':>8}{'max diff':>10}")
    for layer in split:
        compare(policy, layer, extra, frames, args.repeats)


def compare(policy: torch.nn.Module, layer: str, extra: np.ndarray, frames: np.ndarray,
            repeats: int) -> None:
    """Print both units of `layer` and their integrated gradients, plain and after."""
    original = policy.affine_split
    nmf = fit_nmf(integrated_gradients(policy, extra, layer))

    def ig(obs: np.ndarray, on: bool) -> np.ndarray:
        policy.affine_split = original if on else (lambda layer: None)
        try:
            return integrated_gradients(policy, obs, layer)
        finally:
            policy.affine_split = original

    def nmf_unit(on: bool) -> object:
        return fit_nmf(ig(extra, on))

    def attribution_unit(on: bool) -> object:
        features, residual = nmf.reduce_attribution(ig(frames, on))
        return codec.encode(features, residual, target=codec.FidelityTarget())

    for kind, unit, obs in (("nmf", nmf_unit, extra), ("attribution", attribution_unit, frames)):
        whole = best(repeats, {"plain": partial(unit, False), "after": partial(unit, True)})
        alone = best(repeats, {"plain": partial(ig, obs, False), "after": partial(ig, obs, True)})
        a, b = ig(obs, False), ig(obs, True)
        diff = np.abs(a - b).max() / np.abs(a).max()
        print(f"{layer:<7}{kind:<13}{whole['plain']:>9.2f}{whole['after']:>9.2f}"
              f"{whole['plain'] / whole['after']:>7.2f}x{alone['plain']:>10.2f}"
              f"{alone['after']:>10.2f}{alone['plain'] / alone['after']:>7.2f}x"
              f"{diff:>10.1e}", flush=True)

if __name__ == "__main__":
    main()

"""The attribution encoder with its error diffusion compiled (Numba) or in NumPy.

    .venv/bin/python benchmarks/bench_encoder.py [--checkpoint PATH] [--frames 256]
                                                 [--repeats 2]

On real CoinRun frames (one recorded trajectory of the checkpoint, default the demo agent),
per layer: the value attribution reduced by an NMF fitted on it, encoded into an
attribution file by `gallery.bundle.codec.encode` -- the whole stage, as an attribution
unit runs it -- with `COMPILED_DIFFUSION` on and off, alternating, best of `--repeats`.
Prints the times, their ratio and whether the two files are byte-identical.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gallery.bundle import codec
from gallery.environments import EnvSpec
from gallery.environments.rollouts import TrajectoryConfig, collect_trajectories
from gallery.method.attribution import integrated_gradients
from gallery.method.nmf import NMFSettings, fit_nmf
from gallery.models.policy import load_policy

DEMO = Path(__file__).resolve().parents[1] / "gallery" / "demo" / "coinrun-clear-final.jd"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEMO))
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layers", nargs="+", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint)
    recorded = collect_trajectories(policy, EnvSpec.from_args(policy.args),
                                    TrajectoryConfig(1, args.frames), seed=0)
    obs = recorded.observations[0]
    codec.joint_diffuse(codec.split_planes(torch.zeros(1, 2, 2, 1).numpy(),
                                           torch.zeros(1, 2, 2).numpy(), 1.0), [0.01])
    print(f"{args.checkpoint}: {len(obs)} frames; times in s, best of {args.repeats}")
    total = {True: 0.0, False: 0.0}
    for layer in args.layers or policy.layer_names:
        attr = integrated_gradients(policy, obs, layer, "value", 10)
        nmf = fit_nmf(attr, NMFSettings(8, 0))
        features, residual = nmf.reduce_attribution(attr)
        best, files = {True: float("inf"), False: float("inf")}, {}
        for _ in range(args.repeats):
            for compiled in (False, True):
                codec.COMPILED_DIFFUSION = compiled
                start = time.perf_counter()
                files[compiled] = codec.encode(features, residual)
                best[compiled] = min(best[compiled], time.perf_counter() - start)
        codec.COMPILED_DIFFUSION = True
        for compiled in best:
            total[compiled] += best[compiled]
        print(f"{layer:>4}: numpy {best[False]:7.2f}  compiled {best[True]:7.2f}  "
              f"numpy/compiled {best[False] / best[True]:5.2f}x  files "
              f"{'identical' if files[True] == files[False] else 'DIFFER'} "
              f"({len(files[True])} bytes)")
    print(f" all: numpy {total[False]:7.2f}  compiled {total[True]:7.2f}  "
          f"numpy/compiled {total[False] / total[True]:5.2f}x")


if __name__ == "__main__":
    main()

"""How many layer elements one attribution pass should hold (gallery/attribution.py's
ELEMENTS_PER_PASS and ELEMENTS_PER_PASS_MANY), measured per layer of coinrun.jd.

    .venv/bin/python benchmarks/bench_passes.py [--frames 64] [--checkpoint PATH]
        [--layers 1a 2b] [--outputs value|policy|both] [--exponents 18 19 20]

Prints frames/s of value attribution (1 output) and of policy attribution (16 outputs)
for each pass size; best of 3 (CPU time / threads next to it, for shared machines).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_analysis import DEFAULT_ROLLOUTS, best_of_both, load_frames  # run as a script

from gallery import attribution
from gallery.policy import load_policy

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=REPO.parent / "shared" / "checkpoints" / "coinrun.jd")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--layers", nargs="*", default=None)
    parser.add_argument("--outputs", choices=["value", "policy", "both"], default="both")
    parser.add_argument("--exponents", nargs="*", type=int, default=list(range(16, 23)),
                        help="pass sizes 2^e to measure")
    parser.add_argument("--rollouts", type=Path, default=DEFAULT_ROLLOUTS,
                        help="bench_analysis.py's recorded rollouts (recorded if missing)")
    parser.add_argument("--random-frames", action="store_true",
                        help="uniform random frames instead (they rank pass sizes "
                        "differently: see docs/analysis.md)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    policy = load_policy(args.checkpoint)
    if args.random_frames:
        obs = np.random.default_rng(0).integers(0, 256, (args.frames, *policy.observation_shape),
                                                dtype=np.uint8)
    else:  # the frames bench_analysis.py measures: real observations of the game
        args.quick = False
        obs = load_frames(args, policy)[1][:args.frames]
    readouts = {"value": attribution.readout_matrix(policy, ["value"]),
                "policy": attribution.readout_matrix(
                    policy, ["value", *range(policy.num_actions)])}
    x = attribution.prepare_observations(policy, obs)  # (which also sets gallery.allocator)
    if args.outputs != "both":
        readouts = {args.outputs: readouts[args.outputs]}
    print(f"{'layer':<7}{'outputs':<8}" + "".join(f"{'2^' + str(e):>14}" for e in args.exponents))
    for layer in args.layers or policy.layer_names:
        for name, readout in readouts.items():
            cells = []
            for e in args.exponents:
                def run(e: int = e, layer: str = layer, readout: torch.Tensor = readout
                        ) -> None:
                    for _ in attribution._attribution_batches(policy, x, layer, readout, 10,
                                                              elements_per_pass=1 << e):
                        pass
                wall, cpu = best_of_both(3, run)
                cpu /= torch.get_num_threads()
                cells.append(f"{args.frames / wall:>7.0f} ({args.frames / cpu:>4.0f})")
            print(f"{layer:<7}{name:<8}" + "".join(f"{c:>14}" for c in cells), flush=True)


if __name__ == "__main__":
    main()

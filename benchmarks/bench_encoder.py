"""The attribution encoder with its loops compiled (Numba) or in NumPy.

    .venv/bin/python benchmarks/bench_encoder.py [--checkpoint PATH] [--frames 256]
                                                 [--repeats 2] [--layers 1a 2a ...] [--rev REV]
                                                 [--compiled-only]

On real CoinRun frames (one recorded trajectory of the checkpoint, default the demo agent),
per layer: the value attribution reduced by an NMF fitted on it, encoded into an
attribution file by `gallery.bundle.codec.encode` -- the whole stage, as an attribution
unit runs it -- three ways, alternating, best of `--repeats`: all in NumPy; the error
diffusion compiled (`COMPILED_DIFFUSION`); the diffusion and the drawing that checks each
frame's step compiled (`COMPILED_VIEWS`, the default). Prints the times, their ratios
and whether the files are byte-identical.

`--rev REV` adds the encoder of git revision REV (gallery/bundle/codec.py at REV, its
loops compiled) as a fourth side, to compare a change of the encoder's search: its time,
its file's size, and the worst frame's errors of both (each file meets the fidelity
target; the files differ where the two choose different steps). `--compiled-only` leaves
out the NumPy sides.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_nmf import module_at  # the same directory: run as a script

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
    parser.add_argument("--rev", default=None, help="also the encoder at this git revision")
    parser.add_argument("--compiled-only", action="store_true",
                        help="leave out the NumPy sides")
    args = parser.parse_args()
    sides = {"compiled": SIDES["compiled"]} if args.compiled_only else dict(SIDES)
    if args.rev:
        sides[args.rev] = module_at(args.rev, ("gallery/bundle/codec.py",), "gallery.bundle")
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint)
    recorded = collect_trajectories(policy, EnvSpec.from_args(policy.args),
                                    TrajectoryConfig(1, args.frames), seed=0)
    obs = recorded.observations[0]
    codec.joint_diffuse(codec.split_planes(torch.zeros(1, 2, 2, 1).numpy(),
                                           torch.zeros(1, 2, 2).numpy(), 1.0), [0.01])
    print(f"{args.checkpoint}: {len(obs)} frames; times in s, best of {args.repeats}")
    total = dict.fromkeys(sides, 0.0)
    for layer in args.layers or policy.layer_names:
        attr = integrated_gradients(policy, obs, layer, "value", 10)
        nmf = fit_nmf(attr, NMFSettings(8, 0))
        features, residual = nmf.reduce_attribution(attr)
        best, files = dict.fromkeys(sides, float("inf")), {}
        for _ in range(args.repeats):
            for side, how in sides.items():
                encoder = codec
                if isinstance(how, tuple):
                    codec.COMPILED_DIFFUSION, codec.COMPILED_VIEWS = how
                else:
                    encoder = how
                start = time.perf_counter()
                files[side] = encoder.encode(features, residual)
                best[side] = min(best[side], time.perf_counter() - start)
        codec.COMPILED_DIFFUSION = codec.COMPILED_VIEWS = True
        for side in best:
            total[side] += best[side]
        compared = [side for side in SIDES if side in files]
        same = ("" if len(compared) < 2 else "identical " if all(
            files[side] == files["compiled"] for side in compared) else "DIFFER ")
        print(f"{layer:>4}: {times(best)}  files {same}({len(files['compiled'])} bytes)")
        if args.rev:
            print(f"      {args.rev}: {best[args.rev]:7.2f} s, {len(files[args.rev])} bytes, "
                  f"worst frame {errors(files[args.rev])}; this tree {errors(files['compiled'])}"
                  f"; {args.rev}/this tree {best[args.rev] / best['compiled']:5.2f}x time, "
                  f"{len(files[args.rev]) / len(files['compiled']):5.3f}x bytes")
    print(f" all: {times(total)}")
    if args.rev:
        print(f"      {args.rev}: {total[args.rev]:7.2f} s; {args.rev}/this tree "
              f"{total[args.rev] / total['compiled']:5.2f}x")


#: (diffusion compiled, views compiled) of each side
SIDES = {"numpy": (False, False), "diffusion": (True, False), "compiled": (True, True)}


def errors(data: bytes) -> str:
    header = codec.decode(data).header
    return f"MAE {header.worst_mae * 255:.3f}/255, PSNR {header.worst_psnr:.1f} dB"


def times(seconds: dict[str, float]) -> str:
    if "numpy" not in seconds:
        return f"compiled {seconds['compiled']:7.2f}"
    return (f"numpy {seconds['numpy']:7.2f}  diffusion compiled {seconds['diffusion']:7.2f}  "
            f"all compiled {seconds['compiled']:7.2f}  numpy/all "
            f"{seconds['numpy'] / seconds['compiled']:5.2f}x  diffusion/all "
            f"{seconds['diffusion'] / seconds['compiled']:5.2f}x")


if __name__ == "__main__":
    main()

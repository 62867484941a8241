"""Value attribution with and without `gallery.allocator` (glibc keeping freed memory).

    .venv/bin/python benchmarks/bench_allocator.py [--frames 128] [--layers 1a 2a 4a]

Runs each setting in its own child process (the setting is process-wide): per layer,
the best of 5 value attributions of `--frames` CoinRun frames (bench_analysis.py's
recorded observations) and the minor page faults of the last one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, {benchmarks!r})
from bench_analysis import DEFAULT_CHECKPOINT, DEFAULT_ROLLOUTS, load_frames
from gallery.attribution import integrated_gradients
from gallery.policy import load_policy
torch.set_num_threads(2)
policy = load_policy(DEFAULT_CHECKPOINT)
class Args:
    rollouts, quick = DEFAULT_ROLLOUTS, False
frames = load_frames(Args, policy)[1][:{frames}]
out = {{}}
for layer in {layers!r}:
    integrated_gradients(policy, frames, layer)
    times = []
    for _ in range(5):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        integrated_gradients(policy, frames, layer)
        times.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    out[layer] = (min(times), faults)
print(json.dumps(out))
"""


def run(setting: str | None, frames: int, layers: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GALLERY_MALLOC"}
    if setting:
        env["GALLERY_MALLOC"] = setting
    code = CHILD.format(benchmarks=str(Path(__file__).resolve().parent), frames=frames,
                        layers=layers)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--layers", nargs="+", default=["1a", "2a", "2b", "3a", "4a"])
    args = parser.parse_args()
    default = run("default", args.frames, args.layers)
    kept = run(None, args.frames, args.layers)
    print(f"value attribution, {args.frames} frames, best of 5; page faults of the last run")
    print(f"{'layer':<7}{'glibc defaults':>24}{'freed memory kept':>24}{'speed-up':>10}")
    for layer in args.layers:
        (t0, f0), (t1, f1) = default[layer], kept[layer]
        print(f"{layer:<7}{t0:>10.3f} s {f0:>9,} pf{t1:>10.3f} s {f1:>9,} pf{t0 / t1:>9.2f}x")


if __name__ == "__main__":
    main()

"""Policy-attribution bundle of coinrun.jd, estimated from a sample (budget: 200 MB).

    .venv/bin/python benchmarks/bench_policy_bundle.py [--frames 128] [--trajectory 1]
                                                       [--work .cache/bench-bundle]

The full policy bundle (`bench_bundle.py --policy`) needs the policy analysis (about 16
minutes) and then the encoding of 21 outputs instead of 1, about 21 x 15 minutes on one
core. This estimate takes minutes: per layer it fits the layer's NMF as the interface does
(value attribution of the 4096 extra observations), computes the reduced attribution of
every output (value, each action, each action group) on `--frames` frames of one recorded
trajectory, encodes each output as the bundle does, and scales the *measured* value
bundle (`bench_bundle.py`, WORK/interface-value) by the ratio all outputs / value of each
layer's attribution on the sample. Prints the per-layer ratios and the estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_bundle import DEFAULT_CHECKPOINT, MB, report  # the same directory: run as a script

from gallery import analysis, attribution_codec
from gallery import bundle as bundles
from gallery.attribution import integrated_gradients
from gallery.interface import BUNDLE_DIR
from gallery.nmf import NMFSettings, fit_nmf
from gallery.policy import load_policy

BUDGET = 200 * MB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--work", default=".cache/bench-bundle", help="bench_bundle's folder")
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--trajectory", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    root = work / "interface-value" / BUNDLE_DIR
    index = json.loads((root / bundles.INDEX_FILE).read_text())
    rollouts = sorted((work / "cache" / "rollouts").glob("*.npz"))
    if len(rollouts) != 1 or not index.get("layers"):
        raise SystemExit(f"run bench_bundle.py first (one rollout in {work}/cache/rollouts and "
                         f"its bundle in {root})")
    torch.set_num_threads(2)
    policy = load_policy(args.checkpoint)
    recorded = np.load(rollouts[0])
    extra = recorded["observations"]
    frames = recorded["trajectories.observations"][args.trajectory][:args.frames]
    config = analysis.AnalysisConfig(policy_attribution=True)
    outputs = analysis.outputs_for(policy, config)
    value_total = sum(index["files"][name]["bytes"] for name in index["files"])
    estimate = value_total
    layers = {}
    for layer in index["layers"]:
        name = layer["name"]
        start = time.perf_counter()
        attr = integrated_gradients(policy, extra, name, "value", config.nmf_integrate_steps)
        nmf = fit_nmf(attr, NMFSettings(config.nmf_features, config.nmf_random_state))
        del attr
        reduced = analysis._reduced_attributions(policy, frames, name, outputs, nmf,
                                                 config.integrate_steps, None)
        sizes = [len(attribution_codec.encode(f, r, single_features=index["single_features"]))
                 for f, r in reduced]
        ratio = sum(sizes) / sizes[0]
        measured = sum(index["files"][f]["bytes"] for f in layer["attribution"]["value"])
        estimate += measured * (ratio - 1)
        layers[name] = {"value_bytes_sample": sizes[0], "all_outputs_bytes_sample": sum(sizes),
                        "ratio": round(ratio, 2), "outputs": len(sizes),
                        "value_bundle_bytes": measured,
                        "policy_bundle_bytes_estimate": round(measured * ratio),
                        "seconds": round(time.perf_counter() - start, 1)}
        print(f"  {name}: {len(sizes)} outputs = {ratio:.2f} x value on the sample "
              f"({sizes[0] / MB:.3f} MB); {measured / MB:.2f} MB of value attribution in "
              f"the bundle -> {measured * ratio / MB:.1f} MB", file=sys.stderr, flush=True)
    figures = {"sample": {"trajectory": args.trajectory, "frames": len(frames)},
               "value_bundle_bytes": value_total, "layers": layers,
               "policy_bundle_bytes_estimate": round(estimate), "budget_bytes": BUDGET,
               "within_budget": estimate <= BUDGET}
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What coding the 15 actions against a shared prediction costs, checked honestly.

    cd benchmarks && ../.venv/bin/python bench_joint_coding.py [--layer 2b] [--frames 64]
                                                                [--work .cache/bench-bundle]

On `--frames` frames of recorded trajectory 1 (bench_bundle.py's rollout) and one layer
(its NMF fitted as the interface does), prints the bytes of:

1. the value, and the 15 actions each coded on its own (what the bundle does);
2. the mean of the actions' reduced attributions, coded once (the prediction);
3. the corrections action - mean, each against its own scale:
   a. from the exact mean, checked on the correction's own drawing (the proxy of
      `bench_policy_bundle.py --prediction`),
   b. from the decoded mean, checked on the correction's own drawing,
   c. from the exact mean, checked on the drawing of decoded mean + decoded correction
      against the action's (`attribution_codec.encode(..., prediction=, output=)`),
   d. from the decoded mean, checked likewise -- what a viewer adding the two would need.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from bench_policy_bundle import decoded_reduced, layer_sample, sample_arguments

from gallery.bundle import codec as attribution_codec
from gallery.method import rendering


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sample_arguments(parser)
    args = parser.parse_args()
    outputs, reduced, frames = layer_sample(args)
    actions = [reduced[i] for i, o in enumerate(outputs) if o.kind == "action"]
    scales = [rendering.attribution_scale(f) for f, _ in actions]

    def size(f: np.ndarray, r: np.ndarray, **options: object) -> int:
        return len(attribution_codec.encode(f, r, single_features=True, **options))

    print(f"layer {args.layer}, {frames} frames; bytes")
    print(f"  value {size(*reduced[0])}; the 15 actions coded on their own "
          f"{sum(size(f, r) for f, r in actions)}")
    mean = (np.mean([f for f, _ in actions], 0), np.mean([r for _, r in actions], 0))
    data = attribution_codec.encode(*mean, single_features=True)
    decoded = decoded_reduced(data)
    print(f"  the mean, coded once: {len(data)}")
    for label, base, checked in (("a. exact mean, own drawing", mean, False),
                                 ("b. decoded mean, own drawing", decoded, False),
                                 ("c. exact mean, drawing of the sum", mean, True),
                                 ("d. decoded mean, drawing of the sum", decoded, True)):
        total = 0
        for (f, r), m in zip(actions, scales):
            options = {"prediction": decoded, "output": (f, r)} if checked else {}
            total += size(f - base[0], r - base[1], scale=m, **options)
        print(f"  corrections, {label}: {total}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

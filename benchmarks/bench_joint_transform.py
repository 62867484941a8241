"""How much a transform across the policy outputs could save, checked on every drawing.

    cd benchmarks && ../.venv/bin/python bench_joint_transform.py [--layer 2b] [--frames 64]
                                        [--groups-only] [--work .cache/bench-bundle]

The bundle codes each output's reduced attribution on its own. The 15 actions (and the 5
action groups, nearly sums of them) are strongly correlated, so this measures the other
way of coding them jointly: divide each output by its own scale (method.md 6), rotate the
stack of outputs by their Karhunen-Loeve transform (the left singular vectors of the
outputs x positions matrix), quantise the rotated planes, rotate back. Unlike a
prediction plus corrections, every coefficient is quantised
once, and its error reaches each output through an orthogonal matrix.

Both sides use the same crude coder, so that only the transform differs: uniform
rounding to a step q (no error diffusion, no drawing-aware levels), and the zeroth-order
entropy of each plane's integer codes as its size. For each side the largest q is found
(bisection) at which the drawing of *every* output, in every direction and view,
stays within the bundle's fidelity target on every frame (`attribution_codec.frame_errors`
against the exact drawing: MAE <= 1/255). The bundle's real coder is better than this
crude one on both sides (error diffusion, context modelling); the ratio between the two
sides is the figure this prints, with an estimate of the policy bundle if the real coder
gained the same ratio.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from bench_policy_bundle import layer_sample, sample_arguments  # run as a script

from gallery.bundle import codec as attribution_codec
from gallery.method import rendering

MAE_TARGET = 1.0 / 255


def entropy_bits(codes: np.ndarray) -> float:
    """Zeroth-order entropy of the integer codes, times their count."""
    _, counts = np.unique(codes, return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


class Outputs:
    """Outputs (features and residual stacked, (T, h, w, K+1)) divided by their scales."""

    def __init__(self, reduced: list[tuple[np.ndarray, np.ndarray]]):
        self.k = reduced[0][0].shape[-1]
        self.x = np.stack([np.concatenate([f, r[..., None]], -1) / rendering.attribution_scale(f)
                           for f, r in reduced]).astype(np.float64)  # (O, T, h, w, K+1)
        self.views = [attribution_codec.reference_views(self.planes(x)) for x in self.x]

    def planes(self, x: np.ndarray) -> np.ndarray:
        return attribution_codec.split_planes(x[..., :self.k], x[..., self.k], 1.0)

    def worst_mae(self, approx: np.ndarray) -> float:
        """The worst frame's MAE over every output, direction and view of `approx`."""
        return max(attribution_codec.frame_errors(None, self.planes(a), views=v)[0].max()
                   for a, v in zip(approx, self.views, strict=True))

    def code(self, q: float, rotation: np.ndarray | None) -> tuple[np.ndarray, float]:
        """(decoded outputs, bits) with every (rotated) plane rounded to the step q."""
        flat = self.x.reshape(len(self.x), -1)
        coefficients = flat if rotation is None else rotation.T @ flat
        codes = np.round(coefficients / q)
        bits = sum(entropy_bits(c) for row in codes.reshape(self.x.shape)
                   for c in np.moveaxis(row, -1, 0))
        decoded = codes * q if rotation is None else rotation @ (codes * q)
        return decoded.reshape(self.x.shape), bits

    def largest_step(self, rotation: np.ndarray | None) -> tuple[float, float]:
        """(q, bits): the largest step within the target, to 1% (bisection in log q)."""
        low, high = 1e-5, 1.0
        while high / low > 1.01:
            q = (low * high) ** 0.5
            if self.worst_mae(self.code(q, rotation)[0]) <= MAE_TARGET:
                low = q
            else:
                high = q
        return low, self.code(low, rotation)[1]

    def rotation(self) -> tuple[np.ndarray, np.ndarray]:
        """The outputs' KLT (O x O orthogonal) and the share of energy of its leading rows."""
        u, s, _ = np.linalg.svd(self.x.reshape(len(self.x), -1), full_matrices=False)
        return u, np.cumsum(s ** 2) / (s ** 2).sum()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sample_arguments(parser)
    parser.add_argument("--groups-only", action="store_true",
                        help="only the 20 outputs together (the 15 actions alone take as long)")
    parser.add_argument("--separate-estimate-mb", type=float, default=562.0,
                        help="the policy bundle with every output coded on its own "
                             "(bench_policy_bundle.py)")
    parser.add_argument("--value-bundle-mb", type=float, default=28.92,
                        help="the value bundle (bench_bundle.py)")
    args = parser.parse_args()
    start = time.perf_counter()
    outputs, reduced, frames = layer_sample(args)
    print(f"layer {args.layer}, {frames} frames (reduced in "
          f"{time.perf_counter() - start:.0f} s); crude coder, bytes at the largest step "
          f"within MAE 1/255 on every output's drawing", flush=True)
    ratios = {}
    for label, kinds in (("15 actions", {"action"}), ("15 actions + 5 groups",
                                                       {"action", "action_group"})):
        if args.groups_only and kinds == {"action"}:
            continue
        stack = Outputs([reduced[i] for i, o in enumerate(outputs) if o.kind in kinds])
        q_own, bits_own = stack.largest_step(None)
        rotation, energy = stack.rotation()
        q_joint, bits_joint = stack.largest_step(rotation)
        ratios[label] = bits_own / bits_joint
        print(f"{label}: leading directions hold {', '.join(f'{e:.1%}' for e in energy[:3])} "
              f"of the energy", flush=True)
        print(f"  each on its own: q = {q_own:.4g}, {bits_own / 8:,.0f} bytes", flush=True)
        print(f"  rotated jointly: q = {q_joint:.4g}, {bits_joint / 8:,.0f} bytes "
              f"({ratios[label]:.2f} x less)", flush=True)
    ratio = ratios["15 actions + 5 groups"]
    others = args.separate_estimate_mb - args.value_bundle_mb
    print(f"if the bundle's coder gained {ratio:.2f} x on the 20 action and group outputs "
          f"of every layer: {args.value_bundle_mb:.1f} + {others:.0f} / {ratio:.2f} = "
          f"{args.value_bundle_mb + others / ratio:.0f} MB (budget 200 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

`--basis R` (with `--prediction`) predicts the actions from their R leading singular
directions instead (`basis_sizes`), coded once and decoded before the corrections are
taken; `--layers` limits the layers (the estimate then counts the others at the value's
size).

`--prediction` also measures what coding the outputs jointly could save (a proxy; the
codec does not do it): the mean of the actions' reduced attributions coded once, each
action coded as its difference from that mean and each action group as its difference
from the sum of its actions, each difference against the scale of the output it
corrects (`attribution_codec.encode(..., scale=m)`). The drawing of a difference is not
the drawing of the output, so its fidelity check is only an approximation of the one a
joint codec would make.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import analysis
import numpy as np
import torch
from bench_bundle import DEFAULT_CHECKPOINT, MB, report  # the same directory: run as a script

from gallery import bundle as bundles
from gallery.bundle import codec as attribution_codec
from gallery.method import rendering
from gallery.method.attribution import integrated_gradients
from gallery.method.nmf import NMFSettings, fit_nmf
from gallery.models.policy import load_policy
from gallery.pipeline.interface import BUNDLE_DIR

BUDGET = 200 * MB


def predicted_sizes(outputs: list, reduced: list, single_features: bool) -> int:
    """Bytes of every action and group coded as a correction (see the module docstring),
    plus the shared mean of the actions."""
    actions = [i for i, o in enumerate(outputs) if o.kind == "action"]
    mean_f = np.mean([reduced[i][0] for i in actions], axis=0)
    mean_r = np.mean([reduced[i][1] for i in actions], axis=0)
    total = len(attribution_codec.encode(mean_f, mean_r, single_features=single_features))
    for i, output in enumerate(outputs):
        if output.kind == "value":
            continue
        if output.kind == "action":
            pf, pr = mean_f, mean_r
        else:
            pf = sum(reduced[actions[a]][0] for a in output.actions)
            pr = sum(reduced[actions[a]][1] for a in output.actions)
        f, r = reduced[i]
        total += len(attribution_codec.encode(f - pf, r - pr, single_features=single_features,
                                              scale=rendering.attribution_scale(f)))
    return total


def reduced_outputs(policy: torch.nn.Module, extra: np.ndarray, frames: np.ndarray,
                    layer: str, outputs: list, config: analysis.AnalysisConfig) -> list:
    """(features, residual) of every output on `frames`, reduced by the layer's NMF fitted
    as the interface fits it (value attribution of the extra observations)."""
    attr = integrated_gradients(policy, extra, layer, "value", config.nmf_integrate_steps)
    nmf = fit_nmf(attr, NMFSettings(config.nmf_features, config.nmf_random_state))
    del attr
    return analysis._reduced_attributions(policy, frames, layer, outputs, nmf,
                                          config.integrate_steps, None)


def sample_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --work, --layer and --frames: one layer on a sample of frames."""
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--work", default=str(Path(__file__).resolve().parents[1] / ".cache"
                                              / "bench-bundle"), help="bench_bundle's folder")
    parser.add_argument("--layer", default="2b")
    parser.add_argument("--frames", type=int, default=64)


def layer_sample(args: argparse.Namespace) -> tuple[list, list, int]:
    """(outputs, their reduced attributions, frame count): every output of the policy
    analysis on `args.frames` frames of recorded trajectory 1 (bench_bundle.py's rollout),
    reduced by layer `args.layer`'s NMF fitted as the interface fits it."""
    rollouts = sorted((Path(args.work) / "cache" / "rollouts").glob("*.npz"))
    if len(rollouts) != 1:
        raise SystemExit(f"run bench_bundle.py first (one rollout in {args.work}/cache/rollouts)")
    torch.set_num_threads(2)
    policy = load_policy(args.checkpoint)
    recorded = np.load(rollouts[0])
    frames = recorded["trajectories.observations"][1][:args.frames]
    config = analysis.AnalysisConfig(policy_attribution=True)
    outputs = analysis.outputs_for(policy, config)
    reduced = reduced_outputs(policy, recorded["observations"], frames, args.layer, outputs,
                              config)
    return outputs, reduced, len(frames)


def decoded_reduced(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(features (T, h, w, K), residual (T, h, w)) as the viewer decodes a file."""
    parsed = attribution_codec.decode(data)
    planes = parsed.planes_values()  # (T, 2(K+1), h, w), positive then negative parts
    half = planes.shape[1] // 2
    x = (planes[:, :half] - planes[:, half:]) * parsed.header.scale
    x = x.transpose(0, 2, 3, 1)
    return x[..., :-1], x[..., -1]


def basis_sizes(outputs: list, reduced: list, single_features: bool, rank: int,
                basis_scale: float = 1.0) -> tuple[int, float]:
    """Bytes of every action and group coded against a shared basis, and the share of
    the actions' energy the basis holds.

    The actions, each divided by its own scale, are stacked as rows; their `rank` leading
    singular directions (from the rows' Gram matrix) are coded once, in those normalised
    units, at scale `basis_scale` (below 1: finer steps); each action is then coded as
    its difference from its projection on the *decoded* basis, against its own scale,
    and each group as its difference from the sum of its actions' predictions (the proxy
    of `predicted_sizes` otherwise)."""
    actions = [i for i, o in enumerate(outputs) if o.kind == "action"]
    scales = np.array([rendering.attribution_scale(reduced[i][0]) for i in actions])
    shape_f, shape_r = reduced[actions[0]][0].shape, reduced[actions[0]][1].shape
    n_f = int(np.prod(shape_f))
    rows = np.stack([np.concatenate([reduced[i][0].ravel(), reduced[i][1].ravel()]) / m
                     for i, m in zip(actions, scales)]).astype(np.float64)
    values, vectors = np.linalg.eigh(rows @ rows.T)
    order = np.argsort(values)[::-1][:rank]
    weights = vectors[:, order]  # (A, r)
    energy = float(values[order].sum() / values.sum())
    total = 0
    basis = []
    for direction in weights.T @ rows:
        data = attribution_codec.encode(direction[:n_f].reshape(shape_f),
                                        direction[n_f:].reshape(shape_r),
                                        single_features=single_features,
                                        scale=basis_scale)
        total += len(data)
        f, r = decoded_reduced(data)
        basis.append(np.concatenate([f.ravel(), r.ravel()]))
    predictions = (weights @ np.stack(basis)) * scales[:, None]  # (A, D), unnormalised
    for i, output in enumerate(outputs):
        if output.kind == "value":
            continue
        if output.kind == "action":
            guess = predictions[actions.index(i)]
        else:
            guess = predictions[[actions.index(actions[a]) for a in output.actions]].sum(0)
        f, r = reduced[i]
        total += len(attribution_codec.encode(
            f - guess[:n_f].reshape(shape_f), r - guess[n_f:].reshape(shape_r),
            single_features=single_features, scale=rendering.attribution_scale(f)))
    return total, energy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--work", default=str(Path(__file__).resolve().parents[1] / ".cache"
                                              / "bench-bundle"), help="bench_bundle's folder")
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--trajectory", type=int, default=1)
    parser.add_argument("--prediction", action="store_true",
                        help="also estimate joint coding of the outputs (see above)")
    parser.add_argument("--basis", type=int, default=0, metavar="R",
                        help="with --prediction: predict the actions from their R leading "
                             "singular directions (coded once) instead of their mean")
    parser.add_argument("--basis-scale", type=float, default=1.0,
                        help="with --basis: code the directions at this scale (finer below 1)")
    parser.add_argument("--layers", nargs="+", help="only these layers")
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
    estimate = predicted = value_total
    layers = {}
    for layer in index["layers"]:
        name = layer["name"]
        if args.layers and name not in args.layers:
            continue
        start = time.perf_counter()
        reduced = reduced_outputs(policy, extra, frames, name, outputs, config)
        sizes = [len(attribution_codec.encode(f, r, single_features=index["single_features"]))
                 for f, r in reduced]
        ratio = sum(sizes) / sizes[0]
        measured = sum(index["files"][f]["bytes"] for f in layer["attribution"]["value"])
        estimate += measured * (ratio - 1)
        if args.prediction and args.basis:
            joint, energy = basis_sizes(outputs, reduced, index["single_features"],
                                        args.basis, args.basis_scale)
            print(f"  {name}: {args.basis} directions hold {energy:.1%} of the actions' "
                  "energy", file=sys.stderr, flush=True)
        elif args.prediction:
            joint = predicted_sizes(outputs, reduced, index["single_features"])
        if args.prediction:
            predicted_ratio = (sizes[0] + joint) / sizes[0]
            predicted += measured * (predicted_ratio - 1)
            print(f"  {name}: jointly coded, {predicted_ratio:.2f} x value",
                  file=sys.stderr, flush=True)
        layers[name] = {"value_bytes_sample": sizes[0], "all_outputs_bytes_sample": sum(sizes),
                        "ratio": round(ratio, 2), "outputs": len(sizes),
                        "value_bundle_bytes": measured,
                        "policy_bundle_bytes_estimate": round(measured * ratio),
                        "seconds": round(time.perf_counter() - start, 1)}
        if args.prediction:
            layers[name]["jointly_coded_ratio"] = round(predicted_ratio, 2)
        print(f"  {name}: {len(sizes)} outputs = {ratio:.2f} x value on the sample "
              f"({sizes[0] / MB:.3f} MB); {measured / MB:.2f} MB of value attribution in "
              f"the bundle -> {measured * ratio / MB:.1f} MB", file=sys.stderr, flush=True)
    figures = {"sample": {"trajectory": args.trajectory, "frames": len(frames)},
               "value_bundle_bytes": value_total, "layers": layers,
               "policy_bundle_bytes_estimate": round(estimate), "budget_bytes": BUDGET,
               "within_budget": estimate <= BUDGET}
    if args.prediction:
        figures["jointly_coded_estimate_bytes"] = round(predicted)
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

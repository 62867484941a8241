"""Attribution speed: the plain autograd loop, gallery.method.attribution and Captum, per layer,
on the same recorded CoinRun frames in one run; then the whole default analysis.

    .venv/bin/python benchmarks/bench_analysis.py [--frames 128] [--device cpu|cuda]
        [--checkpoint ../shared/checkpoints/coinrun.jd] [--quick] [--skip-full]
        [--skip-layers] [--skip-value | --skip-policy]

Per layer it prints the best wall time of `--repeats` alternating rounds of

- **plain**: the loop a user would write -- the layer's activations, the 10 scaled copies
  stacked into one batch, `forward_from`, one `torch.autograd.grad` (value), or one
  such forward and backward per output (policy: the value and every action);
- **ours**: `gallery.method.attribution.integrated_gradients` / `policy_attribution`;
- **captum**: `captum.attr.IntegratedGradients` with the same semantics (zero baseline at
  the layer, right Riemann sum, 10 steps), value only;

with the ratios plain/ours and captum/ours (>= 1: ours is as fast or faster) and the
largest difference from ours, relative to the largest value. The whole analysis
(`benchmarks/analysis.py`, the method's defaults: 8 x 512 frames, 32 x 128 extra observations,
every layer) is then timed stage by stage, with value and with policy attribution, and
the peak memory is printed.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from analysis import (
    AnalysisConfig,
    TrajectoryArrays,
    analyze_trajectories,
    iter_attributions,
    layer_features,
    select_layers,
)

from gallery.environments import EnvSpec
from gallery.environments.rollouts import ObservationConfig, TrajectoryConfig, load_or_collect
from gallery.method.attribution import _needs_observations, integrated_gradients, policy_attribution
from gallery.models.policy import load_policy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "checkpoints" / "coinrun.jd"
DEFAULT_ROLLOUTS = REPO / ".cache" / "bench" / "coinrun-hard-rollouts.npz"
STEPS = 10


def best_of_alternating(repeats: int, *fns: Callable[[], object]
                        ) -> list[tuple[float, float]]:
    """Smallest wall and CPU time of each function over `repeats` rounds that call every
    function once, in alternating order: a slow spell of the shared machine then touches
    both sides of a comparison instead of one."""
    walls: list[list[float]] = [[] for _ in fns]
    cpus: list[list[float]] = [[] for _ in fns]
    for round_ in range(repeats):
        order = range(len(fns)) if round_ % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            start, cpu = time.perf_counter(), time.process_time()
            fns[i]()
            walls[i].append(time.perf_counter() - start)
            cpus[i].append(time.process_time() - cpu)
    return [(min(w), min(c)) for w, c in zip(walls, cpus)]



def plain_ig(policy: torch.nn.Module, frames: np.ndarray, layer: str, outputs: int = 1,
             batch: int = 32) -> np.ndarray:
    """The plain loop: per batch of frames, the 10 scaled copies in one pass through
    forward_from and one autograd.grad per output ([value, logit_0, ...][:outputs])."""
    device = next(policy.parameters()).device
    needs_obs = _needs_observations(policy, layer, torch.zeros(1, *policy.observation_shape,
                                                                device=device))
    results = []
    for start in range(0, len(frames), batch):
        obs = torch.from_numpy(frames[start:start + batch]).to(device).float() / 255
        with torch.no_grad():
            acts = policy.activations_nchw(obs, layer)
        alphas = torch.arange(1, STEPS + 1, device=device).float().view(-1, 1, 1, 1, 1) / STEPS
        scaled = (alphas * acts).flatten(0, 1).requires_grad_(True)
        extra = (obs.repeat(STEPS, 1, 1, 1),) if needs_obs else ()  # (not bottlenecks)
        logits, value = policy.forward_from_nchw(scaled, layer, *extra)
        out = torch.cat([value[:, None], logits], 1)
        grads = [torch.autograd.grad(out[:, o].sum(), scaled, retain_graph=o < outputs - 1)[0]
                 for o in range(outputs)]
        results.append(torch.stack([acts * g.unflatten(0, (STEPS, len(acts))).mean(0)
                                    for g in grads]).permute(0, 1, 3, 4, 2).cpu().numpy())
    return np.concatenate(results, axis=1)


def captum_ig(policy: torch.nn.Module, frames: np.ndarray, layer: str) -> np.ndarray:
    from captum.attr import IntegratedGradients

    device = next(policy.parameters()).device
    obs = torch.from_numpy(frames).to(device).float() / 255
    with torch.no_grad():
        acts = policy.activations_nchw(obs, layer)

    def value(a: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return policy.forward_from_nchw(a, layer, o)[1]

    attr = IntegratedGradients(value).attribute(
        acts, baselines=torch.zeros_like(acts), additional_forward_args=(obs,),
        n_steps=STEPS, method="riemann_right", internal_batch_size=32 * STEPS)
    return attr.permute(0, 2, 3, 1).detach().cpu().numpy()


def per_layer(policy: torch.nn.Module, frames: np.ndarray, repeats: int,
              policy_frames: int) -> None:
    print(f"\nvalue attribution, {len(frames)} frames, {STEPS} steps, best of {repeats} "
          "alternating rounds (seconds; ratio >= 1: ours as fast or faster)")
    print(f"{'layer':<14}{'plain':>8}{'ours':>8}{'captum':>8}{'plain/ours':>12}"
          f"{'captum/ours':>13}{'max diff':>10}")
    totals = np.zeros(3)
    for layer in policy.layer_names:
        runs = [lambda: plain_ig(policy, frames, layer),
                lambda: integrated_gradients(policy, frames, layer, "value", STEPS),
                lambda: captum_ig(policy, frames, layer)]
        times = [wall for wall, _ in best_of_alternating(repeats, *runs)]
        totals += times
        ours = integrated_gradients(policy, frames, layer, "value", STEPS)
        scale = np.abs(ours).max()
        diff = max(np.abs(plain_ig(policy, frames, layer)[0] - ours).max(),
                   np.abs(captum_ig(policy, frames, layer) - ours).max()) / scale
        print(f"{layer:<14}{times[0]:>8.2f}{times[1]:>8.2f}{times[2]:>8.2f}"
              f"{times[0] / times[1]:>12.2f}{times[2] / times[1]:>13.2f}{diff:>10.1e}",
              flush=True)
    print(f"{'all':<14}{totals[0]:>8.2f}{totals[1]:>8.2f}{totals[2]:>8.2f}"
          f"{totals[0] / totals[1]:>12.2f}{totals[2] / totals[1]:>13.2f}")

    small = frames[:policy_frames]
    outputs = 1 + policy.num_actions
    print(f"\npolicy attribution (value + {policy.num_actions} actions + groups), "
          f"{len(small)} frames, best of {repeats}")
    print(f"{'layer':<14}{'plain':>8}{'ours':>8}{'plain/ours':>12}{'ours/value':>12}")
    for layer in policy.layer_names:
        (plain, _), (ours, _), (value, _) = best_of_alternating(
            repeats, lambda: plain_ig(policy, small, layer, outputs),
            lambda: policy_attribution(policy, small, layer, STEPS),
            lambda: integrated_gradients(policy, small, layer, "value", STEPS))
        print(f"{layer:<14}{plain:>8.2f}{ours:>8.2f}{plain / ours:>12.2f}"
              f"{ours / value:>12.2f}", flush=True)


def load_frames(args: argparse.Namespace, policy: torch.nn.Module
                ) -> tuple[TrajectoryArrays, np.ndarray]:
    """Recorded CoinRun (hard) frames: the method's default rollouts (8 x 512 trajectory
    frames, 32 x 128 extra observations every 128 steps), cached in `--rollouts`; with
    --skip-full only 128 extra observations (8 x 16, every 16 steps) for the per-layer
    timings."""
    spec = EnvSpec.from_args(policy.args, {"distribution_mode": "hard", "num_levels": 0})
    small = args.skip_full or args.quick
    path = args.rollouts.with_name(args.rollouts.stem + "-small.npz") if small \
        else args.rollouts
    rollouts = load_or_collect(path, policy, spec,
                               trajectories=TrajectoryConfig(2, 64) if small
                               else TrajectoryConfig(8, 512),
                               observations=ObservationConfig(8, 16, 16) if small
                               else ObservationConfig(32, 128, 128), seed=0)
    traj = rollouts.trajectories
    arrays = TrajectoryArrays(traj.observations, traj.firsts, traj.actions, traj.rewards)
    return arrays, rollouts.observations


class StageClock:
    """Progress callback that records when each stage was first and last reported."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.spans: dict[str, list[float]] = {}
        self.mark = self.start

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        span = self.spans.setdefault(stage, [self.mark, now])
        span[1] = now
        self.mark = now


def full_analysis(policy: torch.nn.Module, arrays: TrajectoryArrays,
                  observations: np.ndarray, config: AnalysisConfig, label: str) -> float:
    """Run every stage, streaming attributions (each dropped once computed)."""
    clock = StageClock()
    cpu = time.process_time()
    analyze_trajectories(policy, arrays, config, progress=clock)
    features = {layer: layer_features(policy, observations, layer, config, progress=clock)
                for layer in select_layers(policy, config)}
    count = sum(1 for _ in iter_attributions(policy, arrays, features, config,
                                             progress=clock))
    total = time.perf_counter() - clock.start
    cpu = time.process_time() - cpu
    print(f"\nwhole analysis, {label}: {total:.0f} s wall, {cpu:.0f} s CPU "
          f"({count} output attributions)")
    for stage, (first, last) in clock.spans.items():
        print(f"  {stage:<22}{last - first:>8.1f} s")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--rollouts", type=Path, default=DEFAULT_ROLLOUTS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--frames", type=int, default=128, help="frames per layer timing")
    parser.add_argument("--policy-frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small frame counts")
    parser.add_argument("--skip-full", action="store_true", help="per-layer figures only")
    parser.add_argument("--skip-layers", action="store_true", help="whole analysis only")
    parser.add_argument("--skip-policy", action="store_true",
                        help="whole analysis without policy attribution")
    parser.add_argument("--skip-value", action="store_true",
                        help="whole analysis with policy attribution only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device "
          f"{args.device}" + (f" ({torch.cuda.get_device_name(args.device)})"
                              if args.device.startswith("cuda") else ""))
    policy = load_policy(args.checkpoint).to(args.device)
    arrays, observations = load_frames(args, policy)
    if not args.skip_layers:
        per_layer(policy, observations[:args.frames], args.repeats, args.policy_frames)
    if not args.skip_full:
        if not args.skip_value:
            full_analysis(policy, arrays, observations, AnalysisConfig(), "value attribution")
        if not args.skip_policy:
            full_analysis(policy, arrays, observations,
                          AnalysisConfig(policy_attribution=True), "policy attribution")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\npeak memory (ru_maxrss): {peak_rss:.2f} GB")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(args.device) / 1024**3:.2f} GB")


if __name__ == "__main__":
    main()

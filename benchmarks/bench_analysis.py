"""Speed of the analysis engine on a real checkpoint (rollouts excluded).

    .venv/bin/python benchmarks/bench_analysis.py [--quick] [--checkpoint PATH]
        [--rollouts PATH] [--threads 2] [--skip-full] [--skip-micro] [--skip-policy]

Prints, in order:

1. fp32 peak: GFLOP/s of independent AVX-512 FMA chains on every thread (a C kernel
   compiled with gcc: the roof the layers are measured against), and of a large matmul;
2. per layer, value attribution (10 steps): frames/s and achieved GFLOP/s, counting the
   convolution and dense FLOPs that run analytically (forward from the layer, plus the
   backward pass's input gradients, per integration step; a hoisted affine consumer of the
   layer once per batch);
3. per layer, policy attribution (value + every action, groups summed) over value
   attribution on the same frames: the cost ratio;
4. Captum's IntegratedGradients (same semantics: forward from the layer, zero baseline,
   riemann_right, 10 steps) against ours on the same frames: time and max difference;
5. the whole analysis at the defaults (8 x 512 trajectory frames, 4096 extra observations,
   every layer, 10 steps) by stage, then with policy attribution (streamed, as a bundle
   writer would, so that memory stays bounded); peak memory (ru_maxrss).

The process keeps freed memory for reuse (`gallery.allocator`), for Captum and ours alike,
from the start; `GALLERY_MALLOC=default` runs everything with glibc's defaults instead.

Frames come from saved rollouts (`--rollouts`, collected with the policy on first use, in
.cache/bench/ by default); `--quick` uses 2 x 64 trajectory frames and 256 observations.
Timings on a shared CPU vary: each micro-benchmark reports the best of a few runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from gallery import allocator
from gallery.analysis import (
    AnalysisConfig,
    TrajectoryArrays,
    analyze_trajectories,
    iter_attributions,
    layer_features,
    select_layers,
)
from gallery.attribution import integrated_gradients, policy_attribution
from gallery.environments import EnvSpec
from gallery.policy import load_policy
from gallery.rollouts import ObservationConfig, TrajectoryConfig, load_or_collect

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "checkpoints" / "coinrun.jd"
DEFAULT_ROLLOUTS = REPO / ".cache" / "bench" / "coinrun-hard-rollouts.npz"


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Smallest wall time of `repeats` calls."""
    return best_of_both(repeats, fn)[0]


def best_of_both(repeats: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Smallest wall time and smallest process CPU time of `repeats` calls.

    On a shared machine the wall time includes waiting for a core; CPU time divided by
    the threads estimates the wall time of an idle machine.
    """
    return best_of_alternating(repeats, fn)[0]


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


def matmul_peak(n: int) -> float:
    """GFLOP/s of an n x n float32 matmul (best of 5)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / best_of(5, lambda: a @ b) / 1e9


def macs_by_module(policy: torch.nn.Module, layer: str) -> dict[str, int]:
    """Multiply-accumulates per observation of each convolution and dense layer that runs
    from `layer` to the outputs (counted from their weights and output sizes)."""
    counted: dict[str, int] = {}
    names = {m: n for n, m in policy.named_modules()}

    def hook(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        weight = getattr(module, "weight", None)
        if weight is None or not isinstance(output, torch.Tensor):
            return
        per_output = weight[0].numel()  # in_channels * kh * kw, or in_features
        counted[names[module]] = output[0].numel() * per_output

    handles = [m.register_forward_hook(hook) for m in policy.modules()
               if getattr(m, "weight", None) is not None and not list(m.children())]
    h, w, c = policy.observation_shape
    obs = torch.rand(1, h, w, c)
    try:
        with torch.no_grad():
            acts = policy.activations_nchw(obs, layer)
            counted.clear()
            try:
                policy.forward_from_nchw(acts, layer)
            except Exception:  # not a bottleneck: the whole network runs
                counted.clear()
                policy.forward_from_nchw(acts, layer, obs)
    finally:
        for handle in handles:
            handle.remove()
    return counted


def macs_after(policy: torch.nn.Module, layer: str) -> int:
    """Multiply-accumulates of the network from `layer` to the outputs, per observation."""
    return sum(macs_by_module(policy, layer).values())


def split_macs(policy: torch.nn.Module, layer: str) -> tuple[int, int]:
    """(MACs run per integration step, MACs run once per batch) per observation.

    When the layer's only consumer is affine (a convolution or dense layer) the
    attribution evaluates it once per batch, not once per step (`_LayerSplit`)."""
    from gallery.attribution import _LayerSplit
    from gallery.networks import _key

    by_module = macs_by_module(policy, layer)
    total = sum(by_module.values())
    split = _LayerSplit.find(policy, layer)
    if split is None or split.kind != "affine":
        return total, 0
    name = f"network.layers.{_key(split.start.name)}"
    once = by_module.get(name, 0)
    return total - once, once


def attribution_flops(policy: torch.nn.Module, layer: str, frames: int, steps: int,
                      outputs: int = 1) -> float:
    """FLOPs IG executes: per step one forward pass from the layer (after a hoisted affine
    consumer) and one backward pass of input gradients per output (a convolution's input
    gradient costs its forward); a hoisted consumer once forward and once backward per
    output."""
    per_step, once = split_macs(policy, layer)
    return 2.0 * frames * (1 + outputs) * (steps * per_step + once)


FMA_KERNEL = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
int main(int argc, char **argv) {
  long iters = 200000000L / 16;
  double t0 = omp_get_wtime();
  float sink = 0;
  #pragma omp parallel reduction(+:sink)
  {
    __m512 a[12], b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < iters; k++)
      for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(a[i]);
  }
  double t = omp_get_wtime() - t0;
  printf("%f %d %f\n", t, omp_get_max_threads(), sink);
  double flops = (double)iters * 12 * 16 * 2 * omp_get_max_threads();
  printf("%f\n", flops / t / 1e9);
  return 0;
}
"""


def fma_peak(threads: int) -> float | None:
    """GFLOP/s of independent AVX-512 FMA chains on `threads` cores (the machine's fp32
    roof), from a C kernel compiled here; None without a compiler or AVX-512."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("gcc") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(FMA_KERNEL)
        build = subprocess.run(["gcc", "-O3", "-funroll-loops", "-mavx512f", "-mfma",
                                "-fopenmp", str(src), "-o", str(exe)],
                               capture_output=True, text=True, check=False)
        if build.returncode != 0:
            return None
        best = 0.0
        for _ in range(3):
            run = subprocess.run([str(exe)], capture_output=True, text=True, check=False,
                                 env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if run.returncode != 0:
                return None
            best = max(best, float(run.stdout.split()[-1]))
        return best


def load_frames(args: argparse.Namespace, policy: torch.nn.Module
                ) -> tuple[TrajectoryArrays, np.ndarray]:
    spec = EnvSpec.from_args(policy.args, {"distribution_mode": "hard", "num_levels": 0})
    rollouts = load_or_collect(args.rollouts, policy, spec,
                               trajectories=TrajectoryConfig(8, 512),
                               observations=ObservationConfig(32, 128, 128), seed=0)
    traj = rollouts.trajectories
    arrays = TrajectoryArrays(traj.observations, traj.firsts, traj.actions, traj.rewards)
    observations = rollouts.observations
    if args.quick:
        arrays = TrajectoryArrays(traj.observations[:2, :64], traj.firsts[:2, :64],
                                  traj.actions[:2, :64], traj.rewards[:2, :64])
        observations = observations[::16]
    return arrays, observations


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


def micro_benchmarks(policy: torch.nn.Module, frames: np.ndarray, layers: list[str],
                     peak: float, repeats: int) -> None:
    threads = torch.get_num_threads()
    print(f"\nvalue attribution, {len(frames)} frames, 10 steps (best of {repeats}); "
          f"'cpu' columns use CPU time / {threads} threads")
    print(f"{'layer':<7}{'MMAC/frame':>11}{'frames/s':>10}{'GFLOP/s':>9}{'of peak':>8}"
          f"{'cpu GFLOP/s':>12}{'cpu of peak':>12}{'policy/value':>13}{'cpu':>7}")
    for layer in layers:
        (wall, cpu), (p_wall, p_cpu) = best_of_alternating(
            repeats, partial(integrated_gradients, policy, frames, layer),
            partial(policy_attribution, policy, frames, layer))
        flops = attribution_flops(policy, layer, len(frames), 10)
        g_wall, g_cpu = flops / wall / 1e9, flops / (cpu / threads) / 1e9
        print(f"{layer:<7}{macs_after(policy, layer) / 1e6:>11.1f}{len(frames) / wall:>10.0f}"
              f"{g_wall:>9.1f}{g_wall / peak:>8.0%}{g_cpu:>12.1f}{g_cpu / peak:>12.0%}"
              f"{p_wall / wall:>12.1f}x{p_cpu / cpu:>6.1f}x", flush=True)


def value_from(policy: torch.nn.Module, layer: str, acts: torch.Tensor) -> torch.Tensor:
    """The value computed from a layer's activations (NCHW): Captum's forward function."""
    return policy.forward_from_nchw(acts, layer)[1]


def captum_comparison(policy: torch.nn.Module, frames: np.ndarray, layers: list[str],
                      repeats: int) -> None:
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        print("\ncaptum is not installed: skipping the comparison (pip install captum)")
        return
    print(f"\nCaptum IntegratedGradients vs ours, value, {len(frames)} frames, 10 steps "
          f"(best of {repeats}, alternating)")
    print(f"{'layer':<8}{'captum s':>10}{'ours s':>10}{'speed-up':>10}{'cpu':>7}"
          f"{'max rel diff':>14}")
    total_captum = total_ours = 0.0
    for layer in layers:
        ig = IntegratedGradients(partial(value_from, policy, layer))

        def run_captum(ig: IntegratedGradients = ig, layer: str = layer) -> torch.Tensor:
            # from the same uint8 frames as ours: the layer's activations are part of it
            obs = torch.from_numpy(frames).float().div_(255)
            with torch.no_grad():
                acts = policy.activations_nchw(obs, layer)
            # internal_batch_size bounds memory like our batching does
            return ig.attribute(acts, baselines=torch.zeros_like(acts), n_steps=10,
                                method="riemann_right", internal_batch_size=160)

        run_captum()  # (warm-up: the first call of a layer's shapes)
        (t_captum, c_captum), (t_ours, c_ours) = best_of_alternating(
            repeats, run_captum, partial(integrated_gradients, policy, frames, layer))
        total_captum, total_ours = total_captum + t_captum, total_ours + t_ours
        theirs = run_captum().permute(0, 2, 3, 1).numpy()
        ours = integrated_gradients(policy, frames, layer)
        diff = np.abs(ours - theirs).max() / np.abs(theirs).max()
        print(f"{layer:<8}{t_captum:>10.2f}{t_ours:>10.2f}{t_captum / t_ours:>9.1f}x"
              f"{c_captum / c_ours:>6.1f}x{diff:>14.1e}", flush=True)
    print(f"{'all':<8}{total_captum:>10.2f}{total_ours:>10.2f}"
          f"{total_captum / total_ours:>9.1f}x")


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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small frames counts")
    parser.add_argument("--skip-full", action="store_true", help="micro-benchmarks only")
    parser.add_argument("--skip-micro", action="store_true",
                        help="whole analysis only (no per-layer or Captum figures)")
    parser.add_argument("--skip-policy", action="store_true",
                        help="whole analysis without policy attribution only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    # before anything runs, so that Captum and ours run with the same allocator settings
    print("allocator: " + ("glibc keeps freed memory (gallery.allocator)" if allocator.keep_freed_memory()
                           else f"defaults ({allocator.ENV}=default or not glibc)"))

    policy = load_policy(args.checkpoint)
    arrays, observations = load_frames(args, policy)
    layers = list(policy.layer_names)
    if not args.skip_micro:
        blas = matmul_peak(2048 if args.quick else 4096)
        fma = fma_peak(args.threads)
        print(f"fp32 roofs: AVX-512 FMA kernel {fma or float('nan'):.0f} GFLOP/s "
              f"({args.threads} threads), large matmul {blas:.0f} GFLOP/s")
        peak = fma or blas
        frames = observations[:32 if args.quick else 256]
        repeats = 2 if args.quick else 3
        micro_benchmarks(policy, frames, layers, peak, repeats)
        captum_comparison(policy, frames[:32 if args.quick else 128], layers, repeats + 2)
    if not args.skip_full:
        full_analysis(policy, arrays, observations, AnalysisConfig(), "value attribution")
        if not args.skip_policy:
            full_analysis(policy, arrays, observations,
                          AnalysisConfig(policy_attribution=True), "policy attribution")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\npeak memory (ru_maxrss): {peak_rss:.2f} GB")


if __name__ == "__main__":
    main()

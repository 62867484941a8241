"""Write the golden parity fixtures in tests/fixtures/parity/ from the TensorFlow reference.

Run from the repository root, in the optional TensorFlow environment:

    bash scripts/setup_tf.sh
    TF_ENABLE_ONEDNN_OPTS=0 .venv-tf/bin/python -m tests.reference.make_fixtures

For each case it writes `<case>.npz` (and, for synthetic models, the checkpoint `<case>.jd`),
and `manifest.json` records the versions, the command and what each case holds. The real
CoinRun model (../shared/checkpoints/coinrun.jd) is never copied: only its frames and
TensorFlow's outputs are stored.

Each `<case>.npz` holds (TF = the reference in float32, TF64 = the same float32 weights and
frames evaluated in float64, which is what a float32 result should be compared with):

- `obs` uint8 (N, H, W, C): the frames (`obs / 255` in float32 is what networks see);
- `logits32`, `value32` (TF) and `logits64`, `value64` (TF64);
- `layers`: offered layer names in network order (IMPALA's as gallery names them);
- per layer i, activations too large to store whole are summarised: `act{i}_idx` (sorted
  flat indices into the (N, h, w, c) array), `act{i}_val32` / `act{i}_val64` (values there),
  and TF64 means over all but one axis: `act{i}_chan` (c), `act{i}_row` (h), `act{i}_col` (w);
- integrated gradients (TF64, n = 10, method.md section 4) for one layer and target on the
  first `ig_obs` frames: `ig_layer`, `ig_target` (JSON: "value", an index or a list),
  `ig64` (ig_obs, h, w, c), and for completeness `ig_f` = f(x), `ig_f0` = f with the layer's
  activations zeroed (other paths, like IMPALA's skips, keep the observation's values).
  IMPALA's IG layers lie after its last max pool: on flat real frames pool windows tie up
  to the last bit, TensorFlow and PyTorch break such ties differently, and gradients
  through an earlier pool would depend on which branch each took;
- the real model only: `input_grad64`, d value / d obs of the first frame.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

from .checkpoints import make_checkpoint, write_checkpoint  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REAL_CHECKPOINT = SHARED / "checkpoints" / "coinrun.jd"
SAMPLES_PER_LAYER = 512
IG_STEPS = 10


@dataclass(frozen=True)
class Case:
    """One golden fixture: a model and the frames it is evaluated on."""

    name: str
    cnn: str
    frames: str  # rgb64 | gray84 | stack84 | real16
    ig_layer: str
    ig_target: Any = "value"
    ig_obs: int = 2
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)
    compress: Any = ("bz2", 9)  # quantized weights compress to a few bits each


CASES = (
    Case("clear_64", "clear", "rgb64", "4a", seed=11),
    Case("impala_64", "impala", "rgb64", "stack3/block1", ig_target=[6, 7, 8], seed=12),
    Case("impala_8_16_64", "impala", "rgb64", "stack2/block2", ig_obs=1, seed=13,
         kwargs={"stack_channels": "8_16", "emb_size": 64}, compress=("gzip", 6)),
    Case("nature_84", "nature", "gray84", "c3", ig_target=1, seed=14,
         kwargs={"env_kind": "atari", "env_id": "breakout", "obs_shape": (84, 84, 1)}),
    Case("clear_84", "clear", "gray84", "4a", seed=15,
         kwargs={"env_kind": "atari", "env_id": "pong", "n_actions": 6,
                 "obs_shape": (84, 84, 1)}),
    Case("impala_84_stack4", "impala", "stack84", "stack3/block2", ig_obs=1, seed=16,
         kwargs={"env_kind": "atari", "env_id": "breakout", "obs_shape": (84, 84, 4),
                 "emb_size": 128}),
    Case("coinrun_real", "clear", "real16", "4a", ig_obs=4),
)


# -- frames --------------------------------------------------------------------------------
def collect_procgen_frames(n_envs: int = 8, steps: tuple[int, ...] = (30, 90),
                           seed: int = 1234) -> np.ndarray:
    """Real CoinRun frames (hard mode, random actions, fixed seeds): (n_envs*len(steps), 64,
    64, 3) uint8, ordered by step then environment."""
    from procgen import ProcgenGym3Env

    env = ProcgenGym3Env(num=n_envs, env_name="coinrun", distribution_mode="hard",
                         num_levels=0, start_level=0, rand_seed=seed)
    rng = np.random.default_rng(seed)
    kept = []
    for step in range(max(steps) + 1):
        _, obs, _ = env.observe()
        if step in steps:
            kept.append(obs["rgb"].copy())
        env.act(rng.integers(0, 15, n_envs))
    return np.concatenate(kept)


def _resize84(frames: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((84, 84), Image.BILINEAR))
                     for f in frames])


def _gray(frames: np.ndarray) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114], np.float64)
    return np.clip(np.round(frames.astype(np.float64) @ weights), 0, 255).astype(np.uint8)


def make_frames(real: np.ndarray) -> dict[str, np.ndarray]:
    """Frame sets: three real frames plus one uniform-noise frame per synthetic case (noise
    reaches every position and every pixel value)."""
    rng = np.random.default_rng(7)
    picks = real[[0, 5, 11]]
    noise = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    rgb64 = np.concatenate([picks, noise])
    gray84 = _gray(_resize84(rgb64))[..., None]
    stacks = [_gray(_resize84(real[[i, i + 1, i + 2, i + 3]])).transpose(1, 2, 0)
              for i in (0, 8)]
    stack84 = np.stack(stacks + [rng.integers(0, 256, (84, 84, 4), dtype=np.uint8)])
    return {"rgb64": rgb64, "gray84": gray84, "stack84": stack84, "real16": real}


# -- summaries -----------------------------------------------------------------------------
def summarise_layer(i: int, acts32: np.ndarray, acts64: np.ndarray, seed: int
                    ) -> dict[str, np.ndarray]:
    """Sampled entries (both precisions) and float64 axis means of one layer's activations."""
    rng = np.random.default_rng(seed)
    size = acts32.size
    idx = np.sort(rng.choice(size, min(SAMPLES_PER_LAYER, size), replace=False)).astype(np.int32)
    return {
        f"act{i}_idx": idx,
        f"act{i}_val32": acts32.reshape(-1)[idx],
        f"act{i}_val64": acts64.reshape(-1)[idx],
        f"act{i}_chan": acts64.mean(axis=(0, 1, 2)),
        f"act{i}_row": acts64.mean(axis=(0, 2, 3)),
        f"act{i}_col": acts64.mean(axis=(0, 1, 3)),
    }


def _score(logits: np.ndarray, value: np.ndarray, target: Any) -> np.ndarray:
    if target == "value":
        return value
    if isinstance(target, int):
        return logits[:, target]
    return logits[:, list(target)].sum(axis=1)


def case_arrays(ckpt: dict[str, Any], obs: np.ndarray, case: Case) -> dict[str, np.ndarray]:
    """Every array of one fixture, computed by the TensorFlow reference."""
    import tensorflow as tf

    from .tf_networks import (
        tf_forward,
        tf_input_gradients,
        tf_integrated_gradients,
        tf_outputs_with_layer,
    )

    out32 = tf_forward(ckpt, obs)
    out64 = tf_forward(ckpt, obs, tf.float64)
    layers = list(out32["activations"])
    arrays: dict[str, np.ndarray] = {
        "obs": obs, "logits32": out32["logits"], "value32": out32["value"],
        "logits64": out64["logits"], "value64": out64["value"], "layers": np.array(layers),
    }
    for i, name in enumerate(layers):
        arrays.update(summarise_layer(i, out32["activations"][name],
                                      out64["activations"][name], seed=1000 * case.seed + i))
    sub = obs[:case.ig_obs]
    ig = tf_integrated_gradients(ckpt, sub, case.ig_layer, case.ig_target, IG_STEPS, tf.float64)
    zeros = np.zeros_like(out64["activations"][case.ig_layer][:case.ig_obs])
    logits0, value0 = tf_outputs_with_layer(ckpt, sub, case.ig_layer, zeros, tf.float64)
    arrays.update(ig_layer=np.array(case.ig_layer), ig_target=np.array(json.dumps(case.ig_target)),
                  ig64=ig, ig_f=_score(out64["logits"][:case.ig_obs], out64["value"][:case.ig_obs],
                                       case.ig_target),
                  ig_f0=_score(logits0, value0, case.ig_target))
    if case.frames == "real16":
        arrays["input_grad64"] = tf_input_gradients(ckpt, obs[:1], "value", tf.float64)
    return arrays


# -- writing -------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_case(case: Case, frames: dict[str, np.ndarray], out: Path) -> dict[str, Any]:
    """Write one case's files; return its manifest entry."""
    from gallery.models.safe_pickle import safe_load

    entry: dict[str, Any] = {"cnn": case.cnn, "frames": case.frames,
                             "ig": {"layer": case.ig_layer, "target": case.ig_target,
                                    "obs": case.ig_obs, "steps": IG_STEPS}}
    if case.frames == "real16":
        path = REAL_CHECKPOINT
        entry.update(checkpoint=f"../shared/checkpoints/{path.name}", sha256=_sha256(path))
    else:
        path = out / f"{case.name}.jd"
        raw = make_checkpoint(case.cnn, seed=case.seed, quantized=True, **case.kwargs)
        write_checkpoint(path, raw, compress=case.compress)
        entry.update(checkpoint=path.name, sha256=_sha256(path), seed=case.seed,
                     make_checkpoint={"quantized": True, **case.kwargs},
                     compress=list(case.compress) if isinstance(case.compress, tuple)
                     else case.compress)
    ckpt = safe_load(path)  # what is on disk, read without running pickle code
    arrays = case_arrays(ckpt, frames[case.frames], case)
    np.savez_compressed(out / f"{case.name}.npz", **arrays)
    entry.update(layers=[str(x) for x in arrays["layers"]], n_obs=int(len(arrays["obs"])),
                 max_abs_logit=float(np.abs(arrays["logits64"]).max()),
                 max_abs_value=float(np.abs(arrays["value64"]).max()))
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the fixtures")
    args = parser.parse_args(argv)
    import tensorflow as tf

    args.out.mkdir(parents=True, exist_ok=True)
    real = collect_procgen_frames()
    frames = make_frames(real)
    cases = [c for c in CASES if c.frames != "real16" or REAL_CHECKPOINT.is_file()]
    manifest = {
        "generator": "tests/reference/make_fixtures.py",
        "command": "TF_ENABLE_ONEDNN_OPTS=0 .venv-tf/bin/python -m tests.reference.make_fixtures",
        "tensorflow": tf.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "frames": {"procgen": "coinrun, distribution_mode=hard, num_levels=0, start_level=0, "
                              "rand_seed=1234, 8 envs, random actions (numpy seed 1234), "
                              "frames at steps 30 and 90",
                   "rgb64": "real frames 0, 5, 11 + one uniform-noise frame",
                   "gray84": "rgb64 resized to 84x84 (PIL bilinear), grey = 0.299R+0.587G+0.114B",
                   "stack84": "real frames 0-3 and 8-11 as 4-channel grey stacks + noise"},
        "samples_per_layer": SAMPLES_PER_LAYER,
        "cases": {},
    }
    for case in cases:
        print(f"[fixtures] {case.name}", file=sys.stderr)
        manifest["cases"][case.name] = build_case(case, frames, args.out)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"[fixtures] wrote {len(cases)} cases, {total / 1e6:.2f} MB in {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Integrated gradients against the independent TensorFlow reference, every layer.

    bash scripts/setup_tf.sh
    TF_ENABLE_ONEDNN_OPTS=0 .venv-tf/bin/python benchmarks/ig_parity_report.py

For clear, impala and nature checkpoints (random weights, tests/reference) and every
offered layer, the value and an action logit: the relative max error of gallery's
float32 IG (10 steps) against TensorFlow's float64 IG, next to TensorFlow's own float32
error against the same float64 result. IMPALA compares per-channel spatial totals (tied
max-pool inputs). Prints one row per (network, layer, output) and the worst of each column.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gallery.method.attribution import integrated_gradients  # noqa: E402
from gallery.models.policy import load_policy  # noqa: E402
from tests.reference.checkpoints import make_checkpoint, write_checkpoint  # noqa: E402
from tests.reference.tf_networks import tf_integrated_gradients  # noqa: E402

CASES = [("clear", {}), ("impala", {}), ("nature", {"env_kind": "atari"})]


def relative(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def main() -> None:
    worst_ours, worst_tf = 0.0, 0.0
    print(f"{'network':<8}{'layer':<16}{'output':<8}{'ours f32':>10}{'TF f32':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for cnn, kwargs in CASES:
            ckpt = make_checkpoint(cnn, seed=5, **kwargs)
            policy = load_policy(write_checkpoint(Path(tmp) / f"{cnn}.jd", ckpt))
            h, w, c = policy.observation_shape
            obs = np.random.default_rng(0).integers(0, 256, (2, h, w, c), dtype=np.uint8)
            for layer in policy.layer_names:
                for target in ("value", 1):
                    ours = integrated_gradients(policy, obs, layer, target, 10)
                    ref = tf_integrated_gradients(ckpt, obs, layer, target, 10,
                                                  dtype=tf.float64)
                    ref32 = tf_integrated_gradients(ckpt, obs, layer, target, 10,
                                                    dtype=tf.float32)
                    if cnn == "impala":
                        ours, ref, ref32 = (x.sum(axis=(1, 2)) for x in (ours, ref, ref32))
                    e_ours, e_tf = relative(ours, ref), relative(ref32, ref)
                    worst_ours, worst_tf = max(worst_ours, e_ours), max(worst_tf, e_tf)
                    label = "value" if target == "value" else f"logit {target}"
                    print(f"{cnn:<8}{layer:<16}{label:<8}{e_ours:>10.1e}{e_tf:>10.1e}",
                          flush=True)
    print(f"worst: ours {worst_ours:.1e}, TensorFlow float32 {worst_tf:.1e} "
          f"(target: ours <= 1e-4)")


if __name__ == "__main__":
    main()

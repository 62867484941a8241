"""Float32 parity of the PyTorch port against TensorFlow's outputs on the golden frames.

    .venv/bin/python benchmarks/bench_parity.py [../shared/checkpoints/coinrun.jd]

Prints, for the paper's CoinRun model on 16 real frames, the max abs error of our logits
and value against TensorFlow's float32 and float64 outputs (tests/fixtures/parity/), and
TensorFlow's own float32 error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from gallery.models.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ckpt = sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared/checkpoints/coinrun.jd"
    data = np.load(ROOT / "tests/fixtures/parity/coinrun_real.npz")
    obs = torch.from_numpy(data["obs"].astype(np.float32) / 255.0)
    with torch.no_grad():
        logits, value = load_policy(ckpt)(obs)
    for ref in ("32", "64"):
        print(f"vs TensorFlow float{ref}: logits {np.abs(logits.numpy() - data['logits' + ref]).max():.2e}"
              f"  value {np.abs(value.numpy() - data['value' + ref]).max():.2e}")
    print(f"TensorFlow float32 vs float64: logits "
          f"{np.abs(data['logits32'] - data['logits64']).max():.2e}  value "
          f"{np.abs(data['value32'] - data['value64']).max():.2e}")


if __name__ == "__main__":
    main()

"""Independent references for parity tests: synthetic checkpoints (`checkpoints`), the
TensorFlow networks (`tf_networks`, needs .venv-tf) and the golden fixtures' generator
(`make_fixtures`). The tolerances below are shared by the parity tests."""

from __future__ import annotations

import numpy as np

#: float64 on both sides (same float32 weights and frames): the same function, exactly.
ATOL64 = 1e-9
#: float32 target for a result, unless TensorFlow's own float32 rounding is larger.
ATOL32 = 1e-5
#: How much larger than TensorFlow's own float32 error gallery's may be.
FLOAT32_SLACK = 4.0


def float32_bound(ref32: np.ndarray, ref64: np.ndarray) -> float:
    """Allowed max abs error of a float32 result against the float64 reference `ref64`.

    1e-5, or FLOAT32_SLACK times TensorFlow's own float32 error (`ref32` against `ref64`)
    where that is larger: deep clear networks with logits of 20-30 lose 2-5e-5 to float32
    rounding in TensorFlow itself, so a flat 1e-5 cannot hold there.
    """
    own = float(np.abs(np.asarray(ref32, np.float64) - np.asarray(ref64, np.float64)).max())
    return max(ATOL32, FLOAT32_SLACK * own)

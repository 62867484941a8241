"""The viewer's decoder (viewer/src/lib/codec.ts), run in Node.js, against the Python one.

The browser fidelity test (tests/browser/test_fidelity.py) checks what the viewer draws;
this checks, frame by frame and code by code, that the TypeScript decoder reads what
`gallery.bundle.codec` writes: every context model, escaped codes up to the last
level, frames without escapes, float16 totals, and a damaged stream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gallery.bundle import codec
from tests.bundle_helpers import synthetic_attribution

ROOT = Path(__file__).resolve().parent.parent
TSC = ROOT / "viewer" / "node_modules" / ".bin" / "tsc"

RUNNER = """
import { readFileSync, writeFileSync } from "node:fs";
import { AttributionFile } from "./codec.js";
const [, , input, output] = process.argv;
const bytes = readFileSync(input);
const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
let result;
try {
  const file = new AttributionFile(buffer);
  const frames = [];
  for (let t = 0; t < file.header.frames; t++) frames.push(Array.from(file.decodeFrame(t)));
  result = { frames, totals: Array.from(file.totals), steps: Array.from(file.stepIndex) };
} catch (err) {
  result = { error: String(err.message) };
}
writeFileSync(output, JSON.stringify(result));
"""


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    """codec.ts compiled to JavaScript with the viewer's own TypeScript, and a runner."""
    node = shutil.which("node")
    if node is None or not TSC.exists():
        from conftest import skip_or_fail  # tests/conftest.py (tests/ is on sys.path)

        skip_or_fail("needs Node.js and viewer/node_modules (the set-up's "
                     "bash scripts/build_viewer.sh installs them)")
    out = tmp_path_factory.mktemp("codec-js")
    subprocess.run([str(TSC), "--target", "es2022", "--module", "es2022", "--strict",
                    "--outDir", str(out), str(ROOT / "viewer" / "src" / "lib" / "codec.ts")],
                   check=True, capture_output=True, text=True)
    (out / "package.json").write_text('{"type": "module"}')
    (out / "run.js").write_text(RUNNER)
    return out


def run_js(decoder: Path, data: bytes, tmp_path: Path) -> dict:
    (tmp_path / "in.gatr").write_bytes(data)
    subprocess.run(["node", str(decoder / "run.js"), str(tmp_path / "in.gatr"),
                    str(tmp_path / "out.json")], check=True, timeout=120)
    return json.loads((tmp_path / "out.json").read_text())


@pytest.mark.parametrize("model", codec.CONTEXT_MODELS, ids=lambda m: str(m.as_list()))
def test_typescript_decoder_reads_every_context_model(decoder, tmp_path, model):
    features, residual = synthetic_attribution(frames=4, h=9, w=11, k=3, seed=21)
    features[1] *= 40  # large values: codes far above the escape
    features[2] *= 0.0  # a frame of residual only
    data = codec.encode(features, residual, model=model)
    parsed = codec.decode(data)
    codes = parsed.codes()
    assert codes.max() > 3 * codec.ESCAPE  # escapes are exercised
    got = run_js(decoder, data, tmp_path)
    assert "error" not in got, got
    js = np.array(got["frames"]).reshape(codes.shape)
    assert np.array_equal(js, codes)
    np.testing.assert_allclose(np.array(got["totals"]).reshape(parsed.totals.shape),
                               parsed.totals, rtol=1e-6)
    assert got["steps"] == parsed.step_index.tolist()


def test_typescript_decoder_refuses_a_cut_stream(decoder, tmp_path):
    features, residual = synthetic_attribution(frames=2, h=8, w=8, k=2, seed=2)
    data = codec.encode(features, residual)
    got = run_js(decoder, data[:-5], tmp_path)
    assert "truncated" in got.get("error", "")

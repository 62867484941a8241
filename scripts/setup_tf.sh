#!/usr/bin/env bash
# Optional: a separate .venv-tf/ with TensorFlow (CPU) for the independent reference
# networks in tests/reference/, which check that gallery's PyTorch port equals the
# TensorFlow original (tests/test_parity_tf.py, marker `tf`; fixtures via
# tests/reference/make_fixtures.py). The main .venv never needs TensorFlow.
# Safe to re-run: when nothing that drives the install has changed, it returns at once.
#
# Run the reference with TF_ENABLE_ONEDNN_OPTS=0 (tests/reference/tf_networks.py sets it when
# unset): oneDNN's fast float32 paths reorder sums, so the golden outputs would depend on it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv-tf"
py="${PYTHON:-python3}"
tf_version="2.21.0"
# Pinned so that no resolver ever pulls a CUDA build of torch.
torch_version="2.13.0"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup-tf] creating $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
"$vpy" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "[setup-tf] Python 3.11+ is required" >&2; exit 2; }

stamp="$venv/.gallery-setup-tf-stamp"
want="$(cat pyproject.toml scripts/setup_tf.sh scripts/install_procgen.sh \
  | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup-tf] .venv-tf is up to date"
  exit 0
fi

echo "[setup-tf] installing tensorflow-cpu $tf_version, torch $torch_version (CPU), gallery"
"$vpy" -m pip install -q --upgrade pip wheel
# gallery's own dependencies come with it (torch pinned in pyproject.toml and here), so
# the live tests can call gallery.load_policy next to the TensorFlow reference.
"$vpy" -m pip install -q "tensorflow-cpu==$tf_version" "torch==$torch_version" \
  numpy joblib -e ".[test]"
# procgen, to collect the real frames of the golden fixtures (tests/reference/make_fixtures.py)
bash scripts/install_procgen.sh "$vpy"
"$vpy" -c 'import torch; assert not torch.version.cuda, torch.__version__'
TF_ENABLE_ONEDNN_OPTS=0 TF_CPP_MIN_LOG_LEVEL=2 \
  "$vpy" -c 'import tensorflow as tf; print("[setup-tf] tensorflow", tf.__version__)'
echo "$want" > "$stamp"
echo "[setup-tf] done"

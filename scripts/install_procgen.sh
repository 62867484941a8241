#!/usr/bin/env bash
# procgen 0.10.7's last wheels are tagged for CPython 3.10, but its engine is a plain
# shared library loaded through cffi, so the wheel works on 3.11+ once re-tagged.
# gym3/gym pin numpy<2 in their metadata; those pins are stale, hence --no-deps.
set -euo pipefail
vpy="${1:-.venv/bin/python}"
if "$vpy" -c 'import procgen, gym3' 2>/dev/null; then
  echo "[setup] procgen already installed"
  exit 0
fi
echo "[setup] installing procgen 0.10.7 (re-tagged cp310 wheel)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$vpy" -m pip download -q procgen==0.10.7 --no-deps --only-binary=:all: \
  --python-version 3.10 --platform manylinux2014_x86_64 -d "$tmp"
"$vpy" -m wheel tags --remove --python-tag py3 --abi-tag none "$tmp"/procgen-0.10.7-*.whl >/dev/null
"$vpy" -m pip install -q --no-deps "$tmp"/procgen-0.10.7-py3-none-*.whl gym3==0.3.3 gym==0.26.2
"$vpy" -m pip install -q cffi filelock imageio cloudpickle gym_notices
"$vpy" -c 'import procgen, gym3' 

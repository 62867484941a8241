#!/usr/bin/env bash
# Install everything the gallery needs into .venv/ at the repository root.
# Safe to re-run: when nothing that drives the install has changed, it returns at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
"$vpy" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "[setup] Python 3.11+ is required" >&2; exit 2; }

# The stamp records what the last successful install was made from.
stamp="$venv/.gallery-setup-stamp"
want="$(cat pyproject.toml scripts/setup.sh scripts/install_procgen.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
else
  echo "[setup] installing Python packages (torch 2.13.0 CPU, gymnasium + ale-py, scikit-learn, ...)"
  "$vpy" -m pip install -q --upgrade pip wheel
  "$vpy" -m pip install -q -e ".[test]"
  bash scripts/install_procgen.sh "$vpy"
  echo "$want" > "$stamp"
fi
# The interface viewer (Svelte + Vite, from package-lock.json) -> gallery/viewer_dist/;
# it keeps its own stamp, so this returns at once when nothing changed.
bash scripts/build_viewer.sh
echo "[setup] done"

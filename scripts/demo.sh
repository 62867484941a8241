#!/usr/bin/env bash
# Set up .venv (if needed) and build the demo gallery (checkpoints.yaml) into site/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec .venv/bin/gallery build -m checkpoints.yaml -o site/ "$@"

#!/usr/bin/env bash
# Refresh the screenshots under docs/screenshots/ that the browser tests take (viewer and
# site). The tests save them in a temporary folder otherwise.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
GALLERY_SCREENSHOTS="$root/docs/screenshots" exec .venv/bin/python -m pytest tests/browser "$@"

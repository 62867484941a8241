#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite. Extra arguments go to pytest.
# By default the long cases (marked `slow`) are left out; GALLERY_TESTS=all runs them too.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
marks=(-m "not slow and not tf")
if [ "${GALLERY_TESTS:-}" = "all" ]; then marks=(-m "not tf"); fi
exec .venv/bin/python -m pytest "${marks[@]}" "$@"

#!/usr/bin/env bash
# Set up .venv (if needed) and build the demo gallery into site/.
# While `gallery build` (the site generator) does not exist yet, run the largest part of
# the pipeline that does: describe the demo agent and record its trajectories.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
gallery=.venv/bin/gallery
if "$gallery" build --help >/dev/null 2>&1; then
  exec "$gallery" build -o site/
fi
ckpt="gallery/demo/coinrun-clear.jd"
echo
echo "== The demo agent =="
"$gallery" inspect "$ckpt"
echo
echo "== Recording its trajectories (8 x 512 steps, sampled actions) and the extra observations =="
mkdir -p site/demo
"$gallery" rollout "$ckpt" -o site/demo/rollouts.npz --observations
echo
echo "The site generator (gallery build) is not written yet: this ran the pipeline that exists"
echo "(checkpoint -> policy -> environment -> recorded rollouts). Results: site/demo/rollouts.npz"
echo "and site/demo/rollouts.json (open formats: NumPy npz + JSON)."

#!/usr/bin/env bash
# Build the interface viewer: viewer/ (Svelte 5 + TypeScript) -> gallery/viewer_dist/
# (viewer.js, viewer.css), installing its npm packages exactly as package-lock.json says
# (npm ci). Then make sure a Chromium exists for the browser tests: Debian's package,
# installed with apt-get when missing and running as root (GALLERY_NO_CHROMIUM=1 skips).
# Safe to re-run: when nothing that drives the build changed, it returns at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
viewer="$root/viewer"
dist="$root/gallery/viewer_dist"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "[viewer] Node.js 20+ and npm are needed to build the viewer (https://nodejs.org)" >&2
  exit 2
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "[viewer] Node.js $(node --version) is too old: 20 or newer is needed" >&2
  exit 2
fi

cd "$viewer"
want="$( (cat package.json package-lock.json vite.config.ts svelte.config.js tsconfig.json; \
          find src -type f | LC_ALL=C sort | xargs cat) | sha256sum | cut -d' ' -f1)"
stamp="$viewer/node_modules/.viewer-build-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dist/viewer.js" ] \
   && [ -f "$dist/viewer.css" ]; then
  echo "[viewer] gallery/viewer_dist is up to date"
else
  lock="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ ! -f node_modules/.lock-stamp ] || [ "$(cat node_modules/.lock-stamp)" != "$lock" ]; then
    echo "[viewer] npm ci (packages from package-lock.json)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$lock" > node_modules/.lock-stamp
  fi
  echo "[viewer] vite build -> gallery/viewer_dist/"
  npx --no-install vite build --logLevel warn
  echo "$want" > "$stamp"
fi

# Chromium for the browser tests (tests/browser, benchmarks/bench_viewer.py).
if [ "${GALLERY_NO_CHROMIUM:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1 \
   && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[viewer] installing Debian's chromium for the browser tests"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[viewer] note: no Chromium found; the browser tests will be skipped" \
         "(as root on Debian this script installs it: apt-get install chromium)" >&2
  fi
fi
echo "[viewer] done"

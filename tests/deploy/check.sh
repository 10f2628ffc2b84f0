#!/usr/bin/env bash
# The deploy files checked against the code, offline (ctest label deploy):
# installs the checker's npm packages (tests/deploy, .railway) from their
# lock files when missing, then runs tests/deploy/check.mjs, which renders
# the Kubernetes overlays with kubectl kustomize, validates every object
# against the Kubernetes and KEDA schemas, compares every variable, probe,
# port, grace period, image name and KEDA trigger with the daemons, and
# type-checks and evaluates .railway/railway.ts.
# Usage: check.sh BUILD_DIR (the daemons' --help comes from there)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:?usage: check.sh BUILD_DIR}
command -v kubectl >/dev/null || { echo "check: kubectl missing (deploy/install-deps.sh)" >&2; exit 1; }
for dir in tests/deploy .railway; do
  if [ ! -d "$root/$dir/node_modules" ] || [ "$root/$dir/package-lock.json" -nt "$root/$dir/node_modules" ]; then
    npm ci --prefix "$root/$dir" --no-audit --no-fund >/dev/null
  fi
done
node "$root/tests/deploy/check.mjs" "$root" "$build" "$build/deploy-check"

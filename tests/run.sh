#!/usr/bin/env bash
# The whole test suite: installs what is missing (as root), builds with
# AddressSanitizer + UndefinedBehaviorSanitizer, and runs every test with ctest
# (cmocka unit tests and integration tests on real redis-server and PostgreSQL
# started in temp folders). Usage: tests/run.sh [extra ctest args, e.g. -R spine]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash deploy/install-deps.sh
# The fake Graph API and gowa servers the transport tests talk to.
if [ ! -d tests/fakes/node_modules ] || [ tests/fakes/package-lock.json -nt tests/fakes/node_modules ]; then
  npm ci --prefix tests/fakes --no-audit --no-fund >/dev/null
fi
# The deploy check's packages (Kubernetes and KEDA schemas; railway/iac, tsc).
for dir in tests/deploy .railway; do
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    npm ci --prefix "$dir" --no-audit --no-fund >/dev/null
  fi
done
build=${WACAST_TEST_BUILD:-$root/build-test}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DWACAST_SANITIZE=ON >/dev/null
cmake --build "$build" -j"$(nproc)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd "$build"
ctest --output-on-failure --timeout 900 -j2 "$@"

#!/usr/bin/env bash
# CI-sized run of the benchmark harness: 20,000 messages over 50 simulated
# devices, everything the full run does (wacast, the BullMQ baseline, the raw
# limits, the report), then asserts the counts from the run's JSON: every lead
# sent exactly once, per the simulated provider's record AND per PostgreSQL.
# No timing assertion (speed is what bench/run.sh reports, not what CI gates).
# Exit 0 when the counts are right, non-zero otherwise.
#
#   bench/ci-check.sh [extra bench/run.sh options, e.g. --build build --no-build]
#
# BENCH_CI_MESSAGES / BENCH_CI_DEVICES override the size.
set -Eeuo pipefail

here=$(cd "$(dirname "$0")" && pwd)
n=${BENCH_CI_MESSAGES:-20000}
d=${BENCH_CI_DEVICES:-50}
out=$(mktemp -d /tmp/wacast-bench-ci.XXXXXX)
trap 'rm -rf "$out"' EXIT

rc=0
timeout 900 "$here/run.sh" --messages "$n" --devices "$d" --out "$out" --budget 300 "$@" || rc=$?
json=$(ls "$out"/*.json 2>/dev/null | head -1 || true)
if [ -z "$json" ]; then
  echo "ci-check: bench/run.sh produced no result (exit $rc)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

check=0
node - "$json" "$n" <<'EOF' || check=$?
const r = require(process.argv[2]);
const n = Number(process.argv[3]);
let passed = 0, failed = 0;
const check = (what, ok, detail) => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${ok ? '' : ': ' + detail}`);
};
for (const name of ['wacast', 'baseline']) {
  const v = r[name].verify;
  if (!v) {
    check(`${name}: verified`, false, 'no verification result');
    continue;
  }
  const pg = v.postgres, rec = v.record;
  check(`${name}: verifier found no error`, v.ok && !v.partial, (v.errors || []).join('; ') || 'cut short');
  check(`${name}: ${n} message rows in PostgreSQL`, pg.rows === n, `${pg.rows}`);
  check(`${name}: ${n} distinct recipients in PostgreSQL`, pg.phones === n, `${pg.phones}`);
  check(`${name}: every row has status sent`, pg.sent === n && pg.not_sent === 0, `${pg.sent} sent, ${pg.not_sent} other`);
  check(`${name}: ${n} sends in the provider record`, rec.entries === n, `${rec.entries}`);
  check(`${name}: ${n} distinct messages in the provider record`, rec.distinct_messages === n, `${rec.distinct_messages}`);
  check(`${name}: no duplicate send`, rec.duplicates === 0, `${rec.duplicates}`);
  check(`${name}: every send went to its row's recipient`, rec.wrong_recipient === 0 && rec.unknown_msg === 0,
    `${rec.wrong_recipient} wrong recipient, ${rec.unknown_msg} unknown`);
  const ph = r[name].phase;
  check(`${name}: campaign finished with sent_count = ${n}`, ph && ph.status === 'finished' && ph.sent === n,
    ph ? `${ph.status}, sent ${ph.sent}` : 'no phase');
}
check('raw limits measured', !!(r.raw && r.raw.pg && r.raw.redis_xadd_per_s), 'missing');
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
EOF
[ "$rc" -eq 0 ] || { echo "ci-check: bench/run.sh exited $rc" >&2; exit "$rc"; }
exit "$check"

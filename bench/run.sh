#!/usr/bin/env bash
# wacast throughput benchmark, in one command (see bench/README.md):
#
#   bench/run.sh [--messages N] [--devices D] [--senders S] [--dispatchers K]
#                [--baseline-workers W] [--baseline-concurrency C]
#                [--skip-wacast] [--skip-baseline] [--skip-raw] [--profile] [--keep]
#                [--timeout SECONDS] [--budget SECONDS] [--raw-rows R]
#                [--out DIR] [--build DIR] [--no-build]
#                [--scheduler-env "K=V ..."] [--dispatcher-env "..."] [--sender-env "..."]
#                [--appendfsync everysec|always] [--sequence]
#
# --sequence measures a drip sequence instead: one step sent to N enrolled
# contacts (every lead tagged, the sequence set active at the start of the
# clock), wacast only (no baseline, no raw tests); results in
# bench/results/<timestamp>-sequence.{json,md}, next to the latest campaign
# figure.
#
# Starts its own Redis and PostgreSQL in a temporary folder on free loopback
# ports, loads N leads and D simulated devices once (a template database),
# then measures, one after the other and each on a fresh Redis:
#   1. wacast: scheduler + dispatcher(s) + sender(s) on a campaign with zero
#      pacing delays, from the instant the campaign becomes due until every
#      status is written in PostgreSQL and the campaign is finished;
#   2. the BullMQ baseline (bench/baseline) on an identical copy of the data;
#   3. the raw limits: redis-benchmark XADD (pipelined) and batched
#      INSERT / UPDATE ... FROM unnest on a table shaped like broadcast_messages.
# Checks that each pipeline sent every lead exactly once, and writes
# bench/results/<timestamp>.json, .md and .png. Everything it starts is
# stopped on exit, failure included.
set -Eeuo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

messages=1000000
devices=1000
senders=2
dispatchers=1
baseline_workers=2
baseline_concurrency=100
skip_baseline=0
skip_wacast=0
skip_raw=0
profile=0
keep=0
phase_timeout=600   # longest a measured phase may run
budget=585          # the whole run: phases get shorter time-outs so it ends within this
raw_rows=300000     # rows of the raw PostgreSQL test (at most --messages)
outdir=$here/results
build=$root/build-bench
do_build=1
interval_ms=500
scheduler_env="" dispatcher_env="" sender_env=""
sequence=0
appendfsync=${WACAST_REDIS_APPENDFSYNC:-everysec}   # Redis AOF fsync policy, as deploy/stack.sh

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) messages=$2; shift 2 ;;
    --devices) devices=$2; shift 2 ;;
    --senders) senders=$2; shift 2 ;;
    --dispatchers) dispatchers=$2; shift 2 ;;
    --baseline-workers) baseline_workers=$2; shift 2 ;;
    --baseline-concurrency) baseline_concurrency=$2; shift 2 ;;
    --skip-baseline) skip_baseline=1; shift ;;
    --skip-wacast) skip_wacast=1; shift ;;
    --skip-raw) skip_raw=1; shift ;;
    --profile) profile=1; shift ;;
    --keep) keep=1; shift ;;
    --timeout) phase_timeout=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --raw-rows) raw_rows=$2; shift 2 ;;
    --out) outdir=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --scheduler-env) scheduler_env=$2; shift 2 ;;
    --dispatcher-env) dispatcher_env=$2; shift 2 ;;
    --sender-env) sender_env=$2; shift 2 ;;
    --appendfsync) appendfsync=$2; shift 2 ;;
    --sequence) sequence=1; skip_baseline=1; skip_raw=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in messages devices senders dispatchers baseline_workers baseline_concurrency phase_timeout budget raw_rows; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "run.sh: --${v//_/-} must be a positive integer" >&2; exit 2; }
done
case "$appendfsync" in
  everysec|always) ;;
  *) echo "run.sh: --appendfsync (WACAST_REDIS_APPENDFSYNC) must be everysec or always" >&2; exit 2 ;;
esac
[ "$messages" -le 9999999 ] || { echo "run.sh: --messages must be at most 9,999,999" >&2; exit 2; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
started=$(date +%s)
deadline=$(( started + budget ))
[ "$raw_rows" -le "$messages" ] || raw_rows=$messages
# A phase's time-out: --timeout, shortened so that what still has to run
# after it (reserve seconds) fits in the budget; at least 30 s.
phase_limit() {
  local left=$(( deadline - $(date +%s) - $1 ))
  [ "$left" -lt "$phase_timeout" ] || left=$phase_timeout
  [ "$left" -ge 30 ] || left=30
  echo "$left"
}
log() { printf '[bench %5ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ---- clean-up: whatever happens, stop everything this run started -------------------------------

work=""
pids=()          # every background process we started
redis_port="" pg_port=""
pgbin=/usr/lib/postgresql/15/bin
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  if [ -n "$redis_port" ]; then redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1; fi
  if [ -n "$work" ] && [ -f "$work/pg/PG_VERSION" ]; then
    as_pg "$pgbin/pg_ctl" -D "$work/pg" -m immediate -w -t 30 stop >/dev/null 2>&1
  fi
  if [ -n "$work" ]; then
    if [ "$keep" -eq 1 ] || [ "$rc" -ne 0 ]; then
      log "work folder kept: $work (logs in $work/log)"
    else
      rm -rf "$work"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a long step as a background child and waits for it: bash runs a trap
# only between commands, so a step in the foreground would hold SIGTERM/SIGINT
# back until it ends; `wait` is interrupted at once, and cleanup stops the step.
step() {
  "$@" &
  local p=$! rc=0
  pids+=("$p")
  wait "$p" || rc=$?
  return "$rc"
}

# ---- dependencies -------------------------------------------------------------------------------

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in redis-server redis-tools postgresql postgresql-client gnuplot-nox; do have "$p" || need_pkgs+=("$p"); done
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
if [ "$profile" -eq 1 ] && ! command -v perf >/dev/null 2>&1; then need_pkgs+=(linux-perf); fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq || true
  timeout 900 apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if [ "$do_build" -eq 1 ]; then
  timeout 900 "$root/deploy/install-deps.sh"
  log "building wacast (Release) in $build"
  timeout 900 cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  timeout 900 cmake --build "$build" -j2 --target wacast-scheduler wacast-dispatcher wacast-sender wacast-ctl >/dev/null
fi
for b in scheduler dispatcher sender ctl; do
  [ -x "$build/wacast-$b" ] || die "$build/wacast-$b missing (build first, or drop --no-build)"
done
if [ ! -f "$here/baseline/node_modules/.package-lock.json" ] ||
   [ "$here/baseline/package-lock.json" -nt "$here/baseline/node_modules/.package-lock.json" ]; then
  log "installing the baseline's npm packages (npm ci)"
  # npm 11's ci refuses this lock over optional per-platform packages of
  # msgpackr-extract that it lists without versions; npm install keeps to the
  # locked versions all the same.
  (cd "$here/baseline" && { timeout 600 npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1 ||
     timeout 600 npm install --no-audit --no-fund --loglevel=error >/dev/null; })
fi

# ---- Redis and PostgreSQL in a temporary folder ----------------------------------------------------

free_port() { # a loopback port below the ephemeral range that no socket uses
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
  die "no free port"
}

work=$(mktemp -d /tmp/wacast-bench.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/log" "$work/out" "$work/redis"
redis_port=$(free_port)
pg_port=$(free_port)
[ "$pg_port" != "$redis_port" ] || pg_port=$(free_port)
pg_base="postgresql://postgres@127.0.0.1:$pg_port"
redis_url="redis://127.0.0.1:$redis_port/0"
log "work folder $work; redis :$redis_port, postgres :$pg_port"

# Same settings as deploy/stack.sh (production-like: AOF, everysec unless
# --appendfsync always, noeviction).
redis_start() { # phase: a fresh redis-server (new port if the old one was taken meanwhile)
  rm -rf "$work/redis" && mkdir -p "$work/redis"
  for _ in 1 2 3 4 5; do
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --save "" \
      --appendonly yes --appendfsync "$appendfsync" --maxmemory-policy noeviction \
      --auto-aof-rewrite-min-size 512mb \
      --daemonize yes --pidfile "$work/redis/redis.pid" --logfile "$work/log/redis-$1.log"
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
      redis_pid=$(cat "$work/redis/redis.pid")
      redis_url="redis://127.0.0.1:$redis_port/0"
      return 0
    fi
    redis_port=$(free_port)
  done
  die "redis-server did not start (see $work/log/redis-$1.log)"
}
redis_stop() {
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  for _ in $(seq 100); do kill -0 "$redis_pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$redis_pid" 2>/dev/null || true
}

# PostgreSQL refuses to run as root: as root it runs as the postgres user (as deploy/stack.sh does).
pg_as=(); [ "$(id -u)" -ne 0 ] || pg_as=(runuser -u postgres --)
mkdir -p "$work/pg" "$work/pgsock"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$work/pg" "$work/pgsock" "$work/log"
timeout 120 "${pg_as[@]}" "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 --locale=C \
  >"$work/log/initdb.log" 2>&1 || die "initdb failed (see $work/log/initdb.log)"
timeout 120 "${pg_as[@]}" "$pgbin/pg_ctl" -D "$work/pg" -l "$work/log/postgres.log" -w -t 60 \
  -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pgsock -c max_connections=200 -c shared_buffers=256MB -c max_wal_size=4GB -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_planning=on" \
  start >/dev/null || die "postgres did not start (see $work/log/postgres.log)"
pg_pid=$(head -1 "$work/pg/postmaster.pid")
psql_q() { timeout "${2:-600}" psql "$pg_base/${3:-postgres}" -v ON_ERROR_STOP=1 -qtAX -c "$1"; }

# ---- data: one template database, cloned for each pipeline ----------------------------------------

log "loading $messages leads and $devices devices"
psql_q "CREATE DATABASE bench_seed"
psql_q "CREATE EXTENSION pg_stat_statements" 60 bench_seed
DATABASE_URL="$pg_base/bench_seed" timeout 120 "$build/wacast-ctl" migrate >"$work/log/migrate.log" 2>&1 \
  || die "migrations failed (see $work/log/migrate.log)"
seed_t0=$(date +%s%N)
step timeout 900 psql "$pg_base/bench_seed" -qtAX -v ON_ERROR_STOP=1 -v leads="$messages" -v devices="$devices" \
  -f "$here/sql/seed.sql" >"$work/log/seed.log" 2>&1 || die "seeding failed (see $work/log/seed.log)"
campaign=$(sed -n 's/^campaign //p' "$work/log/seed.log")
[ -n "$campaign" ] || die "seeding failed"
seed_s=$(awk -v a="$(date +%s%N)" -v b="$seed_t0" 'BEGIN { printf "%.1f", (a - b) / 1e9 }')
sequence_id=""
if [ "$sequence" -eq 1 ]; then
  step timeout 900 psql "$pg_base/bench_seed" -qtAX -v ON_ERROR_STOP=1 -f "$here/sql/seed-sequence.sql" \
    >"$work/log/seed-sequence.log" 2>&1 || die "seeding the sequence failed (see $work/log/seed-sequence.log)"
  sequence_id=$(sed -n 's/^sequence //p' "$work/log/seed-sequence.log")
  [ -n "$sequence_id" ] || die "seeding the sequence failed"
  log "sequence $sequence_id (one step, $messages leads tagged)"
fi
for db in wacast baseline; do psql_q "CREATE DATABASE $db TEMPLATE bench_seed STRATEGY FILE_COPY"; done
log "seeded in ${seed_s}s; campaign $campaign"

# ---- helpers for the phases -----------------------------------------------------------------------

start_bg() { # name cmd... (env is inherited): starts it, records its pid
  local name=$1; shift
  "$@" >>"$work/log/$name.log" 2>&1 &
  pids+=("$!")
  eval "pid_${name//-/_}=$!"
}
stop_pids() { # pids...: SIGTERM, wait up to 15 s, then SIGKILL
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      log "process $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-80)) ignored SIGTERM for 15 s: killed"
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
}
metric() { # url name: the value of one Prometheus series, or 0
  curl -fsS --max-time 1 "$1" 2>/dev/null | awk -v n="$2" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}
wait_for() { # seconds description command...: retries the command every 0.2 s
  local secs=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}
proc_json() { # name pid [tree]
  printf '{"name":"%s","pid":%s%s}' "$1" "$2" "${3:+,\"tree\":true}"
}

# The simulated provider keeps every send of the run (the exactly-once proof reads them all).
sim_maxlen=$(( messages * 2 > 5000000 ? messages * 2 : 5000000 ))

# ---- phase 1: wacast ---------------------------------------------------------------------------------

wacast_rc=skipped wacast_ok=skipped
if [ "$skip_wacast" -eq 0 ]; then
  redis_start wacast
  wacast_db="$pg_base/wacast"
  export DATABASE_URL=$wacast_db REDIS_URL=$redis_url WACAST_LOG_LEVEL=info
  export WACAST_SIM_RECORD_MAXLEN=$sim_maxlen
  http_sched=$(free_port)
  log "wacast: starting 1 scheduler, $dispatchers dispatcher(s), $senders sender(s)"
  # shellcheck disable=SC2086 # the *_env options are word-split on purpose (K=V K=V)
  PORT=$http_sched WACAST_INSTANCE_ID=bench-scheduler start_bg scheduler env $scheduler_env "$build/wacast-scheduler"
  daemon_pids=("$pid_scheduler") daemon_names=(scheduler)
  procs="$(proc_json scheduler "$pid_scheduler")"
  metrics_json="{\"url\":\"http://127.0.0.1:$http_sched/metrics\",\"fields\":{\"published\":\"wacast_scheduler_messages_published_total\"}}"
  disp_urls=() send_urls=()
  for i in $(seq "$dispatchers"); do
    port=$(free_port)
    PORT=$port WACAST_INSTANCE_ID=bench-dispatcher-$i start_bg "dispatcher-$i" env $dispatcher_env "$build/wacast-dispatcher"
    eval "p=\$pid_dispatcher_$i"; daemon_pids+=("$p"); daemon_names+=("dispatcher-$i"); procs+=",$(proc_json "dispatcher-$i" "$p")"
    disp_urls+=("http://127.0.0.1:$port/metrics")
    metrics_json+=",{\"url\":\"http://127.0.0.1:$port/metrics\",\"fields\":{\"routed\":\"wacast_dispatcher_jobs_routed_total\",\"results_written\":\"wacast_dispatcher_results_written_total\"}}"
  done
  for i in $(seq "$senders"); do
    port=$(free_port)
    PORT=$port WACAST_INSTANCE_ID=bench-sender-$i start_bg "sender-$i" env $sender_env "$build/wacast-sender"
    eval "p=\$pid_sender_$i"; daemon_pids+=("$p"); daemon_names+=("sender-$i"); procs+=",$(proc_json "sender-$i" "$p")"
    send_urls+=("http://127.0.0.1:$port/metrics")
    metrics_json+=",{\"url\":\"http://127.0.0.1:$port/metrics\",\"fields\":{\"sent_reported\":\"wacast_sender_sent_total\"}}"
  done
  procs+=",$(proc_json redis "$redis_pid"),$(proc_json postgres "$pg_pid" tree)"

  wacast_ready() {
    local held=0 online
    for u in "${send_urls[@]}"; do held=$(( held + $(metric "$u" wacast_sender_devices_held | cut -d. -f1) )); done
    [ "$held" -ge "$devices" ] || return 1
    for u in "${disp_urls[@]}"; do
      online=$(metric "$u" wacast_dispatcher_online_devices | cut -d. -f1)
      [ "${online:-0}" -ge "$devices" ] || return 1
    done
    [ "$(psql_q "SELECT count(*) FROM user_devices WHERE status = 'online'" 10 wacast)" -ge "$devices" ]
  }
  wait_for 120 "the wacast daemons to own and bring online $devices devices" wacast_ready
  log "wacast: $devices devices online; making the campaign due"

  # Leave time for the baseline (it needs the longest), the raw tests and the checks.
  wacast_limit=$(phase_limit $(( 40 + (skip_baseline ? 0 : 150) + (skip_raw ? 0 : 40) )))
  log "wacast: measuring (time-out ${wacast_limit}s)"
  perf_pid=""
  if [ "$profile" -eq 1 ]; then
    # System-wide: the daemons, redis-server and every postgres backend, one timeline.
    perf record -a -g -F 499 -o "$work/out/perf.data" >>"$work/log/perf.log" 2>&1 &
    perf_pid=$!; pids+=("$perf_pid")
  fi

  cat >"$work/wacast-phase.json" <<EOF
{"name":"wacast","db":"$wacast_db","campaign":"$campaign","redis":"$redis_url",
 "sequence":$([ -n "$sequence_id" ] && echo "\"$sequence_id\"" || echo null),
 "simKey":"wacast:sim:sends","streams":{"jobs":"wacast:jobs","results":"wacast:results"},
 "metrics":[$metrics_json],"procs":[$procs],
 "intervalMs":$interval_ms,"timeoutS":$wacast_limit,
 "out":"$work/out/wacast.samples.jsonl","summary":"$work/out/wacast.phase.json"}
EOF
  wacast_rc=0
  step timeout $(( wacast_limit + 60 )) node "$here/tools/phase.js" "$work/wacast-phase.json" || wacast_rc=$?
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; fi
  stop_pids "${daemon_pids[@]}"
  log "wacast: stopped; verifying"
  if [ "$profile" -eq 1 ]; then
    mkdir -p "$outdir"
    prof=$outdir/$stamp.profile.txt
    {
      echo "# perf record -a -F 499 over the wacast phase ($messages messages): CPU samples by process"
      timeout 300 perf report -i "$work/out/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null \
      | grep -v '^$' | grep -v '^#' | head -15
      for c in wacast-schedule wacast-dispatch wacast-sender redis-server postgres; do
        echo; echo "# $c: self time by shared object and symbol (>= 0.5%)"
        timeout 300 perf report -i "$work/out/perf.data" --no-children --comm "$c" --percentage relative --sort dso,sym --stdio -g none \
          --percent-limit 0.5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -45
      done
    } >"$prof"
    log "profile in $prof"
  fi
  [ -s "$work/out/wacast.phase.json" ] || die "wacast phase produced no summary (see $work/log)"
  if [ "$sequence" -eq 1 ]; then
    # Exactly once: one sent step message per lead in PostgreSQL (UNIQUE per
    # step and lead), as many sends in the simulated provider's record.
    sent_rows=$(psql_q "SELECT count(*) FROM broadcast_messages WHERE sequence_id = '$sequence_id' AND status = 'sent'" 300 wacast)
    leads_with=$(psql_q "SELECT count(DISTINCT lead_id) FROM broadcast_messages WHERE sequence_id = '$sequence_id' AND status = 'sent'" 300 wacast)
    recorded=$(redis-cli -p "$redis_port" xlen wacast:sim:sends)
    redis_stop
    log "sequence: $sent_rows step messages sent to $leads_with leads; $recorded sends recorded"
    mkdir -p "$outdir"
    step timeout 120 node "$here/tools/sequence-report.js" "$work/out/wacast.phase.json" "$outdir" "$stamp" \
      "$messages" "$devices" "$sent_rows" "$leads_with" "$recorded" \
      "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" || die "report failed"
    [ "$wacast_rc" = 0 ] || die "wacast did not finish the sequence within its time-out (${wacast_limit}s)"
    [ "$sent_rows" = "$messages" ] && [ "$leads_with" = "$messages" ] && [ "$recorded" = "$messages" ] ||
      die "sequence: expected $messages sends, each lead once"
    log "done in $(( $(date +%s) - started ))s: $outdir/$stamp-sequence.{json,md}"
    exit 0
  fi
  cat >"$work/wacast-verify.json" <<EOF
{"name":"wacast","db":"$wacast_db","campaign":"$campaign","redis":"$redis_url","simKey":"wacast:sim:sends",
 "expected":$messages,"partial":$([ "$wacast_rc" = 0 ] && echo false || echo true),"out":"$work/out/wacast.verify.json"}
EOF
  wacast_ok=0
  step timeout 600 node "$here/tools/verify.js" "$work/wacast-verify.json" || wacast_ok=$?
  redis_stop
fi

# ---- phase 2: the BullMQ baseline -------------------------------------------------------------------

baseline_ok=skipped baseline_rc=skipped
if [ "$skip_baseline" -eq 0 ]; then
  redis_start baseline
  base_db="$pg_base/baseline"
  log "baseline: starting 1 producer and $baseline_workers BullMQ worker process(es), concurrency $baseline_concurrency each"
  bprocs="" bpids=()
  for i in $(seq "$baseline_workers"); do
    DATABASE_URL=$base_db REDIS_URL=$redis_url BASELINE_CONCURRENCY=$baseline_concurrency \
      BASELINE_SIM_MAXLEN=$sim_maxlen BASELINE_INSTANCE=baseline-worker-$i \
      BASELINE_READY_FILE="$work/out/baseline-worker-$i.ready" \
      start_bg "baseline-worker-$i" node "$here/baseline/worker.js"
    eval "p=\$pid_baseline_worker_$i"; bpids+=("$p"); bprocs+="$(proc_json "worker-$i" "$p"),"
  done
  DATABASE_URL=$base_db REDIS_URL=$redis_url BASELINE_INSTANCE=baseline-producer \
    BASELINE_READY_FILE="$work/out/baseline-producer.ready" start_bg baseline-producer node "$here/baseline/producer.js"
  bpids+=("$pid_baseline_producer"); bprocs+="$(proc_json producer "$pid_baseline_producer")"
  bprocs+=",$(proc_json redis "$redis_pid"),$(proc_json postgres "$pg_pid" tree)"
  baseline_ready() {
    [ -f "$work/out/baseline-producer.ready" ] || return 1
    for i in $(seq "$baseline_workers"); do [ -f "$work/out/baseline-worker-$i.ready" ] || return 1; done
  }
  wait_for 60 "the baseline processes to connect" baseline_ready
  baseline_limit=$(phase_limit $(( 25 + (skip_raw ? 0 : 35) )))
  cat >"$work/baseline-phase.json" <<EOF
{"name":"baseline","db":"$base_db","campaign":"$campaign","redis":"$redis_url",
 "simKey":"baseline:sim:sends","lists":{"wait":"bull:sends:wait"},"publishedKey":"bull:sends:id",
 "metrics":[],"procs":[$bprocs],
 "intervalMs":$interval_ms,"timeoutS":$baseline_limit,
 "out":"$work/out/baseline.samples.jsonl","summary":"$work/out/baseline.phase.json"}
EOF
  log "baseline: making the campaign due; measuring (time-out ${baseline_limit}s)"
  baseline_rc=0
  step timeout $(( baseline_limit + 60 )) node "$here/tools/phase.js" "$work/baseline-phase.json" || baseline_rc=$?
  stop_pids "${bpids[@]}"
  log "baseline: stopped; verifying"
  cat >"$work/baseline-verify.json" <<EOF
{"name":"baseline","db":"$base_db","campaign":"$campaign","redis":"$redis_url","simKey":"baseline:sim:sends",
 "expected":$messages,"partial":$([ "$baseline_rc" = 0 ] && echo false || echo true),"out":"$work/out/baseline.verify.json"}
EOF
  baseline_ok=0
  step timeout 600 node "$here/tools/verify.js" "$work/baseline-verify.json" || baseline_ok=$?
  redis_stop
fi

# ---- phase 3: the raw limits --------------------------------------------------------------------------

if [ "$skip_raw" -eq 0 ]; then
  redis_start raw
  log "raw: redis-benchmark XADD, $messages entries, pipelined (-P 64, 50 clients)"
  # Short of time (a slow baseline): smaller raw tests rather than a blown budget.
  if [ $(( deadline - $(date +%s) )) -lt 70 ] && [ "$raw_rows" -gt 100000 ]; then raw_rows=100000; fi
  step timeout 300 redis-benchmark -p "$redis_port" -c 50 -P 64 -n "$messages" --csv XADD bench '*' f v \
    >"$work/out/redis-xadd.csv" 2>"$work/log/redis-benchmark.log" || die "redis-benchmark failed"
  redis-cli -p "$redis_port" del bench >/dev/null
  payload=$(head -c 150 /dev/zero | tr '\0' 'x')
  step timeout 300 redis-benchmark -p "$redis_port" -c 50 -P 64 -n "$messages" --csv XADD bench '*' j "$payload" \
    >"$work/out/redis-xadd-150.csv" 2>>"$work/log/redis-benchmark.log" || die "redis-benchmark failed"
  redis_stop
  psql_q "CREATE DATABASE raw TEMPLATE bench_seed STRATEGY FILE_COPY"
  log "raw: PostgreSQL batched INSERT and UPDATE ... FROM unnest, $raw_rows rows, batches of 2000"
  cat >"$work/raw-pg.json" <<EOF
{"db":"$pg_base/raw","rows":$raw_rows,"batch":2000,"conns":[1,2],"out":"$work/out/raw-pg.json"}
EOF
  step timeout 900 node "$here/tools/rawpg.js" "$work/raw-pg.json" || die "raw PostgreSQL benchmark failed"
fi

# ---- report ----------------------------------------------------------------------------------------

mkdir -p "$outdir"
cat >"$work/report.json" <<EOF
{"stamp":"$stamp","dir":"$work/out","outdir":"$outdir","messages":$messages,"devices":$devices,
 "senders":$senders,"dispatchers":$dispatchers,"baseline_workers":$baseline_workers,
 "baseline_concurrency":$baseline_concurrency,"appendfsync":"$appendfsync","seed_s":$seed_s,"interval_ms":$interval_ms,
 "git":"$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo -dirty)",
 "wacast_rc":"$wacast_rc","wacast_verify_rc":"$wacast_ok",
 "baseline_rc":"$baseline_rc","baseline_verify_rc":"$baseline_ok"}
EOF
step timeout 120 node "$here/tools/report.js" "$work/report.json" || die "report failed"
log "done in $(( $(date +%s) - started ))s: $outdir/$stamp.{json,md,png}"

if [ "$skip_wacast" -eq 0 ]; then
  [ "$wacast_rc" != 5 ] || die "a wacast daemon exited during the run (see the logs)"
  [ "$wacast_rc" = 0 ] || die "wacast did not finish the campaign within its time-out (${wacast_limit}s)"
  [ "$wacast_ok" = 0 ] || die "wacast sent a wrong count (see $outdir/$stamp.md)"
fi
if [ "$skip_baseline" -eq 0 ]; then
  # A baseline that runs out of time is reported with its steady rate, not fatal;
  # a baseline that sent something twice is.
  [ "$baseline_rc" != 5 ] || die "a baseline process exited during the run (see the logs)"
  [ "$baseline_rc" = 0 ] || log "warning: the baseline did not finish within its time-out (${baseline_limit}s); its rate is over the part it did"
  [ "$baseline_ok" = 0 ] || die "the baseline sent a wrong count"
fi

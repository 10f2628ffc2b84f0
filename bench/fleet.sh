#!/usr/bin/env bash
# wacast device-fleet benchmark: how ONE wacast-sender scales with the number
# of devices it holds (see bench/fleet.md).
#
#   bench/fleet.sh [--devices "1000 10000 30000"] [--msgs-per-device 3]
#                  [--min-delay 0.5] [--max-delay 1.5] [--idle-window SECONDS]
#                  [--hold-timeout SECONDS] [--campaign-timeout SECONDS]
#                  [--budget SECONDS] [--profile] [--trace] [--keep]
#                  [--build DIR] [--no-build] [--out DIR]
#                  [--sender-env "K=V ..."] [--dispatcher-env "..."] [--scheduler-env "..."]
#
# Starts its own Redis and PostgreSQL in a temporary folder on free loopback
# ports (PostgreSQL as the `postgres` user when run as root), applies the
# migrations (wacast-ctl migrate) into a template database, then:
#   0. baseline: one wacast-sender on an empty device table; its RSS;
#   for each D in --devices, on a fresh database and a fresh Redis:
#   1. one user, D `sim` devices (min/max delay 0.5 s / 1.5 s), 3·D leads
#      (lead i on device i mod D), inserted with generate_series;
#   2. starts ONE sender (PORT set, /metrics read), a dispatcher and a
#      scheduler; waits until wacast_sender_devices_held == D (bounded);
#   3. idle, every device held: sender VmRSS/VmHWM, and over --idle-window s
#      the CPU of sender, Redis and PostgreSQL, Redis commands by type and
#      PostgreSQL statements (pg_stat_statements);
#   4. a campaign to every lead (3·D messages, device pacing): end-to-end time
#      (campaign due_at -> finished_at), msgs/s, sender CPU s; from the sim
#      record (wacast:sim:sends: device, ts_us) the per-device gaps between
#      consecutive sends: inside [min,max], below min (must be none), above max
#      split into idle (next message not yet published) and late;
# prints a Markdown table and writes bench/results/fleet-<UTC stamp>.json/.md.
# Every step has a time-out; everything it starts is stopped on exit (failure
# and Ctrl-C included). --profile adds `perf record --call-graph dwarf` of the sender (idle
# window and campaign) to the report; --trace runs the sender with debug logs
# and adds what started each send's outbox read (pacing timer, wake-up, idle
# poll, ...) and the latency of each step of the send cycle.
set -Eeuo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

devices_list="1000 10000 30000"
per_device=3
min_delay=0.5
max_delay=1.5
idle_window=10
hold_timeout=240
campaign_timeout=300
budget=840
profile=0
trace=0
keep=0
build=$root/build-fleet
do_build=1
outdir=$here/results
sender_env="" dispatcher_env="" scheduler_env=""
cmdline="bench/fleet.sh${*:+ $*}"

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --devices) devices_list=$2; shift 2 ;;
    --msgs-per-device) per_device=$2; shift 2 ;;
    --min-delay) min_delay=$2; shift 2 ;;
    --max-delay) max_delay=$2; shift 2 ;;
    --idle-window) idle_window=$2; shift 2 ;;
    --hold-timeout) hold_timeout=$2; shift 2 ;;
    --campaign-timeout) campaign_timeout=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --profile) profile=1; shift ;;
    --trace) trace=1; shift ;;
    --keep) keep=1; shift ;;
    --build) build=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --out) outdir=$2; shift 2 ;;
    --sender-env) sender_env=$2; shift 2 ;;
    --dispatcher-env) dispatcher_env=$2; shift 2 ;;
    --scheduler-env) scheduler_env=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fleet.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for d in $devices_list; do
  [[ $d =~ ^[0-9]+$ ]] && [ "$d" -ge 1 ] && [ "$d" -le 200000 ] \
    || { echo "fleet.sh: --devices takes positive integers up to 200000" >&2; exit 2; }
done
for v in per_device idle_window hold_timeout campaign_timeout budget; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "fleet.sh: --${v//_/-} must be a positive integer" >&2; exit 2; }
done
for v in min_delay max_delay; do
  [[ ${!v} =~ ^[0-9]+(\.[0-9]{1,3})?$ ]] || { echo "fleet.sh: --${v//_/-} must be seconds (e.g. 0.5)" >&2; exit 2; }
done
awk -v a="$min_delay" -v b="$max_delay" 'BEGIN { exit !(a <= b) }' || { echo "fleet.sh: --min-delay above --max-delay" >&2; exit 2; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
started=$(date +%s)
deadline=$(( started + budget ))
log() { printf '[fleet %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
left() { echo $(( deadline - $(date +%s) )); }
# A step's time-out: its own bound, cut to what is left of the budget (at least 10 s).
bound() { local l; l=$(left); [ "$l" -lt "$1" ] || l=$1; [ "$l" -ge 10 ] || l=10; echo "$l"; }

for c in redis-server redis-cli psql curl ss python3 awk runuser; do
  command -v "$c" >/dev/null 2>&1 || die "$c is missing (deploy/install-deps.sh, apt-get install redis-server postgresql curl)"
done
pgbin=/usr/lib/postgresql/15/bin
[ -x "$pgbin/initdb" ] || die "PostgreSQL 15 server binaries not found in $pgbin"
[ "$trace" -eq 0 ] || sender_env="WACAST_LOG_LEVEL=debug $sender_env"
if [ "$profile" -eq 1 ]; then command -v perf >/dev/null 2>&1 || die "--profile needs perf (apt-get install linux-perf)"; fi

# ---- clean-up: whatever happens, stop everything this run started ----------------------------

work="" redis_port="" redis_pid="" pg_started=0
pids=()
# PostgreSQL refuses to run as root: as root it runs as the postgres user (as deploy/stack.sh does).
pg_as=(); [ "$(id -u)" -ne 0 ] || pg_as=(runuser -u postgres --)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  if [ -n "$redis_port" ]; then timeout 10 redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1; fi
  if [ -n "$redis_pid" ]; then
    for _ in $(seq 50); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$redis_pid" 2>/dev/null
  fi
  if [ "$pg_started" -eq 1 ]; then
    timeout 60 "${pg_as[@]}" "$pgbin/pg_ctl" -D "$work/pg" -m immediate -w -t 30 stop >/dev/null 2>&1
  fi
  if [ -n "$work" ]; then
    if [ "$keep" -eq 1 ] || [ "$rc" -ne 0 ]; then log "work folder kept: $work (logs in $work/log)"; else rm -rf "$work"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A long step runs in the background so that Ctrl-C / SIGTERM reach the trap at once.
step() { "$@" & local p=$! rc=0; pids+=("$p"); wait "$p" || rc=$?; return "$rc"; }

# ---- build ------------------------------------------------------------------------------------

if [ "$do_build" -eq 1 ]; then
  log "building (RelWithDebInfo) in $build"
  mkdir -p "$build"
  step timeout "$(bound 600)" cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build/fleet-cmake.log" 2>&1 \
    || die "cmake configure failed (see $build/fleet-cmake.log)"
  step timeout "$(bound 600)" cmake --build "$build" -j2 --target wacast-scheduler wacast-dispatcher wacast-sender wacast-ctl \
    >>"$build/fleet-cmake.log" 2>&1 || die "build failed (see $build/fleet-cmake.log)"
fi
for b in scheduler dispatcher sender ctl; do
  [ -x "$build/wacast-$b" ] || die "$build/wacast-$b missing (build first, or drop --no-build)"
done

# ---- Redis and PostgreSQL in a temporary folder ----------------------------------------------

free_port() {
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
  die "no free port"
}
work=$(mktemp -d /tmp/wacast-fleet.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/log" "$work/out" "$work/redis" "$work/pg" "$work/pgsock"
redis_port=$(free_port)
pg_port=$(free_port); [ "$pg_port" != "$redis_port" ] || pg_port=$(free_port)
pg_base="postgresql://postgres@127.0.0.1:$pg_port"
redis_url="redis://127.0.0.1:$redis_port/0"
log "work folder $work; redis :$redis_port, postgres :$pg_port"

# Same settings as deploy/stack.sh (AOF everysec, noeviction).
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --save "" \
  --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
  --daemonize yes --pidfile "$work/redis/redis.pid" --logfile "$work/log/redis.log"
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" ping >/dev/null 2>&1 || die "redis-server did not start (see $work/log/redis.log)"
redis_pid=$(cat "$work/redis/redis.pid")
rcli() { timeout "${RCLI_TIMEOUT:-30}" redis-cli -p "$redis_port" "$@"; }

[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$work/pg" "$work/pgsock" "$work/log"
timeout 120 "${pg_as[@]}" "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 --locale=C \
  >"$work/log/initdb.log" 2>&1 || die "initdb failed (see $work/log/initdb.log)"
pg_started=1
timeout 120 "${pg_as[@]}" "$pgbin/pg_ctl" -D "$work/pg" -l "$work/log/postgres.log" -w -t 60 \
  -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pgsock -c max_connections=200 -c shared_buffers=256MB -c shared_preload_libraries=pg_stat_statements" \
  start >/dev/null || die "postgres did not start (see $work/log/postgres.log)"
pg_pid=$(head -1 "$work/pg/postmaster.pid")
psql_q() { timeout "${2:-120}" psql "$pg_base/${3:-postgres}" -v ON_ERROR_STOP=1 -qtAX -c "$1"; }

psql_q "CREATE DATABASE fleet_tpl"
psql_q "CREATE EXTENSION pg_stat_statements" 60 fleet_tpl
DATABASE_URL="$pg_base/fleet_tpl" timeout 120 "$build/wacast-ctl" migrate >"$work/log/migrate.log" 2>&1 \
  || die "migrations failed (see $work/log/migrate.log)"
log "$(grep '^migrations:' "$work/log/migrate.log")"

cat >"$work/seed.sql" <<'SQL'
BEGIN;
INSERT INTO users (name) VALUES ('fleet') RETURNING id AS user_id \gset
INSERT INTO user_devices (user_id, device_name, phone, platform, min_delay_seconds, max_delay_seconds)
SELECT :'user_id', 'fleet-' || g, '+6030' || lpad(g::text, 7, '0'), 'sim', :mind, :maxd
FROM generate_series(1, :devices) g;
-- lead g goes to device g mod D (ordered by id): every device gets the same number of leads
INSERT INTO leads (user_id, device_id, name, phone, niche, target_status)
SELECT :'user_id', d.ids[1 + g % :devices], 'Lead ' || g, '012' || lpad(g::text, 7, '0'), 'fleet', 'prospect'
FROM (SELECT array_agg(id ORDER BY id) AS ids FROM user_devices WHERE user_id = :'user_id') d,
     generate_series(1, :leads) g;
COMMIT;
ANALYZE;
SQL

# ---- helpers ----------------------------------------------------------------------------------

clk=$(getconf CLK_TCK)
cpu_s() { # pid: utime+stime in seconds (0 when gone)
  awk -v t="$clk" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat" 2>/dev/null || echo 0
}
pg_cpu_s() { # the postmaster, its live children and the children it reaped
  local p tot=0 c
  c=$(awk -v t="$clk" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13 + $14 + $15) / t }' "/proc/$pg_pid/stat")
  tot=$c
  for p in $(pgrep -P "$pg_pid"); do tot=$(awk -v a="$tot" -v b="$(cpu_s "$p")" 'BEGIN { printf "%.2f", a + b }'); done
  echo "$tot"
}
machine_busy_s() { # every CPU of the machine: busy seconds since boot
  awk -v t="$clk" '$1 == "cpu" { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / t; exit }' /proc/stat
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
metric() { # url series: the value, or 0
  curl -fsS --max-time 2 "$1" 2>/dev/null | awk -v n="$2" '$1 == n { print $2; f = 1 } END { if (!f) print 0 }' | cut -d. -f1
}
start_bg() { # name port cmd...: starts a daemon, prints its pid
  local name=$1 port=$2; shift 2
  PORT=$port WACAST_INSTANCE_ID="fleet-$name" WACAST_LOG_LEVEL=info "$@" >>"$work/log/$name-$cur.log" 2>&1 &
  pids+=("$!")
  echo "$!" >"$work/out/$name.pid"
}
stop_pid() { # pid: SIGTERM, 20 s, SIGKILL
  local p=$1
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then log "pid $p ignored SIGTERM for 20 s: killed"; kill -KILL "$p" 2>/dev/null || true; fi
  wait "$p" 2>/dev/null || true
}
wait_until() { # seconds what command...: retries every 0.25 s; returns 1 on time-out
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@"; do
    if [ "$(date +%s)" -ge "$end" ]; then log "timed out after ${secs}s waiting for $what"; return 1; fi
    sleep 0.25
  done
}
fact() { printf '%s=%s\n' "$1" "$2" >>"$facts"; }

perf_pid=""
perf_start() { # pid file
  [ "$profile" -eq 1 ] || return 0
  perf record --call-graph dwarf,16384 -F 199 -p "$1" -o "$2" >>"$work/log/perf.log" 2>&1 &
  perf_pid=$!; pids+=("$perf_pid")
}
perf_stop() { # file label: top self symbols into the facts folder
  [ "$profile" -eq 1 ] && [ -n "$perf_pid" ] || return 0
  kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; perf_pid=""
  timeout 120 perf report -i "$1" --no-children --sort sym --stdio -g none --percent-limit 1.5 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -25 >"$work/out/$cur.$2.perf.txt" || true
  timeout 120 perf report -i "$1" --children --sort sym --stdio -g none --percent-limit 3 2>/dev/null \
    | grep -v "^#" | grep -v "^$" | head -40 >"$work/out/$cur.$2.perf-children.txt" || true
}

# Idle window: the sender holds everything and there is no work. Leaves the figures in facts.
idle_window_measure() { # sender_pid [dispatcher_pid scheduler_pid]
  local sp=$1 dp=${2:-} cp=${3:-}
  psql_q "SELECT pg_stat_statements_reset()" 30 "$db" >/dev/null
  rcli CONFIG RESETSTAT >/dev/null
  local s0 r0 p0 t0 t1 m0 d0=0 c0=0
  fact idle_loadavg "$(cut -d' ' -f1 /proc/loadavg)"
  s0=$(cpu_s "$sp"); r0=$(cpu_s "$redis_pid"); p0=$(pg_cpu_s); m0=$(machine_busy_s); t0=$(date +%s.%N)
  [ -z "$dp" ] || d0=$(cpu_s "$dp"); [ -z "$cp" ] || c0=$(cpu_s "$cp")
  perf_start "$sp" "$work/out/$cur.idle.perf.data"
  sleep "$idle_window"
  perf_stop "$work/out/$cur.idle.perf.data" idle
  t1=$(date +%s.%N)
  fact idle_seconds "$(sub "$t1" "$t0")"
  fact idle_sender_cpu_s "$(sub "$(cpu_s "$sp")" "$s0")"
  fact idle_redis_cpu_s "$(sub "$(cpu_s "$redis_pid")" "$r0")"
  fact idle_machine_busy_s "$(sub "$(machine_busy_s)" "$m0")"
  [ -z "$dp" ] || fact idle_dispatcher_cpu_s "$(sub "$(cpu_s "$dp")" "$d0")"
  [ -z "$cp" ] || fact idle_scheduler_cpu_s "$(sub "$(cpu_s "$cp")" "$c0")"
  fact idle_pg_cpu_s "$(sub "$(pg_cpu_s)" "$p0")"
  fact rss_kb "$(status_kb "$sp" VmRSS)"
  fact hwm_kb "$(status_kb "$sp" VmHWM)"
  rcli INFO commandstats | tr -d '\r' | grep '^cmdstat_' >"$work/out/$cur.idle.redis.txt" || true
  psql_q "COPY (SELECT calls, rows, round(total_exec_time::numeric, 1), regexp_replace(left(query, 160), '\s+', ' ', 'g')
          FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 8)
          TO STDOUT WITH (FORMAT csv)" 30 "$db" >"$work/out/$cur.idle.pg.csv" || true
}

daemon() { # name port binary
  local extra
  case $3 in sender) extra=$sender_env ;; dispatcher) extra=$dispatcher_env ;; *) extra=$scheduler_env ;; esac
  # shellcheck disable=SC2086 # the *-env options are word-split on purpose (K=V K=V)
  start_bg "$1" "$2" env DATABASE_URL="$pg_base/$db" REDIS_URL="$redis_url" $extra "$build/wacast-$3"
}
# Every 0.5 s during the campaign: published (scheduler), routed (dispatcher), sent and
# device states (sender), as "seconds published routed sent idle pacing reading".
sampler() { # t0 file
  local t0=$1 m v a
  while :; do
    m=$(curl -fsS --max-time 1 "$surl" 2>/dev/null) || m=""
    v=("$(sub "$(date +%s.%N)" "$t0")"
       "$(curl -fsS --max-time 1 "$curl_sched" 2>/dev/null | awk '$1 == "wacast_scheduler_messages_published_total" { print $2 }')"
       "$(curl -fsS --max-time 1 "$durl" 2>/dev/null | awk '$1 == "wacast_dispatcher_jobs_routed_total" { print $2 }')")
    for a in sent_total 'devices{state="idle"}' 'devices{state="pacing"}' 'devices{state="reading"}'; do
      v+=("$(awk -v n="wacast_sender_$a" '$1 == n { print $2 }' <<<"$m")")
    done
    for a in "${!v[@]}"; do [ -n "${v[$a]}" ] || v[$a]=-; done   # "-": that daemon did not answer within 1 s
    echo "${v[*]}" >>"$2"
    sleep 0.5
  done
}

# ---- 0: the baseline, a sender with no device ---------------------------------------------------

cur=d0 db=fleet_d0 facts="$work/out/d0.facts"
: >"$facts"
psql_q "CREATE DATABASE $db TEMPLATE fleet_tpl"
rcli FLUSHALL >/dev/null
sport=$(free_port)
daemon sender "$sport" sender
spid=$(cat "$work/out/sender.pid")
surl="http://127.0.0.1:$sport/metrics"
sender_live() { [ "$(metric "$surl" wacast_sender_live_senders)" -ge 1 ]; }
wait_until "$(bound 60)" "the baseline sender to come up" sender_live || die "the baseline sender did not come up (see $work/log/sender-d0.log)"
sleep 3
idle_window_measure "$spid"
stop_pid "$spid"
rss0=$(awk -F= '$1 == "rss_kb" { print $2 }' "$facts")
log "baseline: sender with 0 devices: VmRSS ${rss0} kB"

# ---- per D ----------------------------------------------------------------------------------------

ran=()
for D in $devices_list; do
  cur=d$D db=fleet_d$D facts="$work/out/d$D.facts"
  : >"$facts"
  if [ "$(left)" -lt 60 ]; then
    log "D=$D: skipped, the budget (--budget $budget s) is spent"
    fact skipped "budget spent"
    ran+=("$D"); continue
  fi
  ran+=("$D")
  fact devices "$D"
  log "D=$D: loading 1 user, $D devices, $(( per_device * D )) leads"
  psql_q "CREATE DATABASE $db TEMPLATE fleet_tpl"
  t0=$(date +%s%N)
  step timeout "$(bound 300)" psql "$pg_base/$db" -v ON_ERROR_STOP=1 -qtAX -f "$work/seed.sql" \
    -v devices="$D" -v leads="$(( per_device * D ))" -v mind="$min_delay" -v maxd="$max_delay" \
    >"$work/log/seed-$cur.log" 2>&1 || die "seeding failed (see $work/log/seed-$cur.log)"
  fact seed_s "$(awk -v a="$(date +%s%N)" -v b="$t0" 'BEGIN { printf "%.1f", (a - b) / 1e9 }')"
  rcli FLUSHALL >/dev/null

  # One sender first (its lease acquisition is timed alone), then dispatcher and scheduler.
  sport=$(free_port); dport=$(free_port); cport=$(free_port)
  surl="http://127.0.0.1:$sport/metrics" durl="http://127.0.0.1:$dport/metrics" curl_sched="http://127.0.0.1:$cport/metrics"
  t_start=$(date +%s.%N)
  daemon sender "$sport" sender
  spid=$(cat "$work/out/sender.pid")
  daemon dispatcher "$dport" dispatcher
  dpid=$(cat "$work/out/dispatcher.pid")
  daemon scheduler "$cport" scheduler
  cpid=$(cat "$work/out/scheduler.pid")
  held_all() { [ "$(metric "$surl" wacast_sender_devices_held)" -ge "$D" ]; }
  hb=$(bound "$hold_timeout")
  if ! wait_until "$hb" "the sender to hold $D devices" held_all; then
    fact hold_timeout "$hb"
    fact held_at_timeout "$(metric "$surl" wacast_sender_devices_held)"
    log "D=$D: the sender holds $(metric "$surl" wacast_sender_devices_held) of $D devices after ${hb}s; skipping the rest of D=$D"
    curl -fsS --max-time 5 "$surl" >"$work/out/$cur.metrics-timeout.txt" 2>/dev/null || true
    stop_pid "$cpid"; stop_pid "$dpid"; stop_pid "$spid"
    continue
  fi
  t_held=$(date +%s.%N)
  fact hold_s "$(sub "$t_held" "$t_start")"
  fact hold_sender_cpu_s "$(cpu_s "$spid")"
  fact hold_hwm_kb "$(status_kb "$spid" VmHWM)"
  log "D=$D: sender holds $D devices after $(sub "$t_held" "$t_start") s"
  all_ready() {
    [ "$(metric "$surl" 'wacast_sender_devices{state="idle"}')" -ge "$D" ] &&
      [ "$(metric "$durl" wacast_dispatcher_online_devices)" -ge "$D" ]
  }
  if ! wait_until "$(bound 120)" "$D devices idle in the sender and online in the dispatcher" all_ready; then
    fact ready_timeout 1
    log "D=$D: sender idle=$(metric "$surl" 'wacast_sender_devices{state="idle"}'), dispatcher online=$(metric "$durl" wacast_dispatcher_online_devices); going on"
  fi
  fact ready_s "$(sub "$(date +%s.%N)" "$t_start")"
  sleep 3
  log "D=$D: idle window (${idle_window}s)"
  idle_window_measure "$spid" "$dpid" "$cpid"

  # ---- the campaign ----
  psql_q "SELECT pg_stat_statements_reset()" 30 "$db" >/dev/null
  rcli CONFIG RESETSTAT >/dev/null
  fact camp_loadavg "$(cut -d' ' -f1 /proc/loadavg)"
  s0=$(cpu_s "$spid"); r0=$(cpu_s "$redis_pid"); p0=$(pg_cpu_s); dc0=$(cpu_s "$dpid"); cc0=$(cpu_s "$cpid")
  m0=$(machine_busy_s); tc0=$(date +%s.%N)
  perf_start "$spid" "$work/out/$cur.campaign.perf.data"
  campaign=$(psql_q "INSERT INTO campaigns (user_id, title, message, target_status, scheduled_at)
    SELECT id, 'fleet', '{Hi|Hello} {{name}}, this is the wacast fleet benchmark.', 'all', now() FROM users
    RETURNING id" 30 "$db")
  fact campaign "$campaign"
  sampler "$(date +%s.%N)" "$work/out/$cur.series.txt" &
  sampler_pid=$!; pids+=("$sampler_pid")
  total=$(( per_device * D ))
  log "D=$D: campaign $campaign due ($total messages); waiting for it to finish"
  finished() {
    local st; st=$(psql_q "SELECT status FROM campaigns WHERE id = '$campaign'" 10 "$db")
    [ "$st" = finished ] || [ "$st" = failed ] || [ "$st" = cancelled ]
  }
  cb=$(bound "$campaign_timeout")
  if ! wait_until "$cb" "campaign $campaign to finish" finished; then fact campaign_timeout "$cb"; fi
  kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true
  perf_stop "$work/out/$cur.campaign.perf.data" campaign
  fact camp_sender_cpu_s "$(sub "$(cpu_s "$spid")" "$s0")"
  fact camp_redis_cpu_s "$(sub "$(cpu_s "$redis_pid")" "$r0")"
  fact camp_pg_cpu_s "$(sub "$(pg_cpu_s)" "$p0")"
  fact camp_dispatcher_cpu_s "$(sub "$(cpu_s "$dpid")" "$dc0")"
  fact camp_scheduler_cpu_s "$(sub "$(cpu_s "$cpid")" "$cc0")"
  fact camp_machine_busy_s "$(sub "$(machine_busy_s)" "$m0")"
  fact camp_wall_s "$(sub "$(date +%s.%N)" "$tc0")"
  fact after_rss_kb "$(status_kb "$spid" VmRSS)"
  fact after_hwm_kb "$(status_kb "$spid" VmHWM)"
  psql_q "SELECT status, total_count, sent_count, failed_count, skipped_count,
            round(extract(epoch FROM (coalesce(finished_at, now()) - due_at))::numeric, 3)
          FROM campaigns WHERE id = '$campaign'" 30 "$db" | tr '|' ' ' >"$work/out/$cur.campaign.txt"
  read -r c_status c_total c_sent c_failed c_skipped c_e2e <"$work/out/$cur.campaign.txt"
  fact camp_status "$c_status"; fact camp_total "$c_total"; fact camp_sent "$c_sent"
  fact camp_failed "$c_failed"; fact camp_skipped "$c_skipped"; fact e2e_s "$c_e2e"
  curl -fsS --max-time 5 "$surl" 2>/dev/null | grep '^wacast_sender' >"$work/out/$cur.sender-metrics.txt" || true
  rcli INFO commandstats | tr -d '\r' | grep '^cmdstat_' >"$work/out/$cur.campaign.redis.txt" || true
  psql_q "COPY (SELECT calls, rows, round(total_exec_time::numeric, 1), regexp_replace(left(query, 160), '\s+', ' ', 'g')
          FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 8)
          TO STDOUT WITH (FORMAT csv)" 30 "$db" >"$work/out/$cur.campaign.pg.csv" || true
  log "D=$D: campaign $c_status: $c_sent sent of $c_total in ${c_e2e}s; sender CPU $(awk -F= '$1 == "camp_sender_cpu_s" { print $2 }' "$facts") s"

  # The sim record (device, ts_us, message) and each message's publish time.
  RCLI_TIMEOUT=$(bound 120) rcli --raw EVAL "
    local out = {}
    for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
      local f, dev, ts, msg = e[2]
      for i = 1, #f, 2 do
        if f[i] == 'device' then dev = f[i + 1] elseif f[i] == 'ts_us' then ts = f[i + 1]
        elseif f[i] == 'msg' then msg = f[i + 1] end
      end
      out[#out + 1] = dev .. ' ' .. ts .. ' ' .. msg
    end
    return out" 1 wacast:sim:sends >"$work/out/$cur.sends.txt" || die "reading the sim record failed"
  psql_q "COPY (SELECT m.id, coalesce((extract(epoch FROM m.queued_at) * 1000000)::bigint, 0), l.device_id
          FROM broadcast_messages m LEFT JOIN leads l ON l.id = m.lead_id WHERE m.campaign_id = '$campaign')
          TO STDOUT" "$(bound 120)" "$db" >"$work/out/$cur.messages.tsv" || die "reading the messages failed"

  stop_pid "$cpid"; stop_pid "$dpid"
  t_stop=$(date +%s.%N)
  stop_pid "$spid"
  fact stop_s "$(sub "$(date +%s.%N)" "$t_stop")"
  # The database and Redis are no longer needed: keep the disk and memory of the next D clean.
  psql_q "DROP DATABASE $db" 120 >/dev/null || true
done

# ---- report ---------------------------------------------------------------------------------------

mkdir -p "$outdir"
json=$outdir/fleet-$stamp.json md=$outdir/fleet-$stamp.md
machine="$(nproc) × $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
versions="Redis $(redis-server --version | awk '{ print $3 }' | sed 's/^v=//'), PostgreSQL $("$pgbin/postgres" --version | awk '{ print $3 }'), wacast $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
# (a background step's stdin is /dev/null: the report script goes to a file first)
cat >"$work/report.py" <<'PY'
import csv, json, os, sys
from collections import defaultdict

out, jpath, mdpath, mind, maxd, per_dev, idle_w, cmdline, machine, versions, stamp = sys.argv[1:12]
ran = [int(x) for x in sys.argv[12:]]
min_us, max_us = round(float(mind) * 1e6), round(float(maxd) * 1e6)

def facts(name):
    f = {}
    p = os.path.join(out, name + ".facts")
    if os.path.exists(p):
        for line in open(p):
            k, _, v = line.rstrip("\n").partition("=")
            try:
                f[k] = float(v) if v and v.replace(".", "", 1).replace("-", "", 1).isdigit() else v
            except ValueError:
                f[k] = v
    return f

def redis_stats(path, seconds):
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path):
        name, _, rest = line.strip().partition(":")
        kv = dict(x.split("=", 1) for x in rest.split(","))
        if name.startswith("cmdstat_config"):
            continue  # the harness's own CONFIG RESETSTAT
        rows.append({"command": name.replace("cmdstat_", ""), "calls": int(kv["calls"]),
                     "usec": int(kv["usec"]), "per_s": round(int(kv["calls"]) / seconds, 1) if seconds else None})
    rows.sort(key=lambda r: -r["usec"])
    return rows

def pg_stats(path):
    rows = []
    if os.path.exists(path):
        for r in csv.reader(open(path)):
            rows.append({"calls": int(r[0]), "rows": int(r[1]), "ms": float(r[2]), "query": r[3]})
    return rows

def pct(vals, q):
    if not vals:
        return None
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(q * len(vals)))]

def gaps(name):
    sp, mp = os.path.join(out, name + ".sends.txt"), os.path.join(out, name + ".messages.tsv")
    if not os.path.exists(sp) or not os.path.exists(mp):
        return None
    queued, lead_dev = {}, {}
    for line in open(mp):
        mid, q, dev = line.rstrip("\n").split("\t")
        queued[mid] = int(q)
        lead_dev[mid] = dev
    by_dev = defaultdict(list)
    sends = 0
    msgs = defaultdict(int)
    off_device = 0
    for line in open(sp):
        parts = line.split()
        if len(parts) != 3:
            continue
        dev, ts, mid = parts
        sends += 1
        msgs[mid] += 1
        if lead_dev.get(mid) and lead_dev[mid] != dev:
            off_device += 1
        by_dev[dev].append((int(ts), mid))
    inside = below = idle = late = 0
    shortest = None
    late_over, all_g = [], []
    for dev, s in by_dev.items():
        s.sort()
        for (a, _), (b, mid) in zip(s, s[1:]):
            g = b - a
            all_g.append(g)
            shortest = g if shortest is None or g < shortest else shortest
            if g < min_us:
                below += 1
            elif g <= max_us:
                inside += 1
            elif queued.get(mid, 0) > a + max_us:
                idle += 1      # the next message was published after this device was due again
            else:
                late += 1      # it was waiting (published in time) and the send still came after max
                late_over.append(g - max_us)
    total = inside + below + idle + late
    busy = total - idle
    return {
        "sends": sends, "distinct_messages": len(msgs), "messages_in_db": len(queued),
        "duplicates": sum(c - 1 for c in msgs.values() if c > 1),
        "sent_from_other_device": off_device, "devices_that_sent": len(by_dev),
        "gaps": total, "inside": inside, "below_min": below, "idle_above_max": idle, "late_above_max": late,
        "inside_pct_of_busy_gaps": round(100.0 * inside / busy, 2) if busy else None,
        "inside_pct_of_all_gaps": round(100.0 * inside / total, 2) if total else None,
        "shortest_gap_ms": round(shortest / 1000, 3) if shortest is not None else None,
        "gap_p50_ms": round(pct(all_g, 0.5) / 1000, 1) if all_g else None,
        "gap_p99_ms": round(pct(all_g, 0.99) / 1000, 1) if all_g else None,
        "late_over_max_p50_ms": round(pct(late_over, 0.5) / 1000, 1) if late_over else None,
        "late_over_max_p99_ms": round(pct(late_over, 0.99) / 1000, 1) if late_over else None,
        "late_over_max_max_ms": round(max(late_over) / 1000, 1) if late_over else None,
    }

def series(name):
    p = os.path.join(out, name + ".series.txt")
    rows = []
    if os.path.exists(p):
        for line in open(p):
            v = line.split()
            if len(v) == 7:
                rows.append([float(v[0])] + [int(float(x)) if x not in ("", "-") else None for x in v[1:]])
    return rows

def trace(D):
    """What started each send's read, and the latency of each step, from the sender's debug log."""
    import datetime, re
    p = os.path.join(os.environ.get("FLEET_LOG", ""), "sender-d%d.log" % D)
    if not os.path.exists(p):
        return None
    rx = re.compile(r"^(\S+) \S+ DEBUG device (\S+): (\w+) -> (\w+)")
    ev = defaultdict(list)
    for line in open(p, errors="replace"):
        m = rx.match(line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
            ev[m.group(2)].append((t, m.group(3), m.group(4)))
    if not ev:
        return None
    same = lambda a, b: abs(a - b) < 0.0015
    trig, lat = defaultdict(int), defaultdict(list)
    for e in ev.values():
        for i, (t, a, b) in enumerate(e):
            if i and e[i - 1][2] == a and a in ("reading", "claiming", "sending", "reporting"):
                lat[a].append(t - e[i - 1][0])
            if (a, b) != ("reading", "claiming") or i < 1:
                continue
            j = i - 1
            chain = j >= 2 and e[j - 1][1:] == ("reading", "idle") and same(e[j - 1][0], e[j][0]) \
                and e[j - 2][1:] == ("idle", "reading")
            start = j - 2 if chain else j
            prev = e[start - 1] if start >= 1 else None
            if prev and prev[1:] == ("pacing", "idle") and same(prev[0], e[start][0]):
                c = "pacing timer (device due)"
            elif prev and prev[1:] == ("reporting", "idle") and same(prev[0], e[start][0]):
                c = "right after the previous report (send cycle longer than the delay)"
            elif prev and prev[1:] == ("acquiring", "idle"):
                c = "first read after taking the lease"
            elif chain:
                c = "idle poll (WACAST_IDLE_POLL_MS): the wake-up was missed"
            else:
                c = "wake-up (PUBLISH wacast:wake)"
            trig[c] += 1
    names = {"reading": "XREADGROUP (read one entry)", "claiming": "marker claim (EVAL)",
             "sending": "sim send (MULTI/XADD/EXEC)", "reporting": "report (SET, XADD, XACK, XDEL, SET)"}
    steps = []
    for k in ("reading", "claiming", "sending", "reporting"):
        v = sorted(lat[k])
        if v:
            steps.append({"step": names[k], "n": len(v), "p50_ms": round(1000 * v[len(v) // 2], 1),
                          "p90_ms": round(1000 * v[int(len(v) * 0.9)], 1),
                          "p99_ms": round(1000 * v[int(len(v) * 0.99)], 1), "max_ms": round(1000 * v[-1], 1)})
    return {"read_trigger_of_sends": dict(trig), "step_latency": steps}

def readtxt(name):
    p = os.path.join(out, name)
    return open(p).read().rstrip() if os.path.exists(p) else None

base = facts("d0")
rss0 = base.get("rss_kb", 0) or 0
res = {"stamp": stamp, "command": cmdline, "machine": machine, "versions": versions,
       "min_delay_s": float(mind), "max_delay_s": float(maxd), "messages_per_device": int(per_dev),
       "idle_window_s": float(idle_w),
       "baseline": {"rss_kb": rss0, "hwm_kb": base.get("hwm_kb"), "idle_sender_cpu_s": base.get("idle_sender_cpu_s"),
                    "redis_idle": redis_stats(os.path.join(out, "d0.idle.redis.txt"), base.get("idle_seconds")),
                    "pg_idle": pg_stats(os.path.join(out, "d0.idle.pg.csv"))},
       "runs": []}
for D in ran:
    f = facts("d%d" % D)
    r = {**f, "devices": D}
    if "rss_kb" in f:
        r["rss_per_device_kb"] = round((f["rss_kb"] - rss0) / D, 3)
        r["hwm_per_device_kb"] = round((f["hwm_kb"] - base.get("hwm_kb", 0)) / D, 3)
    if f.get("e2e_s"):
        r["msgs_per_s"] = round(f.get("camp_sent", 0) / f["e2e_s"], 1)
    if f.get("idle_seconds"):
        s = f["idle_seconds"]
        r["idle_sender_cpu_pct"] = round(100 * f["idle_sender_cpu_s"] / s, 1)
        r["idle_redis_cpu_pct"] = round(100 * f["idle_redis_cpu_s"] / s, 1)
        r["idle_pg_cpu_pct"] = round(100 * f["idle_pg_cpu_s"] / s, 1)
        r["redis_idle"] = redis_stats(os.path.join(out, "d%d.idle.redis.txt" % D), s)
        r["pg_idle"] = pg_stats(os.path.join(out, "d%d.idle.pg.csv" % D))
    if f.get("e2e_s"):
        r["redis_campaign"] = redis_stats(os.path.join(out, "d%d.campaign.redis.txt" % D), None)
        r["pg_campaign"] = pg_stats(os.path.join(out, "d%d.campaign.pg.csv" % D))
    r["gaps"] = gaps("d%d" % D)
    r["series"] = series("d%d" % D)
    t = trace(D)
    if t:
        r["trace"] = t
    ncpu = int(os.environ.get("FLEET_NCPU", "1"))
    for w, secs in (("idle", f.get("idle_seconds")), ("camp", f.get("camp_wall_s"))):
        if secs and f.get(w + "_machine_busy_s") is not None:
            ours = sum(f.get("%s_%s_cpu_s" % (w, k)) or 0 for k in ("sender", "redis", "pg", "dispatcher", "scheduler"))
            r[w + "_machine_busy_pct"] = round(100 * f[w + "_machine_busy_s"] / (secs * ncpu), 1)
            r[w + "_others_cpu_pct"] = round(100 * max(0.0, f[w + "_machine_busy_s"] - ours) / (secs * ncpu), 1)
    m = readtxt("d%d.sender-metrics.txt" % D)
    if m:
        r["sender_metrics"] = {l.split()[0]: float(l.split()[1]) for l in m.splitlines() if len(l.split()) == 2}
    for kind in ("idle", "campaign"):
        for suffix in ("perf", "perf-children"):
            t = readtxt("d%d.%s.%s.txt" % (D, kind, suffix))
            if t:
                r["%s_%s" % (kind, suffix.replace("-", "_"))] = t
    res["runs"].append(r)
json.dump(res, open(jpath, "w"), indent=1)

def f1(v, fmt="{:,.1f}"):
    return "—" if v is None or v == "" else fmt.format(v)

L = []
L.append("# wacast fleet benchmark %s\n" % stamp)
L.append("`%s` — one wacast-sender (+ 1 dispatcher, 1 scheduler) holding D `sim` devices of one user, "
         "pacing %s–%s s, %s messages per device. %s; %s.\n" % (cmdline, mind, maxd, per_dev, machine, versions))
L.append("Sender with 0 devices: VmRSS %s kB (VmHWM %s kB).\n" % (f1(rss0, "{:,.0f}"), f1(base.get("hwm_kb"), "{:,.0f}")))
L.append("| D | RSS total (MiB) | RSS/device (KB) | CPU s | msgs/s | gaps inside [min,max] % | shortest gap ms |")
L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in res["runs"]:
    g = r.get("gaps") or {}
    L.append("| {:,} | {} | {} | {} | {} | {} | {} |".format(
        r["devices"], f1(r["rss_kb"] / 1024 if "rss_kb" in r else None, "{:,.1f}"),
        f1(r.get("rss_per_device_kb"), "{:,.2f}"), f1(r.get("camp_sender_cpu_s"), "{:,.2f}"),
        f1(r.get("msgs_per_s"), "{:,.0f}"), f1(g.get("inside_pct_of_busy_gaps"), "{:.2f}"),
        f1(g.get("shortest_gap_ms"), "{:,.1f}")))
warn = []
for r in res["runs"]:
    g = r.get("gaps") or {}
    sm = r.get("sender_metrics") or {}
    bad = []
    if g.get("duplicates"):
        bad.append("%s extra sends of already-sent messages (exactly-once broken)" % "{:,}".format(g["duplicates"]))
    if g.get("below_min"):
        bad.append("%s gaps below min_delay" % "{:,}".format(g["below_min"]))
    if g and g.get("distinct_messages") != r.get("camp_total"):
        bad.append("%s distinct messages sent of %s" % ("{:,}".format(g.get("distinct_messages", 0)), f1(r.get("camp_total"), "{:,.0f}")))
    if sm.get("wacast_sender_leases_lost_total"):
        bad.append("%s leases lost by the only sender" % "{:,.0f}".format(sm["wacast_sender_leases_lost_total"]))
    if sm.get("wacast_sender_redis_errors_total"):
        bad.append("%s Redis commands failed in the sender" % "{:,.0f}".format(sm["wacast_sender_redis_errors_total"]))
    if bad:
        warn.append("**D=%s: %s.**" % ("{:,}".format(r["devices"]), "; ".join(bad)))
L.append("")
L.extend(w + "\n" for w in warn)
L.append("RSS = VmRSS of the idle sender holding all D devices; RSS/device = (RSS(D) − RSS(0)) / D. CPU s = the "
         "sender's utime+stime from the campaign becoming due to it finishing. msgs/s = sent ÷ (finished_at − due_at). "
         "Gaps: per device, between consecutive sends in the sim record; \"inside\" is the share of the gaps where the "
         "next message was already published (busy gaps); gaps above max where the next message was published only "
         "after the device was due again are idle (below).\n")
L.append("## Details\n")
L.append("| D | time to hold all (s) | sender CPU to hold all (s) | VmHWM (MiB) | idle CPU sender / Redis / PostgreSQL (% of a core) | "
         "e2e (s) | sent / total | sender CPU µs per msg | busy gaps | idle gaps | late gaps (> max, work waiting) | late by p50 / p99 / max (ms) | below min | duplicate sends | leases lost | sender Redis errors |")
L.append("| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
for r in res["runs"]:
    g = r.get("gaps") or {}
    sm = r.get("sender_metrics") or {}
    busy = (g.get("gaps") or 0) - (g.get("idle_above_max") or 0)
    L.append("| {:,} | {} | {} | {} | {} / {} / {} | {} | {} / {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} | {} |".format(
        r["devices"], f1(r.get("hold_s"), "{:.1f}"), f1(r.get("hold_sender_cpu_s"), "{:.2f}"),
        f1(r["after_hwm_kb"] / 1024 if "after_hwm_kb" in r else None, "{:,.1f}"),
        f1(r.get("idle_sender_cpu_pct")), f1(r.get("idle_redis_cpu_pct")), f1(r.get("idle_pg_cpu_pct")),
        f1(r.get("e2e_s"), "{:.2f}"), f1(r.get("camp_sent"), "{:,.0f}"), f1(r.get("camp_total"), "{:,.0f}"),
        f1(1e6 * r["camp_sender_cpu_s"] / r["camp_sent"] if r.get("camp_sent") else None, "{:,.0f}"),
        f1(busy if g else None, "{:,}"), f1(g.get("idle_above_max"), "{:,}"), f1(g.get("late_above_max"), "{:,}"),
        f1(g.get("late_over_max_p50_ms")), f1(g.get("late_over_max_p99_ms")), f1(g.get("late_over_max_max_ms")),
        f1(g.get("below_min"), "{:,}"), f1(g.get("duplicates"), "{:,}"),
        f1(sm.get("wacast_sender_leases_lost_total"), "{:,.0f}"), f1(sm.get("wacast_sender_redis_errors_total"), "{:,.0f}")))
    if r.get("skipped") or r.get("hold_timeout") or r.get("campaign_timeout"):
        L.append("")
        L.append("D=%s: %s" % (r["devices"], "; ".join("%s=%s" % (k, r[k]) for k in
                 ("skipped", "hold_timeout", "held_at_timeout", "campaign_timeout") if k in r)))
L.append("")
L.append("Machine load while measuring (2-core machines are easily shared: other processes' CPU slows every figure):\n")
L.append("| D | idle window: machine busy % (others %) | load avg | campaign: machine busy % (others %) | load avg | campaign CPU s: sender / dispatcher / scheduler / Redis / PostgreSQL |")
L.append("| ---: | --- | ---: | --- | ---: | --- |")
for r in res["runs"]:
    L.append("| {:,} | {} ({}) | {} | {} ({}) | {} | {} / {} / {} / {} / {} |".format(
        r["devices"], f1(r.get("idle_machine_busy_pct")), f1(r.get("idle_others_cpu_pct")), f1(r.get("idle_loadavg"), "{:.2f}"),
        f1(r.get("camp_machine_busy_pct")), f1(r.get("camp_others_cpu_pct")), f1(r.get("camp_loadavg"), "{:.2f}"),
        f1(r.get("camp_sender_cpu_s"), "{:.2f}"), f1(r.get("camp_dispatcher_cpu_s"), "{:.2f}"),
        f1(r.get("camp_scheduler_cpu_s"), "{:.2f}"), f1(r.get("camp_redis_cpu_s"), "{:.2f}"), f1(r.get("camp_pg_cpu_s"), "{:.2f}")))
L.append("")
for r in res["runs"]:
    t = r.get("trace")
    if not t:
        continue
    L.append("### D=%s: what started the outbox read of each send (--trace)\n" % "{:,}".format(r["devices"]))
    tot = sum(t["read_trigger_of_sends"].values()) or 1
    L.append("| trigger | sends | % |")
    L.append("| --- | ---: | ---: |")
    for k, v in sorted(t["read_trigger_of_sends"].items(), key=lambda x: -x[1]):
        L.append("| %s | {:,} | %.1f |".format(v) % (k, 100.0 * v / tot))
    L.append("")
    L.append("| step of the send cycle (one Redis round trip each) | n | p50 ms | p90 ms | p99 ms | max ms |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for x in t["step_latency"]:
        L.append("| %s | {:,} | %s | %s | %s | %s |".format(x["n"]) % (x["step"], x["p50_ms"], x["p90_ms"], x["p99_ms"], x["max_ms"]))
    L.append("")
for r in res["runs"]:
    se = r.get("series") or []
    if not se:
        continue
    L.append("### D=%s: campaign progress (s since due: published, routed, sent; sender devices idle / pacing / reading)\n" % "{:,}".format(r["devices"]))
    L.append("| s | published | routed | sent | idle | pacing | reading |")
    L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    last = -1.0
    for row in se:
        if row[0] - last >= 0.95 or row is se[-1]:
            L.append("| %.1f | %s |" % (row[0], " | ".join(f1(x, "{:,}") for x in row[1:])))
            last = row[0]
    miss = sum(1 for row in se if row[3] is None)
    if miss:
        L.append("")
        L.append("The sender's /metrics did not answer within 1 s in %d of %d samples (—): its event loop was "
                 "stalled or starved." % (miss, len(se)))
    L.append("")
L.append("## Idle load that grows with D (every device held, no work, %s s window)\n" % idle_w)
L.append("Redis counts the commands a script runs (GET, PEXPIRE inside the lease-renewal EVAL) as well as the EVAL.\n")
L.append("| D | Redis commands/s (top) | PostgreSQL statements (calls, rows, ms in the window) |")
L.append("| ---: | --- | --- |")
for label, rr, pg, secs in [("0", res["baseline"]["redis_idle"], res["baseline"]["pg_idle"], base.get("idle_seconds"))] + \
        [("{:,}".format(r["devices"]), r.get("redis_idle") or [], r.get("pg_idle") or [], r.get("idle_seconds")) for r in res["runs"]]:
    rtxt = "<br>".join("%s %s/s (%.0f ms)" % (x["command"].replace("|", " "), f1(x["per_s"], "{:,.1f}"), x["usec"] / 1000)
                       for x in rr[:6])
    rtot = sum(x["calls"] for x in rr)
    secs = secs or float(idle_w)
    rtxt = ("**%s commands/s in all**<br>" % f1(rtot / secs, "{:,.0f}")) + rtxt if rr else rtxt
    ptxt = "<br>".join("%d × `%s` → %d rows, %.0f ms" % (x["calls"], x["query"][:90].replace("|", "\\|"), x["rows"], x["ms"])
                       for x in pg[:4])
    L.append("| %s | %s | %s |" % (label, rtxt or "—", ptxt or "—"))
L.append("")
for r in res["runs"]:
    for kind in ("idle", "campaign"):
        if r.get(kind + "_perf"):
            L.append("### perf: sender, D=%s, %s (self time by symbol)\n" % ("{:,}".format(r["devices"]), kind))
            L.append("```\n" + r[kind + "_perf"] + "\n```\n")
        if r.get(kind + "_perf_children"):
            L.append("### perf: sender, D=%s, %s (time including callees)\n" % ("{:,}".format(r["devices"]), kind))
            L.append("```\n" + r[kind + "_perf_children"] + "\n```\n")
open(mdpath, "w").write("\n".join(L) + "\n")
# The headline table on stdout.
print("\n".join(L[3:3 + 2 + len(res["runs"])] + [""] + warn))
PY
FLEET_LOG=$work/log FLEET_NCPU=$(nproc) step timeout 300 python3 "$work/report.py" "$work/out" "$json" "$md" "$min_delay" "$max_delay" "$per_device" \
  "$idle_window" "$cmdline" "$machine" "$versions" "$stamp" "${ran[@]}" || die "report failed"
log "results: $json, $md"
